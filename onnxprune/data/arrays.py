"""Calibration and evaluation data held as arrays: ``Dataset`` (samples along axis 0 of every input, in
memory or produced on demand by a ``LazyArray``), ``.npz``/``.npy`` files, and the checks against the model
that every source passes before any work starts."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnx

from onnxprune.errors import DataError, first_line
from onnxprune.graph.protos import dims

LABELS = "labels"


@dataclass
class InputSpec:
    """A graph input: name, numpy dtype and shape (None for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


class LazyArray(abc.ABC):
    """Samples made on demand (decoded and preprocessed images, rows of a file on disk), so that a large
    source is never held whole: ``view`` narrows it without making anything, indexing along axis 0 (a slice
    or integer rows) makes those samples as an ndarray, and ``np.asarray`` makes the whole view."""

    def __init__(self, count: int, sample_shape: tuple[int, ...], dtype: np.dtype, start: int = 0) -> None:
        self.count, self.sample_shape, self.dtype, self.start = count, tuple(sample_shape), np.dtype(dtype), start

    @abc.abstractmethod
    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Samples at ``indices`` (absolute positions in the whole source), stacked."""

    def view(self, start: int, stop: int) -> "LazyArray":
        """Samples ``start`` to ``stop`` of this view, still lazy."""
        start, stop, _ = slice(start, stop).indices(self.count)
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.start, other.count = self.start + start, max(0, stop - start)
        return other

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: Any) -> np.ndarray:
        index = np.arange(self.count)[key]
        if np.ndim(index) == 0:
            return self.rows(np.array([self.start + int(index)]))[0]
        return self.rows(self.start + np.asarray(index, dtype=np.int64))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        made = self.rows(np.arange(self.start, self.start + self.count))
        return made if dtype is None else made.astype(dtype)


Array = Union[np.ndarray, LazyArray]


@dataclass
class Dataset:
    """Samples along axis 0 of every input array, with optional integer labels; ``source`` says where they
    came from and how they were made (recorded in reports, so a run can be repeated)."""

    inputs: dict[str, Array]
    labels: np.ndarray | None = None
    source: dict[str, Any] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def take(self, count: int, start: int = 0) -> "Dataset":
        """The samples ``start`` to ``start + count`` as a new dataset (views, no copies; lazy stays lazy)."""
        stop = start + count
        return Dataset({k: v.view(start, stop) if isinstance(v, LazyArray) else v[start:stop]
                        for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[start:stop], self.source)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers excluded) with dtypes and static/dynamic dims."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in dims(value) or ())
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def _read_arrays(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The arrays stored in a .npz/.npy file, refusing pickled objects and other formats."""
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        if suffix == ".npy":
            if len(specs) != 1:
                names = ", ".join(s.name for s in specs)
                raise DataError(f"{path.name}: a .npy file only fits single-input models; this model has "
                                f"inputs {names}: use a .npz with one array per input name")
            return {specs[0].name: np.load(path, allow_pickle=False)}
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path.name} holds pickled Python objects; onnxprune only reads plain numeric "
                            "arrays (save with numpy.savez and numeric dtypes)") from None
        raise DataError(f"{path.name} is not a readable numpy file: {exc}") from None
    except Exception as exc:  # numpy's readers raise many types on damaged files (zip, zlib, header parsing)
        first = first_line(exc)
        raise DataError(f"{path.name} is not a readable numpy file (truncated or another format): {first}") from None
    raise DataError(f"{path.name}: data must be a .npz or .npy file, not {suffix or 'a file without suffix'!r}")


