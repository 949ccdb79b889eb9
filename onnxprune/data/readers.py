"""A user's own data code as calibration or evaluation data: ``file.py:factory``, a callable returning an
iterable of ``{input name: array}`` dicts or an object with ONNX Runtime quantization's
``CalibrationDataReader`` protocol (``get_next()`` until None), so a reader written for ORT quantization
works unchanged. Running that file is what the user asked for; nothing else is imported from the data path.
What it yields is written to disk as it comes and read back through memory maps, so a long reader is never
held in memory."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from onnxprune.data.arrays import LABELS, InputSpec
from onnxprune.errors import DataError, first_line


def is_reader(source: str) -> bool:
    """Whether ``source`` names a Python callable ('file.py:factory')."""
    path, sep, name = source.rpartition(":")
    return bool(sep) and path.endswith(".py") and name.isidentifier()


def _factory(source: str) -> Any:
    path, _, name = source.rpartition(":")
    if not Path(path).is_file():
        raise DataError(f"reader {source!r}: {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"onnxprune_reader_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file may raise anything while it loads
        raise DataError(f"reader {source!r}: {Path(path).name} failed to load ({type(exc).__name__}: "
                        f"{first_line(exc)})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise DataError(f"reader {source!r}: {Path(path).name} has no callable {name!r}")
    return factory


def _items(source: str) -> Iterator[Any]:
    """What the reader yields: get_next() until None, or the iterable's items."""
    try:
        made = _factory(source)()
        if hasattr(made, "get_next"):
            while (item := made.get_next()) is not None:
                yield item
        elif hasattr(made, "__iter__"):
            yield from made
        else:
            raise DataError(f"reader {source!r} returned {type(made).__name__}: neither an iterable of dicts nor an "
                            "object with get_next()")
    except DataError:
        raise
    except Exception as exc:  # the user's code may raise anything
        raise DataError(f"reader {source!r} failed ({type(exc).__name__}: {first_line(exc)})") from None


class _Spill:
    """One input's samples appended to a file as they come, memory-mapped once complete."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype, sample_shape: tuple[int, ...]) -> None:
        self.path = folder / f"{len(list(folder.iterdir()))}.bin"
        self.file = open(self.path, "wb")
        self.dtype, self.sample_shape, self.count = dtype, sample_shape, 0

    def add(self, batch: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(batch).tobytes())
        self.count += len(batch)

    def mapped(self) -> np.ndarray:
        self.file.close()
        array = np.memmap(self.path, self.dtype, "r", shape=(self.count, *self.sample_shape))
        os.unlink(self.path)  # the mapping keeps the data until it goes
        return array


def read_reader(source: str, specs: list[InputSpec]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every input's samples (memory-mapped from disk) and labels if the reader gives them, and the source's
    description; DataError naming the reader and the first problem (a foreign name, a wrong dtype or shape,
    nothing yielded)."""
    by_name = {s.name: s for s in specs}
    folder = Path(tempfile.mkdtemp(prefix="onnxprune-reader-"))
    spills: dict[str, _Spill] = {}
    labels: list[np.ndarray] = []
    try:
        for number, item in enumerate(_items(source), 1):
            if not isinstance(item, dict):
                raise DataError(f"reader {source!r} item {number} is {type(item).__name__}, not a dict of input arrays")
            missing = sorted(set(by_name) - set(item))
            unknown = sorted(set(item) - set(by_name) - {LABELS})
            if missing or unknown:
                raise DataError(f"reader {source!r} item {number}: "
                                + (f"{unknown[0]!r} is not a model input" if unknown else f"no array for input {missing[0]!r}")
                                + f" (the model's inputs are {', '.join(by_name)})")
            for name, spec in by_name.items():
                array = np.asarray(item[name])
                if array.ndim == len(spec.shape) - 1:
                    array = array[None]
                if array.dtype != spec.dtype or array.ndim != len(spec.shape) or any(
                        need is not None and have != need for have, need in zip(array.shape[1:], spec.shape[1:])):
                    raise DataError(f"reader {source!r} item {number}: input {name!r} is {array.dtype} "
                                    f"{list(array.shape)}; the model needs {spec.dtype} "
                                    f"{['N' if d is None else d for d in spec.shape]}")
                if name not in spills:
                    spills[name] = _Spill(folder, name, spec.dtype, array.shape[1:])
                elif array.shape[1:] != spills[name].sample_shape:
                    raise DataError(f"reader {source!r} item {number}: input {name!r} has samples of shape "
                                    f"{list(array.shape[1:])}, earlier ones {list(spills[name].sample_shape)}")
                spills[name].add(array)
            if LABELS in item:
                labels.append(np.atleast_1d(np.asarray(item[LABELS])))
        if not spills:
            raise DataError(f"reader {source!r} yielded nothing")
        arrays: dict[str, Any] = {name: spill.mapped() for name, spill in spills.items()}
    finally:
        for spill in spills.values():
            spill.file.close()
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()
    if labels:
        arrays[LABELS] = np.concatenate(labels)
    count = len(next(iter(arrays.values())))
    return arrays, {"kind": "reader", "path": str(Path(source.rpartition(":")[0]).resolve()),
                    "factory": source.rpartition(":")[2], "samples": count}
