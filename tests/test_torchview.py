"""The torch view on real exports: conversion and parity with ONNX Runtime across exporters and
opsets, the parameter map, gradients, the extra converters op by op, and clean refusals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, defs, helper, numpy_helper

from nets import NETS, export, random_data
from onnxprune.view import converters
from onnxprune.view import onnx2torch_compat as compat
from onnxprune.graph.canonical import canonicalize
from onnxprune.errors import ConversionError
from onnxprune.graph.io import load_model
from onnxprune.graph.prunable import find_prunable
from onnxprune.view.torchview import TorchView, build_torch_view, check_parity

DYNAMO = None  # the opset of a dynamo export: its default
EXPORTS = [pytest.param(False, 11, id="legacy-11"), pytest.param(False, 13, id="legacy-13"),
           pytest.param(False, 17, id="legacy-17"), pytest.param(True, DYNAMO, id="dynamo")]
MATRIX = [pytest.param(name, *exporter.values, id=f"{name}-{exporter.id}")
          for name in ("resnet", "mobilenet", "transformer") for exporter in EXPORTS]
# the other nets of tests/nets.py once each; shufflenet at opset 11 computes its shapes at run time,
# its dynamo export has Split-18
OTHERS = [pytest.param(name, dynamo, opset, id=f"{name}-{'dynamo' if dynamo else f'legacy-{opset}'}")
          for name, dynamo, opset in [("densenet", False, 13), ("senet", False, 17),
                                      ("shufflenet", False, 11), ("shufflenet", True, DYNAMO)]]
TOLERANCE = 1e-4


@dataclass
class Case:
    """One exported net: its canonical model and torch view."""

    model: onnx.ModelProto
    view: TorchView


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """case(name, dynamo, opset) -> Case, exported, canonicalized and converted once per module."""
    folder = tmp_path_factory.mktemp("exports")
    cache: dict[tuple[str, bool, int | None], Case] = {}

    def get(name: str, dynamo: bool, opset: int | None) -> Case:
        key = (name, dynamo, opset)
        if key not in cache:
            net = NETS[name]
            path = export(net.build(), folder / f"{name}-{'dynamo' if dynamo else opset}.onnx", opset=opset,
                          dynamo=dynamo, input_shape=net.input_shape())
            model = canonicalize(load_model(path)).model
            cache[key] = Case(model, build_torch_view(model))
        return cache[key]

    return get


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("name, dynamo, opset", MATRIX + OTHERS)
def test_parity_with_onnx_runtime(case, name, dynamo, opset):
    c = case(name, dynamo, opset)
    result = check_parity(c.view, c.model, random_data(c.model, samples=64))
    exporter = "dynamo" if dynamo else "legacy"
    print(f"\nPARITY {name} {exporter} opset {_opset(c.model)}: max abs diff {result.max_abs_diff:.3g} "
          f"over {result.samples} samples")
    assert result.samples == 64
    assert result.max_abs_diff < TOLERANCE
    if not dynamo:
        assert _opset(c.model) == opset


def test_dynamo_default_opset(case):
    opset = _opset(case("resnet", True, DYNAMO).model)
    print(f"\ndynamo exporter default opset: {opset}")
    assert opset >= 18  # the versions onnx2torch lacks: what converters.py exists for


@pytest.mark.parametrize("name, dynamo, opset", MATRIX)
def test_params_are_the_prunable_weights(case, name, dynamo, opset):
    c = case(name, dynamo, opset)
    inits = {t.name: t for t in c.model.graph.initializer}
    prunable = [w.name for w in find_prunable(c.model)]
    assert prunable and sorted(c.view.params) == sorted(prunable)
    for weight, param in c.view.params.items():
        assert tuple(param.shape) == tuple(inits[weight].dims), weight
        assert param.requires_grad, weight
        np.testing.assert_array_equal(param.detach().numpy(), numpy_helper.to_array(inits[weight]))
    frozen = [p for p in c.view.parameters() if p.requires_grad and all(p is not q for q in c.view.params.values())]
    assert not frozen


@pytest.mark.parametrize("name, dynamo, opset", MATRIX)
def test_gradients_reach_every_weight(case, name, dynamo, opset):
    c = case(name, dynamo, opset)
    data = random_data(c.model, samples=8, seed=1)
    c.view.zero_grad()
    (output,) = c.view(*[torch.from_numpy(data.inputs[n]) for n in c.view.input_names])
    output.square().sum().backward()
    kinds = {w.name: w.op_type for w in find_prunable(c.model)}
    assert {"MatMul", "Gemm"} & set(kinds.values())
    for weight, param in c.view.params.items():
        assert param.grad is not None and param.grad.abs().max() > 0, f"{kinds[weight]} weight {weight}"


# ---------------------------------------------------------------- single-node graphs, op by op


def _graph_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[str],
                 opset: int, initializers: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """A canonical model of ``nodes`` at ``opset``; float outputs, shapes left to inference."""
    graph = helper.make_graph(nodes, "ops", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                     for o in outputs],
                              initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return canonicalize(model).model


def _x(shape=(2, 3, 4, 5)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _assert_parity(model: onnx.ModelProto) -> None:
    assert compat.unsupported_nodes(model) == []
    view = build_torch_view(model)
    # one batch of the graph's fixed size: these ops may mix or drop the batch axis
    result = check_parity(view, model, random_data(model, samples=2))
    assert result.max_abs_diff < TOLERANCE


@pytest.mark.parametrize("op_type", converters.REDUCE_18)
@pytest.mark.parametrize("axes, keepdims", [([1, -1], 1), ([3, -3], 0), (None, 1), ([], 1)])
def test_reduce_18(op_type, axes, keepdims):
    inputs = ["positive"] + (["axes"] if axes is not None else [])
    nodes = [helper.make_node("Abs", ["x"], ["positive"]),
             helper.make_node(op_type, inputs, ["y"], keepdims=keepdims)]
    inits = [_ints("axes", axes)] if axes is not None else []
    _assert_parity(_graph_model(nodes, [_x()], ["y"], 18, inits))


def test_reduce_18_noop_with_empty_axes():
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], noop_with_empty_axes=1)
    _assert_parity(_graph_model([node], [_x()], ["y"], 21, [_ints("axes", [])]))


@pytest.mark.parametrize("split, num_outputs, outputs", [(None, 3, 3), (None, 2, 2), ([1, 3], None, 2)])
def test_split_18(split, num_outputs, outputs):
    names = [f"y{i}" for i in range(outputs)]
    extra = {"num_outputs": num_outputs} if num_outputs else {}
    node = helper.make_node("Split", ["x"] + (["split"] if split else []), names, axis=-1 if split else 2, **extra)
    shape = (2, 3, 8, 4)  # axis 2: 8 in 3 parts is 3, 3, 2
    _assert_parity(_graph_model([node], [_x(shape)], names, 18, [_ints("split", split)] if split else []))


@pytest.mark.parametrize("mode, axes, pads", [("constant", [-1], [1, 2]), ("reflect", [2, 3], [1, 0, 2, 1]),
                                              ("edge", None, [0, 0, 1, 2, 0, 0, 2, 1])])
def test_pad_18_and_later(mode, axes, pads):
    inputs = ["x", "pads", "value" if mode == "constant" else ""] + (["axes"] if axes else [])
    inits = [_ints("pads", pads), numpy_helper.from_array(np.array(0.5, np.float32), "value")]
    inits += [_ints("axes", axes)] if axes else []
    for opset in (18, 21):
        node = helper.make_node("Pad", inputs, ["y"], mode=mode)
        _assert_parity(_graph_model([node], [_x()], ["y"], opset, [i for i in inits if i.name in inputs]))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_20(approximate):
    _assert_parity(_graph_model([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)], [_x()], ["y"], 20))


@pytest.mark.parametrize("opset", [14, 19, 21])
def test_reshape_allowzero(opset):
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1)
    _assert_parity(_graph_model([node], [_x()], ["y"], opset, [_ints("shape", [2, -1, 5])]))


def test_average_pool_19_and_22():
    for opset in (19, 22):
        node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[1, 1], dilations=[1, 1])
        _assert_parity(_graph_model([node], [_x()], ["y"], opset))


@pytest.mark.parametrize("attributes, shape", [
    ({"kernel_shape": [3, 3], "pads": [0, 0, 1, 1]}, (2, 3, 6, 7)),  # Caffe2 / TF-style asymmetric pads
    ({"kernel_shape": [3, 3], "pads": [1, 0, 2, 1], "count_include_pad": 1}, (2, 3, 6, 7)),
    ({"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, (2, 3, 7, 8)),
    ({"kernel_shape": [3, 3], "strides": [2, 3], "auto_pad": "SAME_LOWER"}, (2, 3, 7, 8)),
    ({"kernel_shape": [3], "strides": [2], "pads": [0, 2]}, (2, 3, 9)),
])
def test_average_pool_with_asymmetric_or_same_padding(attributes, shape):
    for opset in (9, 11, 19):
        _assert_parity(_graph_model([helper.make_node("AveragePool", ["x"], ["y"], **attributes)], [_x(shape)],
                                    ["y"], opset))


@pytest.mark.parametrize("outputs", [["y"], ["y", "mask"]])
def test_dropout_before_opset_10_is_the_identity(outputs):
    nodes = [helper.make_node("Dropout", ["x"], outputs, ratio=0.4), helper.make_node("Relu", ["y"], ["z"])]
    model = _graph_model(nodes, [_x()], ["z"] + outputs[1:], 9)
    _assert_parity(model)  # outputs match ONNX Runtime's, the mask included (zeros there)
    out = build_torch_view(model)(torch.randn(2, 3, 4, 5))
    assert len(out) == len(outputs) and all(o.shape == (2, 3, 4, 5) for o in out)


def test_caffe2_models_convert():
    """The opset-9 Caffe2 models shipped with onnx use Dropout-7 and asymmetric AveragePool padding."""
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    for name in ("inception_v1", "bvlc_alexnet"):
        model = canonicalize(load_model(folder / f"light_{name}.onnx")).model
        assert compat.unsupported_nodes(model) == [], name
    model = canonicalize(load_model(folder / "light_inception_v1.onnx")).model  # fixed batch of 1
    result = check_parity(build_torch_view(model), model, random_data(model, samples=1))
    assert result.max_abs_diff < TOLERANCE


def test_global_average_pool_of_unknown_rank():
    """The input's rank is not in the model: the pool must still keep the batch and channel axes."""
    rankless = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    model = _graph_model([helper.make_node("GlobalAveragePool", ["x"], ["y"])], [rankless], ["y"], 17)
    view = build_torch_view(model)
    (pooled,) = view(torch.ones(2, 3, 4, 5))
    assert tuple(pooled.shape) == (2, 3, 1, 1)


