"""Write new weights into the ONNX graph and save it atomically; nothing else in the graph changes."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import ModelError, OutputError

log = logging.getLogger(__name__)

# Above this many bytes a model is written with its weights in one external-data file beside it.
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def replace_initializers(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose named initializers hold ``weights`` (same shapes, same dtypes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    pending = dict(weights)
    for index, tensor in enumerate(out.graph.initializer):
        if tensor.name not in pending:
            continue
        value = np.asarray(pending.pop(tensor.name))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        if tuple(value.shape) != tuple(tensor.dims):
            raise ModelError(f"new value for {tensor.name!r} has shape {value.shape}, the graph needs "
                             f"{tuple(tensor.dims)}")
        out.graph.initializer[index].CopyFrom(numpy_helper.from_array(value.astype(dtype, copy=False),
                                                                      tensor.name))
    if pending:
        raise ModelError(f"no initializer named {sorted(pending)[0]!r} in the model")
    return out


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike] = ()) -> Path:
    """Validate an output path before any work: not an input file, its folder exists."""
    out = Path(output)
    for source in inputs:
        if out.resolve() == Path(source).resolve():
            raise OutputError(f"output {str(out)!r} is the input file; onnxprune never overwrites its input")
    if out.exists() and out.is_dir():
        raise OutputError(f"output path {str(out)!r} is a folder; give a file name ending in .onnx")
    if not out.parent.is_dir():
        problem = "is not a folder" if out.parent.exists() else "does not exist"
        raise OutputError(f"output folder {str(out.parent)!r} {problem}")
    return out


def save_model(model: onnx.ModelProto, output: str | os.PathLike,
               inputs: list[str | os.PathLike] = ()) -> Path:
    """Write ``model`` to ``output`` atomically: a temporary file in the same folder, then rename.

    The target is either left as it was or replaced by the complete new file; never half-written.
    Models over ~1.8 GB get their weights in ``<output>.data`` (also written before the rename).
    """
    out = check_output_path(output, inputs)
    external = model.ByteSize() > _EXTERNAL_DATA_THRESHOLD
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    data_tmp = tmp.with_name(tmp.name + ".data")
    try:
        if external:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_tmp.name)
            _relink_external(tmp, data_tmp.name, out.name + ".data")
            os.replace(data_tmp, out.parent / (out.name + ".data"))
        else:
            with open(tmp, "wb") as handle:
                handle.write(model.SerializeToString())
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(f"could not write {str(out)!r}: {exc.strerror or exc}") from None
    finally:
        for leftover in (tmp, data_tmp):
            if leftover.exists():
                leftover.unlink()
    log.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return out


def _relink_external(model_path: Path, old: str, new: str) -> None:
    """Point the saved model's external-data references from the temporary data file to the final one."""
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    with open(model_path, "wb") as handle:
        handle.write(model.SerializeToString())


def compress_sparse(model: onnx.ModelProto, min_sparsity: float = 0.5) -> tuple[onnx.ModelProto, list[str]]:
    """A copy where every float initializer of rank >= 2 with at least ``min_sparsity`` zeros is stored
    as a sparse initializer (values + linear int64 indices); ORT densifies them when loading."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    converted, keep = [], []
    for tensor in out.graph.initializer:
        value = numpy_helper.to_array(tensor)
        if value.ndim >= 2 and np.issubdtype(value.dtype, np.floating) and value.size:
            flat = value.ravel()
            nonzero = np.flatnonzero(flat)
            if 1.0 - nonzero.size / flat.size >= min_sparsity:
                sparse = onnx.helper.make_sparse_tensor(
                    numpy_helper.from_array(flat[nonzero], tensor.name),
                    numpy_helper.from_array(nonzero.astype(np.int64), tensor.name + "_indices"),
                    list(value.shape))
                out.graph.sparse_initializer.append(sparse)
                converted.append(tensor.name)
                continue
        keep.append(tensor)
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out, converted
