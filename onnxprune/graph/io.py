"""ONNX files in and out. Reading: existence, parse, external data confined to the model's folder,
checker. Writing: atomic (a temporary file in the target's folder, then a rename) with the file mode any
ordinary file gets, so nothing is ever half-written or unreadable to other users."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data
from google.protobuf.message import DecodeError

from onnxprune.errors import ModelError, OutputError, first_line
from onnxprune.graph.protos import over_protobuf_limit, serialized_bytes, tensor_bytes, without_initializers

log = logging.getLogger(__name__)

# Above this many bytes a model is written with its weights in one external-data file beside it.
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Offsets of weights in that file: multiples of 64 KiB (every platform's page-mapping granularity), so a
# reader can map a weight instead of copying it; initializers under 1 KiB stay inline.
_DATA_ALIGNMENT = 65536
_INLINE_BELOW = 1024


def _external_locations(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(tensor name, location) of every initializer stored as external data."""
    return [(t.name, ExternalDataInfo(t).location) for t in _all_tensors(model) if uses_external_data(t)]


def _all_tensors(model: onnx.ModelProto):
    """Initializers (dense and the parts of sparse ones) of the main graph and of every subgraph, plus
    tensors held in Constant nodes."""
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)


def check_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations that are missing or resolve outside ``base_dir``."""
    root = base_dir.resolve()
    for name, location in _external_locations(model):
        if not location:
            raise ModelError(f"initializer {name!r} is external data without a location")
        if os.path.isabs(location):
            raise ModelError(f"initializer {name!r}: external data location {location!r} is absolute; "
                             "only paths inside the model's folder are accepted")
        target = (root / location).resolve()
        if root != target and root not in target.parents:
            raise ModelError(f"initializer {name!r}: external data location {location!r} escapes the "
                             f"model's folder {root}")
        if not target.is_file():
            raise ModelError(f"initializer {name!r}: external data file {location!r} is missing next to the model")


def check_tensors(model: onnx.ModelProto) -> None:
    """Refuse stored tensors whose data does not decode to their dims and dtype (a damaged or
    hand-edited file), so later stages never meet an undecodable weight."""
    for tensor in _all_tensors(model):
        try:
            numpy_helper.to_array(tensor)
        except (ValueError, TypeError, KeyError) as exc:
            reason = first_line(exc)
            raise ModelError(f"tensor {tensor.name!r} (type {tensor.data_type}, dims {list(tensor.dims)}) holds data "
                             f"that does not match its type and shape: {reason}") from None


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with its external data (kept inside its folder) and run ``onnx.checker``."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {str(path)!r} does not exist")
    if not path.is_file():
        raise ModelError(f"model path {str(path)!r} is not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"{str(path)!r} is not a readable ONNX model (truncated or another format): {exc}") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{str(path)!r} holds no ONNX graph (not an ONNX model, or an empty one)")
    check_external_data(model, path.parent)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise ModelError(f"external data of {str(path)!r} could not be read: {exc}") from None
    check_tensors(model)
    if check:
        check_model(model, str(path), path=path)
    log.debug("loaded %s: %d nodes, %d initializers", path, len(model.graph.node), len(model.graph.initializer))
    return model


def model_fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the serialized model (past 2 GB: of the model without its main-graph initializers, then
    of each of those): a latency table or a resume folder belongs to one model."""
    if not over_protobuf_limit(model):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    light = without_initializers(model)
    digest = hashlib.sha256(light.SerializeToString(deterministic=True))
    for tensor in model.graph.initializer:
        digest.update(tensor.SerializeToString(deterministic=True))
    return digest.hexdigest()


def check_model(model: onnx.ModelProto, what: str = "model", *, path: Path | None = None) -> None:
    """Run ``onnx.checker`` and turn its failure into a ModelError. A model over protobuf's 2 GB is checked
    from its file ``path`` (the checker cannot take it in memory); without one it is left to the file
    it is saved to (``save_model`` checks what it writes by path)."""
    try:
        if not over_protobuf_limit(model):
            onnx.checker.check_model(model)
        elif path is not None:
            onnx.checker.check_model(str(path))
        else:
            log.info("%s is over 2 GB: checked by path once written", what)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise ModelError(f"{what} fails onnx.checker: {first}") from None