def test_type_only_upgrades_only_widen_types():
    """Every reused version has the schema of the one it reuses but for the accepted types."""

    def signature(op_type: str, version: int):
        schema = defs.get_schema(op_type, max_inclusive_version=version)
        attributes = {n: (a.type, a.required, a.default_value.SerializeToString()) for n, a in schema.attributes.items()}
        return ([(i.name, i.option) for i in schema.inputs], [(o.name, o.option) for o in schema.outputs], attributes)

    float8_only = {("Cast", 19): {"saturate"}, ("Cast", 24): {"round_mode"}}  # see converters.TYPE_ONLY_UPGRADES
    for op_type, (base, versions) in converters.TYPE_ONLY_UPGRADES.items():
        history = sorted({defs.get_schema(op_type, max_inclusive_version=v).since_version
                          for v in range(base, max(versions) + 1)})
        assert history == [base, *versions], op_type
        for older, newer in zip(history, history[1:]):
            before, after = signature(op_type, older), signature(op_type, newer)
            assert before[:2] == after[:2], f"{op_type}-{newer} changes inputs or outputs"
            added = set(after[2]) - set(before[2])
            assert added == float8_only.get((op_type, newer), set()), f"{op_type}-{newer} adds {added}"
            assert all(after[2][n] == before[2][n] for n in before[2]), f"{op_type}-{newer} changes attributes"


