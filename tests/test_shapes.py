"""Canary for the adapter to ONNX Runtime's private symbolic shape inference (``graph/ort_symbolic.py``):
if an onnxruntime release renames the steps it drives or stops following shape arithmetic, these tests
fail here instead of channel groups silently turning unprunable."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph import ort_symbolic
from onnxprune.graph.shapes import _shapes_of, tensor_shapes


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


def test_the_installed_onnxruntime_has_every_private_member_the_adapter_drives():
    assert ort_symbolic.missing_api() == [], (
        f"onnxruntime {onnxruntime.__version__} changed SymbolicShapeInference: update onnxprune/graph/ort_symbolic.py "
        "and the onnxruntime pin in pyproject.toml")


def test_symbolic_shape_inference_follows_reshape_after_shape_arithmetic():
    inferred = ort_symbolic.SymbolicInference().infer(_flatten_by_shape_arithmetic())
    assert inferred is not None, "onnxruntime's symbolic shape inference failed on a plain Shape→Reshape graph"
    assert _shapes_of(inferred.graph)["flat"] == ("N", 96)
    assert tensor_shapes(_flatten_by_shape_arithmetic())["y"] == ("N", 96)


def test_a_graph_the_inference_cannot_follow_warns_once_and_keeps_onnx_shapes(caplog):
    """A Gather past the end of a Shape makes ONNX Runtime's inference fail inside; ONNX's own shapes stay,
    with one warning naming the failure."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["g"]),
             helper.make_node("Reshape", ["x", "g"], ["y"])]
    graph = helper.make_graph(nodes, "past_the_end", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([5], np.int64), "i")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    adapter = ort_symbolic.SymbolicInference()
    with caplog.at_level(logging.WARNING, logger="onnxprune.graph.ort_symbolic"):
        assert adapter.infer(model) is None and adapter.infer(model) is None
    warnings = [r for r in caplog.records if "symbolic shape inference failed" in r.getMessage()]
    assert len(warnings) == 1 and "IndexError" in warnings[0].getMessage()
    assert tensor_shapes(model)["x"] == ("N", 6) and tensor_shapes(model)["i"] == (1,)
