"""Fuzzing the prune pipeline with mutated models and calibration files (hypothesis).

Whatever the mutation (shapes, attributes, dtypes, opsets, truncation, byte flips) and whichever
data-free method runs, ``prune`` either succeeds or raises an ``OnnxPruneError``; on failure the output
folder stays empty, on success it holds exactly one output file, which passes ``onnx.checker`` and
loads in ONNX Runtime. Each test prints how many cases ran (``pytest -s`` shows it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphs import mlp_data, tiny_conv, tiny_mlp
from onnxprune.errors import OnnxPruneError
from onnxprune.methods import METHODS
from onnxprune.pipeline import prune
from onnxprune.runtime.sessions import make_session

MODEL_CASES = 150
DATA_CASES = 100
FUZZ = settings(max_examples=MODEL_CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DATA_FREE = sorted(name for name, spec in METHODS.items() if not spec.needs_calib)
TENSOR_TYPES = sorted(v for v in onnx.TensorProto.DataType.values() if v)  # UNDEFINED excluded

Mutation = Callable[[onnx.ModelProto], None]


def _initializer_dims(draw: st.DrawFn) -> Mutation:
    """Give an initializer new dims without changing its data."""
    dims = draw(st.lists(st.integers(0, 20), max_size=5))
    index = draw(st.integers(0, 3))

    def mutate(model: onnx.ModelProto) -> None:
        tensor = model.graph.initializer[index % len(model.graph.initializer)]
        tensor.ClearField("dims")
        tensor.dims.extend(dims)

    return mutate


def _attribute(draw: st.DrawFn) -> Mutation:
    """Set a Conv/Gemm attribute on any node to an arbitrary (often invalid) value."""
    name = draw(st.sampled_from(["transB", "transA", "pads", "strides", "group", "dilations", "kernel_shape",
                                 "alpha", "auto_pad"]))
    ints = draw(st.lists(st.integers(-3, 9), min_size=1, max_size=6))
    index = draw(st.integers(0, 3))

    def mutate(model: onnx.ModelProto) -> None:
        node = model.graph.node[index % len(model.graph.node)]
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        value: object = ints if name in ("pads", "strides", "dilations", "kernel_shape") else ints[0]
        if name == "alpha":
            value = float(ints[0])
        elif name == "auto_pad":
            value = ["NOTSET", "SAME_UPPER", "VALID", "BOGUS"][ints[0] % 4]
        node.attribute.append(onnx.helper.make_attribute(name, value))

    return mutate


def _dtype(draw: st.DrawFn) -> Mutation:
    """Declare another element type for an input, output or initializer (its data unchanged)."""
    target = draw(st.sampled_from(["input", "output", "initializer"]))
    dtype = draw(st.sampled_from(TENSOR_TYPES))
    index = draw(st.integers(0, 3))

    def mutate(model: onnx.ModelProto) -> None:
        if target == "initializer":
            model.graph.initializer[index % len(model.graph.initializer)].data_type = dtype
        else:
            values = getattr(model.graph, target)
            values[index % len(values)].type.tensor_type.elem_type = dtype

    return mutate


def _wiring(draw: st.DrawFn) -> Mutation:
    """Reconnect or add a node input: empty, unknown, an initializer, an output."""
    index = draw(st.integers(0, 3))
    slot = draw(st.integers(0, 2))
    name = draw(st.sampled_from(["", "x", "fc1.weight", "c1.w", "nowhere", "logits", "y"]))

    def mutate(model: onnx.ModelProto) -> None:
        node = model.graph.node[index % len(model.graph.node)]
        if slot < len(node.input):
            node.input[slot] = name
        else:
            node.input.append(name)

    return mutate


def _opset(draw: st.DrawFn) -> Mutation:
    """Claim another default-domain opset version."""
    version = draw(st.integers(1, 30))

    def mutate(model: onnx.ModelProto) -> None:
        model.opset_import[0].version = version

    return mutate


@st.composite
def mutated_model(draw: st.DrawFn) -> bytes:
    """A serialized tiny model after structured mutations, then possibly truncated or byte-flipped."""
    model = draw(st.sampled_from([tiny_mlp, tiny_conv]))()
    kinds = st.sampled_from([_initializer_dims, _attribute, _dtype, _wiring, _opset])
    for kind in draw(st.lists(kinds, max_size=2)):
        kind(draw)(model)
    return _damage(draw, model.SerializeToString())


def _damage(draw: st.DrawFn, raw: bytes) -> bytes:
    """Leave ``raw`` intact, truncate it, or flip a few of its bytes."""
    how = draw(st.sampled_from(["intact", "truncate", "flip"]))
    if how == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if how == "flip":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    return raw


@st.composite
def mutated_data(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, bytes) of a calibration file for ``tiny_mlp`` with wrong names, shapes or dtypes."""
    arrays = mlp_data(8)
    name = draw(st.sampled_from(["x", "labels", "y", "x "]))
    if draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(0, 9), max_size=4)))
        dtype = draw(st.sampled_from(["float32", "float64", "float16", "int64", "uint8", "bool", "complex64"]))
        arrays[name] = np.ones(shape, dtype)
    elif name != "x":
        arrays[name] = arrays.pop("x")
    suffix = draw(st.sampled_from([".npz", ".npy", ".bin"]))
    with tempfile.TemporaryFile() as handle:
        if suffix == ".npy":
            np.save(handle, arrays.get("x", np.zeros(3)))
        else:
            np.savez(handle, **arrays)
        handle.seek(0)
        raw = handle.read()
    return suffix, _damage(draw, raw)