def validate(arrays: dict[str, Array], specs: list[InputSpec], source: str = "data",
             described: dict[str, Any] | None = None) -> Dataset:
    """Check arrays against the model inputs and return a Dataset (``described``: its ``source``); every
    mismatch is one DataError naming ``source``. Lazy arrays are made by onnxprune's own readers, which
    check their values as they make them."""
    wanted = {s.name for s in specs}
    unknown = sorted(set(arrays) - wanted - {LABELS})
    if unknown:
        raise DataError(f"{source}: array {unknown[0]!r} is not a model input; the model's inputs are "
                        f"{', '.join(sorted(wanted))} (plus optional {LABELS!r})")
    inputs: dict[str, np.ndarray] = {}
    count = None
    for spec in specs:
        if spec.name not in arrays:
            raise DataError(f"{source}: no array for model input {spec.name!r} (found: "
                            f"{', '.join(sorted(arrays)) or 'nothing'})")
        array = arrays[spec.name]
        if array.dtype != spec.dtype:
            raise DataError(f"{source}: input {spec.name!r} has dtype {array.dtype}, the model needs {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise DataError(f"{source}: input {spec.name!r} has shape {array.shape}, the model needs rank "
                            f"{len(spec.shape)} {_fmt(spec.shape)} with samples along axis 0")
        for axis, (have, need) in enumerate(zip(array.shape, spec.shape)):
            if axis > 0 and need is not None and have != need:
                raise DataError(f"{source}: input {spec.name!r} has shape {array.shape}, the model needs "
                                f"{_fmt(spec.shape)} (axis {axis} differs)")
        if array.shape[0] == 0:
            raise DataError(f"{source}: input {spec.name!r} holds zero samples")
        if count is not None and array.shape[0] != count:
            raise DataError(f"{source}: inputs hold different sample counts ({count} and {array.shape[0]})")
        count = array.shape[0]
        batch = spec.shape[0] if spec.shape else None
        if batch is not None and count % batch:
            raise DataError(f"{source}: the model has a fixed batch of {batch}; {count} samples is not a multiple")
        if isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise DataError(f"{source}: input {spec.name!r} holds {bad} NaN/Inf value(s)")
        inputs[spec.name] = array
    labels = arrays.get(LABELS)
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{source}: {LABELS!r} must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if labels.shape[0] != count:
            raise DataError(f"{source}: {labels.shape[0]} labels for {count} samples")
    return Dataset(inputs, labels, described)


def check_dataset(data: Dataset, model: onnx.ModelProto, source: str = "calibration data") -> Dataset:
    """``data`` checked against the model's inputs like a loaded file (a DataError naming the mismatch), for
    datasets handed in through the Python API."""
    arrays = dict(data.inputs)
    if data.labels is not None:
        arrays[LABELS] = data.labels
    return validate(arrays, input_specs(model), source=source, described=data.source)


def load_arrays(path: str | Path, model: onnx.ModelProto) -> Dataset:
    """Read and validate a ``.npz``/``.npy`` file for ``model``."""
    path = Path(path)
    specs = input_specs(model)
    return validate(_read_arrays(path, specs), specs, source=path.name,
                    described={"kind": "arrays", "path": str(path.resolve())})


def parse_input_shapes(texts: list[str] | tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``NAME=D0,D1,...`` strings (``--input-shape``) as {name: shape}; DataError naming a bad one."""
    shapes = {}
    for text in texts:
        name, sep, dims = text.partition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if not sep or not name.strip() or not shape or min(shape) < 1:
            raise DataError(f"--input-shape {text!r}: expected NAME=D0,D1,... with positive sizes, "
                            "e.g. image=1,3,736,736")
        shapes[name.strip()] = shape
    return shapes


def check_input_shapes(shapes: dict[str, tuple[int, ...]], specs: list[InputSpec]) -> None:
    """Each given shape names a model input, has its rank and agrees with its fixed dims."""
    by_name = {s.name: s for s in specs}
    for name, shape in shapes.items():
        spec = by_name.get(name)
        if spec is None:
            raise DataError(f"--input-shape names {name!r}, which is not a model input "
                            f"({', '.join(by_name)})")
        if len(shape) != len(spec.shape) or any(d is not None and d != g for d, g in zip(spec.shape, shape)):
            raise DataError(f"--input-shape {name}={','.join(map(str, shape))} does not fit the model's "
                            f"{_fmt(spec.shape)}")


def sample_shapes(data: Dataset) -> dict[str, tuple[int, ...]]:
    """The shape of one sample of every input (batch 1), as the data holds them."""
    return {name: (1, *array.shape[1:]) for name, array in data.inputs.items()}


def unknown_dims(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """Inputs with a dynamic dimension beyond the batch axis that ``shapes`` does not fix, as 'name [dims]'."""
    shapes = shapes or {}
    return [f"{s.name} [{', '.join(['N'] + ['?' if d is None else str(d) for d in s.shape[1:]])}]" for s in specs
            if s.name not in shapes and any(d is None for d in s.shape[1:])]


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def write_npz(data: Dataset, path: str | Path, batch: int = 64) -> Path:
    """``data`` as an ``.npz`` (one array per input, and ``labels``) written atomically and in batches, so a
    lazy source is never made whole in memory."""
    import zipfile

    from onnxprune.graph.io import atomic_write, check_output_path

    target = check_output_path(path)
    arrays = dict(data.inputs) if data.labels is None else {**data.inputs, LABELS: data.labels}

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(array.dtype)), "fortran_order": False,
                          "shape": tuple(array.shape)}
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_2_0(member, header)
                    for start in range(0, len(array), batch):
                        member.write(np.ascontiguousarray(array[start:start + batch]).tobytes())

    atomic_write(target, write)
    return target
