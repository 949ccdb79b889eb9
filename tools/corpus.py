"""Build the compatibility corpus: ONNX files from many exporters and storage styles, no downloads.

Every model is written (or, for files shipped with the ``onnx`` package, found) at run time:

* the nets of ``tests/nets.py`` from torch's legacy exporter at opsets 9, 11, 13 and 17 and from the
  dynamo exporter at its default opset;
* the Caffe2-era opset-9 models of ``onnx/backend/test/data/light`` (weights made by
  ``ConstantOfShape``, ``Sum`` residuals, ``LRN``);
* hand-built graphs: weights in ``Constant`` nodes with string-named dynamic dims, one initializer
  tied between two nodes;
* storage variants of the ResNet export: external data, fp16, quantized QDQ and QLinear (QOperator).

Run ``python tools/corpus.py DIR`` to build it into DIR and list it; ``tools/compat_matrix.py`` and
``tests/test_robustness.py`` call :func:`build` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

import nets  # noqa: E402  (tests/nets.py: the torch nets and their export helper)
from graphs import IR_VERSION  # noqa: E402  (the IR version every supported onnxruntime loads)

LEGACY_OPSETS = (9, 11, 13, 17)
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
BASE_NET = "resnet"  # the net whose opset-13 export gets the storage variants


@dataclass(frozen=True)
class Recipe:
    """How to obtain one corpus model: ``make(folder)`` writes it there and returns its path."""

    name: str
    source: str
    make: Callable[[Path], Path]


@dataclass(frozen=True)
class Entry:
    """A built corpus model, or the reason it could not be built (``path`` is then None)."""

    name: str
    source: str
    path: Path | None
    error: str | None = None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter (warnings printed to stdout/stderr, root-logger notices)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _torch_export(net: str, opset: int | None, dynamo: bool) -> Callable[[Path], Path]:
    """A maker exporting ``nets.NETS[net]`` with the legacy (at ``opset``) or dynamo exporter;
    an export already in the folder is reused (the dynamo exporter takes seconds per net)."""

    def make(folder: Path) -> Path:
        path = folder / f"{net}-{'dynamo' if dynamo else f'legacy{opset}'}.onnx"
        if path.is_file():
            return path
        spec = nets.NETS[net]
        with _quiet():
            return nets.export(spec.build(), path, opset=opset, dynamo=dynamo, input_shape=spec.input_shape())

    return make


def _base(folder: Path) -> Path:
    """The float ResNet export the storage variants start from (built once per folder)."""
    return _torch_export(BASE_NET, 13, False)(folder)


def _light(name: str) -> Callable[[Path], Path]:
    """A maker returning a model shipped in the onnx package (read in place, never written)."""

    def make(folder: Path) -> Path:
        return LIGHT_DIR / f"light_{name}.onnx"

    return make


def constant_weights(folder: Path) -> Path:
    """Paddle2ONNX style: every weight a ``Constant`` node, inputs ['batch', 3, 'height', 'width']."""
    rng = np.random.default_rng(0)

    def const(name: str, shape: tuple[int, ...]) -> onnx.NodeProto:
        value = numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name)
        return helper.make_node("Constant", [], [name], name=f"const_{name}", value=value)

    nodes = [const("w1", (8, 3, 3, 3)), const("b1", (8,)), const("w2", (8, 8, 1, 1)), const("fc_w", (8, 10)),
             const("fc_b", (10,)),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "fc_w"], ["mm"], name="fc"),
             helper.make_node("Add", ["mm", "fc_b"], ["y"], name="fc_bias")]
    graph = helper.make_graph(
        nodes, "constant_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])])
    return _save(graph, folder / "constant-weights.onnx", {"source": "hand-built, Paddle2ONNX style"})


def tied_weights(folder: Path) -> Path:
    """One 16x16 initializer read by two MatMul nodes (tied weights), then a Gemm head."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((0.3 * rng.standard_normal((16, 16))).astype(np.float32), "tied"),
             numpy_helper.from_array((0.3 * rng.standard_normal((10, 16))).astype(np.float32), "head.weight"),
             numpy_helper.from_array(np.zeros(10, np.float32), "head.bias")]
    nodes = [helper.make_node("MatMul", ["x", "tied"], ["h1"], name="mm1"),
             helper.make_node("Tanh", ["h1"], ["t1"], name="tanh1"),
             helper.make_node("MatMul", ["t1", "tied"], ["h2"], name="mm2"),
             helper.make_node("Tanh", ["h2"], ["t2"], name="tanh2"),
             helper.make_node("Gemm", ["t2", "head.weight", "head.bias"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "tied_weights",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return _save(graph, folder / "tied-weights.onnx", {"source": "hand-built, tied weights"})


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str]) -> Path:
    """Write a hand-built graph at opset 13 with metadata props, checked first."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION,
                              producer_name="onnxprune-corpus")
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def external_data(folder: Path) -> Path:
    """The base export stored with every weight in one external-data file beside it."""
    model = onnx.load(str(_base(folder)))
    path = folder / f"{BASE_NET}-external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".weights", size_threshold=0)
    return path


def float16(folder: Path) -> Path:
    """The base export with fp16 weights, inputs and outputs (ORT inserts casts where it lacks kernels)."""
    model = onnx.load(str(_base(folder)))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            half = numpy_helper.to_array(tensor).astype(np.float16)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(half, tensor.name))
    for value in [*model.graph.input, *model.graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    path = folder / f"{BASE_NET}-fp16.onnx"
    onnx.save(model, str(path))
    return path


def _quantized(quant_format: str) -> Callable[[Path], Path]:
    """A maker quantizing the base export to int8 with ONNX Runtime (``QDQ`` or ``QOperator``)."""

    def make(folder: Path) -> Path:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

        base = _base(folder)
        shape = nets.NETS[BASE_NET].input_shape(1)
        rng = np.random.default_rng(0)
        samples = iter([{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(8)])

        class Reader(CalibrationDataReader):
            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(samples, None)

        path = folder / f"{BASE_NET}-{quant_format.lower()}.onnx"
        with _quiet():
            quantize_static(str(base), str(path), Reader(), quant_format=QuantFormat[quant_format])
        return path

    return make


def recipes() -> list[Recipe]:
    """Every corpus model, in table order."""
    found = []
    for net in nets.NETS:
        found += [Recipe(f"{net}-legacy{opset}", f"torch legacy exporter, opset {opset}",
                         _torch_export(net, opset, False)) for opset in LEGACY_OPSETS]
        found.append(Recipe(f"{net}-dynamo", "torch dynamo exporter, default opset", _torch_export(net, None, True)))
    found += [Recipe(f"caffe2-{path.stem.removeprefix('light_')}", "onnx backend data (Caffe2, opset 9)",
                     _light(path.stem.removeprefix("light_"))) for path in sorted(LIGHT_DIR.glob("light_*.onnx"))]
    found += [Recipe("constant-weights", "hand-built: Constant-node weights, named dynamic dims", constant_weights),
              Recipe("tied-weights", "hand-built: one initializer read by two MatMuls", tied_weights),
              Recipe(f"{BASE_NET}-external", "legacy opset 13, external data", external_data),
              Recipe(f"{BASE_NET}-fp16", "legacy opset 13, converted to fp16", float16),
              Recipe(f"{BASE_NET}-qdq", "ORT quantize_static, QDQ int8", _quantized("QDQ")),
              Recipe(f"{BASE_NET}-qoperator", "ORT quantize_static, QLinear ops", _quantized("QOperator"))]
    return found


def select(patterns: list[str] | None) -> list[Recipe]:
    """The recipes whose names match any of the shell-style ``patterns`` (all when None or empty)."""
    return [r for r in recipes() if not patterns or any(fnmatch.fnmatch(r.name, p) for p in patterns)]


def build(folder: str | Path, patterns: list[str] | None = None) -> list[Entry]:
    """Build the selected corpus models into ``folder`` (reusing torch exports already there).

    An export that fails is an entry with its error, so a table can show it instead of stopping."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for recipe in select(patterns):
        try:
            entries.append(Entry(recipe.name, recipe.source, recipe.make(folder)))
        except Exception as exc:  # an exporter failing is a corpus fact to report, not a reason to stop
            entries.append(Entry(recipe.name, recipe.source, None, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    return entries


def main() -> None:
    """Build the corpus into a folder and print one line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--select", action="append", metavar="PATTERN", help="shell pattern on model names")
    args = parser.parse_args()
    for entry in build(args.folder, args.select):
        print(f"{entry.name:28} {entry.source:52} {entry.path or 'FAILED: ' + str(entry.error)}")


if __name__ == "__main__":
    main()