class Counter:
    """How many fuzz cases ran, printed at the end of each test."""

    def __init__(self) -> None:
        self.cases = self.written = 0


def _prune_expecting_clean_outcome(model: Path, method: str, sparsity: float, calib: Path | None,
                                   counter: Counter) -> None:
    """Run ``prune``; only OnnxPruneError may escape, and the output folder holds the file or nothing."""
    with tempfile.TemporaryDirectory() as out_dir:
        output = Path(out_dir) / "out.onnx"
        try:
            prune(model, output, method, calib=calib, sparsity=sparsity)
        except OnnxPruneError as exc:
            assert "\n" not in str(exc).strip(), str(exc)
            assert list(Path(out_dir).iterdir()) == []
        else:
            assert [p.name for p in Path(out_dir).iterdir()] == ["out.onnx"]
            onnx.checker.check_model(onnx.load(str(output)))
            make_session(output, device="cpu")
            counter.written += 1
    counter.cases += 1


def test_mutated_models_raise_only_onnxprune_errors():
    counter = Counter()

    @FUZZ
    @given(raw=mutated_model(), method=st.sampled_from(DATA_FREE),
           sparsity=st.one_of(st.floats(0.0, 0.95), st.just(1.0)))
    def case(raw: bytes, method: str, sparsity: float) -> None:
        with tempfile.TemporaryDirectory() as in_dir:
            model = Path(in_dir) / "model.onnx"
            model.write_bytes(raw)
            _prune_expecting_clean_outcome(model, method, sparsity, None, counter)

    case()
    print(f"fuzz: {counter.cases} mutated models, {counter.written} pruned, the rest refused")
    assert counter.cases >= MODEL_CASES


def test_mutated_calibration_files_raise_only_onnxprune_errors():
    counter = Counter()

    @settings(FUZZ, max_examples=DATA_CASES)
    @given(data=mutated_data())
    def case(data: tuple[str, bytes]) -> None:
        suffix, raw = data
        with tempfile.TemporaryDirectory() as in_dir:
            model = Path(in_dir) / "model.onnx"
            onnx.save(tiny_mlp(), str(model))
            calib = Path(in_dir) / f"calib{suffix}"
            calib.write_bytes(raw)
            _prune_expecting_clean_outcome(model, "magnitude", 0.5, calib, counter)

    case()
    print(f"fuzz: {counter.cases} mutated calibration files, {counter.written} accepted, the rest refused")
    assert counter.cases >= DATA_CASES