def test_restricted_versions_check_every_new_attribute():
    for op_type, version, base, checks in converters.RESTRICTED:
        old = set(defs.get_schema(op_type, max_inclusive_version=base).attributes)
        new = set(defs.get_schema(op_type, max_inclusive_version=version).attributes)
        assert new - old <= set(checks), f"{op_type}-{version}: unchecked {new - old - set(checks)}"


def test_onnx2torch_private_layout_is_the_one_patched():
    """Canary: fails loudly when onnx2torch renames or moves a private name the converters rely on."""
    compat.check_onnx2torch()
    from onnx2torch.node_converters import registry

    assert registry.OperationDescription._fields == ("domain", "operation_type", "version")
    for op_type, version in compat.REPLACED:
        assert registry.OperationDescription("", op_type, version) in registry._CONVERTER_REGISTRY, (op_type, version)


def test_patched_registry_restores_onnx2torch_exactly():
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, get_converter

    before = dict(_CONVERTER_REGISTRY)
    with compat.patched_registry():
        patched = dict(_CONVERTER_REGISTRY)
        with compat.patched_registry():  # nested blocks share the patch
            assert dict(_CONVERTER_REGISTRY) == patched
        assert dict(_CONVERTER_REGISTRY) == patched
        assert get_converter("ReduceMean", 20) is get_converter("ReduceMean", 18)
        assert get_converter("Reshape", 14) is not before[next(k for k in before if k[1:] == ("Reshape", 14))]
    assert dict(_CONVERTER_REGISTRY) == before
    with pytest.raises(NotImplementedError):
        get_converter("ReduceMean", 20)


