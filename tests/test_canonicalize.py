"""canonicalize turns weights held by Constant and ConstantOfShape nodes (Paddle2ONNX and dynamo
style) into initializers without changing what ONNX Runtime computes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nets import random_data
from onnxprune.graph.canonical import canonicalize
from onnxprune.graph.prunable import find_prunable
from onnxprune.runtime.feeds import run_batched
from onnxprune.runtime.sessions import make_session

RNG = np.random.default_rng(0)


def _model(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    """Input x [N, 3, 8, 8] -> nodes -> output y [N, 5], opset 13, checked."""
    graph = helper.make_graph(nodes, "paddle_style",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _head(conv_weight: str) -> list[onnx.NodeProto]:
    """Conv(conv_weight, bias conv_b) -> Relu -> GAP -> Flatten -> MatMul(fc_w) -> Add(fc_b) -> y."""
    return [helper.make_node("Conv", ["x", conv_weight, "conv_b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("MatMul", ["f", "fc_w"], ["m"]),
            helper.make_node("Add", ["m", "fc_b"], ["y"])]


def _weight_constants() -> list[onnx.NodeProto]:
    """conv_b as ``value_floats``, fc_w and fc_b as ``value`` tensors."""
    return [helper.make_node("Constant", [], ["conv_b"], value_floats=RNG.standard_normal(4).tolist()),
            _constant("fc_w", RNG.standard_normal((4, 5)).astype(np.float32)),
            _constant("fc_b", RNG.standard_normal(5).astype(np.float32))]


def _outputs(model: onnx.ModelProto) -> list[np.ndarray]:
    return run_batched(make_session(model, device="cpu"), random_data(model, samples=8))


def _assert_weights_are_initializers(model: onnx.ModelProto, weights: set[str], gone: set[str]) -> onnx.ModelProto:
    """Canonicalize ``model``; the ``weights`` must be initializers, no node of a ``gone`` type may
    remain, and ONNX Runtime must give identical outputs."""
    canonical = canonicalize(model).model
    assert weights <= {t.name for t in canonical.graph.initializer}
    assert not [n.op_type for n in canonical.graph.node if n.op_type in gone]
    for original, converted in zip(_outputs(model), _outputs(canonical), strict=True):
        np.testing.assert_array_equal(original, converted)
    return canonical


def test_constant_node_weights_become_initializers():
    conv_w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = _model([_constant("conv_w", conv_w), *_weight_constants(), *_head("conv_w")])
    canonical = _assert_weights_are_initializers(model, {"conv_w", "conv_b", "fc_w", "fc_b"}, {"Constant"})
    inits = {t.name: numpy_helper.to_array(t) for t in canonical.graph.initializer}
    np.testing.assert_array_equal(inits["conv_w"], conv_w)
    assert inits["conv_b"].dtype == np.float32 and inits["conv_b"].shape == (4,)
    assert {w.name for w in find_prunable(canonical)} == {"conv_w", "fc_w"}


def test_constant_of_shape_weight_becomes_an_initializer():
    shape = _constant("conv_w_shape", np.array([4, 3, 3, 3], np.int64))
    fill = helper.make_node("ConstantOfShape", ["conv_w_shape"], ["conv_w"],
                            value=numpy_helper.from_array(np.array([0.05], np.float32)))
    model = _model([shape, fill, *_weight_constants(), *_head("conv_w")])
    canonical = _assert_weights_are_initializers(model, {"conv_w", "conv_b", "fc_w", "fc_b"},
                                                 {"Constant", "ConstantOfShape"})
    inits = {t.name: numpy_helper.to_array(t) for t in canonical.graph.initializer}
    np.testing.assert_array_equal(inits["conv_w"], np.full((4, 3, 3, 3), 0.05, np.float32))
    assert "conv_w_shape" not in inits  # only the folded weight read it
    assert {w.name for w in find_prunable(canonical)} == {"conv_w", "fc_w"}


def test_canonical_form_is_stable():
    conv_w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    canonical = canonicalize(_model([_constant("conv_w", conv_w), *_weight_constants(), *_head("conv_w")])).model
    again = canonicalize(canonical)
    assert again.changes == []
    assert again.model.graph == canonical.graph