def ordinary_mode(path: Path) -> None:
    """Give ``path`` the mode a newly created file gets under the current umask (a temporary file starts
    at 0600, which a rename would keep)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _settle(path: Path) -> None:
    """Flush a freshly written temporary file to disk and give it an ordinary file's mode, ready to be renamed."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    ordinary_mode(path)


def atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``target``, then rename it onto ``target``: the
    target is either left as it was or replaced by the complete new file."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _settle(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"could not write {str(target)!r}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


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


class StagedModel:
    """A model written beside its target under temporary names and checked, not yet in the target's place:
    ``commit`` renames it there (with its external data), ``discard`` removes it. Nothing ever stands at the
    target half-written."""

    def __init__(self, path: Path, data: Path | None, target: Path) -> None:
        self.path, self.data, self.target = path, data, target

    def commit(self) -> Path:
        """Put the written model (and its ``<target>.data``) in the target's place."""
        try:
            if self.data is not None:
                _relink_external(self.path, self.data.name, self.target.name + ".data")
                os.replace(self.data, self.target.parent / (self.target.name + ".data"))
            os.replace(self.path, self.target)
        except OSError as exc:
            self.discard()
            raise OutputError(f"could not write {str(self.target)!r}: {exc.strerror or exc}") from None
        log.info("wrote %s (%d bytes)", self.target, self.target.stat().st_size)
        return self.target

    def discard(self) -> None:
        for path in (self.path, self.data):
            if path is not None and path.exists():
                path.unlink()


def stage_model(model: onnx.ModelProto, output: str | os.PathLike,
                inputs: list[str | os.PathLike] = ()) -> StagedModel:
    """Write ``model`` beside ``output`` under temporary names (models over ~1.8 GB with their weights in one
    data file, which the pair passes ``onnx.checker`` by path with), flushed to disk; ``commit`` then puts it in
    place. A caller may drop ``model`` in between and check the file (a model past 2 GB is not held twice)."""
    out = check_output_path(output, inputs)
    external = serialized_bytes(model) > _EXTERNAL_DATA_THRESHOLD
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    staged = StagedModel(Path(name), Path(name + ".data") if external else None, out)
    try:
        if external:
            write_external(model, staged.path, staged.data)
            check_model(model, "the written model", path=staged.path)
        else:
            staged.path.write_bytes(model.SerializeToString())
        for path in (staged.path, staged.data):
            if path is not None:
                _settle(path)
    except OSError as exc:
        staged.discard()
        raise OutputError(f"could not write {str(out)!r}: {exc.strerror or exc}") from None
    except BaseException:
        staged.discard()
        raise
    return staged


def save_model(model: onnx.ModelProto, output: str | os.PathLike, inputs: list[str | os.PathLike] = ()) -> Path:
    """Write ``model`` to ``output`` atomically (``stage_model``, then ``commit``): the target is either left as it
    was or replaced by the complete new file, never half-written; models over ~1.8 GB get their weights in
    ``<output>.data``, and the written pair passes ``onnx.checker`` by path before it takes the target's name."""
    return stage_model(model, output, inputs).commit()


def write_external(model: onnx.ModelProto, path: Path, data_path: Path) -> None:
    """Write ``model`` to ``path`` with its main-graph initializers of 1 KiB or more in ``data_path`` (a
    file in the same folder), tensor by tensor, leaving ``model`` unchanged (``onnx.save_model`` empties
    the tensors it writes out, and past 2 GB no whole copy can be serialized)."""
    light = without_initializers(model)
    with open(data_path, "wb") as data:
        for tensor in model.graph.initializer:
            if tensor.data_type == onnx.TensorProto.STRING or tensor_bytes(tensor) < _INLINE_BELOW:
                light.graph.initializer.append(tensor)
                continue
            raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
            data.write(b"\0" * (-data.tell() % _DATA_ALIGNMENT))
            stored = light.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                                 data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", data_path.name), ("offset", data.tell()), ("length", len(raw))):
                stored.external_data.add(key=key, value=str(value))
            data.write(raw)
    with open(path, "wb") as handle:
        handle.write(light.SerializeToString())


def _relink_external(model_path: Path, old: str, new: str) -> None:
    """Point the saved model's external-data references from the temporary data file to the final one."""
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    with open(model_path, "wb") as handle:
        handle.write(model.SerializeToString())
