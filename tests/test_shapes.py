"""Canary for the shape inference adapter: onnxprune/graph/shapes.py calls private steps of ONNX
Runtime's SymbolicShapeInference. If an onnxruntime release renames them or stops following shape
arithmetic, these tests fail here instead of channel groups silently turning unprunable."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph import shapes
from onnxprune.graph.shapes import tensor_shapes


def _flatten_by_shape_arithmetic() -> onnx.ModelProto:
    """x[N,6,4,4] → Reshape to [Shape(x)[0], -1] → Relu: the target is computed at run time."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["flat"]),
             helper.make_node("Relu", ["flat"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    graph = helper.make_graph(nodes, "flatten", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_symbolic_shape_inference_keeps_the_private_steps_onnxprune_calls():
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    for member in ("_preprocess", "_infer_impl", "_update_output_from_vi"):
        assert callable(getattr(SymbolicShapeInference, member, None)), \
            f"onnxruntime's SymbolicShapeInference lost {member}: update onnxprune/graph/shapes.py"
    inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
    assert hasattr(inference, "run_"), "SymbolicShapeInference lost run_: update onnxprune/graph/shapes.py"


def test_symbolic_shape_inference_follows_reshape_after_shape_arithmetic():
    inferred = shapes._symbolic_inference(_flatten_by_shape_arithmetic())
    assert inferred is not None, "onnxruntime's symbolic shape inference failed on a plain Shape→Reshape graph"
    assert shapes._shapes_of(inferred.graph)["flat"] == ("N", 96)
    assert tensor_shapes(_flatten_by_shape_arithmetic())["y"] == ("N", 96)


def test_failed_symbolic_inference_warns_once_and_keeps_onnx_shapes(monkeypatch, caplog):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def broken(self, model):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(SymbolicShapeInference, "_preprocess", broken)
    monkeypatch.setattr(shapes, "_warned", False)
    model = _flatten_by_shape_arithmetic()
    with caplog.at_level(logging.WARNING, logger="onnxprune.graph.shapes"):
        found = tensor_shapes(model)
        tensor_shapes(model)
    assert found["x"] == ("N", 6, 4, 4) and found["zero"] == ()
    warnings = [r for r in caplog.records if "symbolic shape inference failed" in r.getMessage()]
    assert len(warnings) == 1 and "simulated failure" in warnings[0].getMessage()