# ---------------------------------------------------------------- what cannot be converted


def _loop_model() -> onnx.ModelProto:
    """y = x + 3, computed by a Loop adding 1 three times."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(np.float32(1.0), "one")])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Loop", ["trips", "cond", "r"], ["y"], name="add_three", body=body)]
    graph = helper.make_graph(nodes, "loop", [_x((2, 3))], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              initializer=[_ints("trips", 3), numpy_helper.from_array(np.array(True), "cond")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _custom_op_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Frobnicate", ["r"], ["y"], name="frob", domain="com.example")]
    graph = helper.make_graph(nodes, "custom", [_x((2, 3))], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


@pytest.mark.parametrize("make, node, op_type, version", [(_loop_model, "add_three", "Loop", 17),
                                                          (_custom_op_model, "frob", "Frobnicate", 1)])
def test_unconvertible_op_is_named(make, node, op_type, version):
    model = make()
    assert compat.unsupported_nodes(model) == [(node, op_type, version)]
    with pytest.raises(ConversionError, match=rf"op {op_type}-{version} in node '{node}'"):
        build_torch_view(model)


@pytest.mark.parametrize("node, opset", [
    (helper.make_node("AveragePool", ["x"], ["y"], name="dilated", kernel_shape=[2, 2], dilations=[2, 2]), 19),
    (helper.make_node("Cast", ["x"], ["y"], name="to_float8", to=TensorProto.FLOAT8E4M3FN), 19),
    (helper.make_node("Pad", ["x", "pads"], ["y"], name="wrapped", mode="wrap"), 19),
    (helper.make_node("Gelu", ["x"], ["y"], name="gelu", approximate="sigmoid"), 20),
])
def test_refused_attribute_values_are_unsupported(node, opset):
    graph = helper.make_graph([node], "refused", [_x()], [helper.make_empty_tensor_value_info("y")],
                              initializer=[_ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])] if node.op_type == "Pad" else [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    assert compat.unsupported_nodes(model) == [(node.name, node.op_type, opset)]
    with pytest.raises(ConversionError, match=node.name):
        build_torch_view(model)
