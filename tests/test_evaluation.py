"""Evaluation fits each output: agreement for class scores only, IoU for maps in [0, 1], cosine and
relative L2 for every output of a multi-output model; the reference can be outputs computed once."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs import IR_VERSION
from onnxprune.data import Dataset
from onnxprune.errors import DataError
from onnxprune.validate.evaluation import CLASS_SCORES, MAP, VALUES, evaluate, output_kind, reference_outputs


def _detector(scale: float = 1.0) -> onnx.ModelProto:
    """x[N,3,8,8] → Conv → y (values); Sigmoid → prob[N,1,8,8] (a map); GAP → Flatten → logits[N,4]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * scale).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["y"], ["y0"], name="mean", axes=[1], keepdims=1),
             helper.make_node("Sigmoid", ["y0"], ["prob"], name="sigmoid"),
             helper.make_node("GlobalAveragePool", ["y"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["logits"], name="flatten")]
    graph = helper.make_graph(nodes, "detector", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, 8, 8]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)


def test_every_output_gets_the_figures_of_its_kind():
    data = Dataset({"x": np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)})
    reference = _detector()
    changed = _detector()
    weight = numpy_helper.to_array(changed.graph.initializer[0]).copy()
    weight[np.abs(weight) < 0.5] = 0.0  # magnitude-pruned copy
    changed.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    result = evaluate(changed, data, reference=reference, device="cpu")
    kinds = {o.name: o.kind for o in result.outputs}
    assert kinds == {"prob": MAP, "y": VALUES, "logits": CLASS_SCORES}
    prob, y, logits = result.outputs
    assert prob.agreement is None and y.agreement is None and y.iou is None  # no "agreement" for a map
    assert logits.iou is None and 0.0 <= logits.agreement <= 1.0
    ours = reference_outputs(changed, data, device="cpu")[0] >= 0.5
    theirs = reference_outputs(reference, data, device="cpu")[0] >= 0.5
    expected = np.logical_and(ours, theirs).sum() / np.logical_or(ours, theirs).sum()
    assert prob.iou == pytest.approx(expected) and 0.0 < prob.iou < 1.0
    y_ours, y_ref = (reference_outputs(m, data, device="cpu")[1] for m in (changed, reference))
    assert y.rel_l2 == pytest.approx(np.linalg.norm(y_ours - y_ref) / np.linalg.norm(y_ref), rel=1e-6)
    # the top-level figures are the first output's
    assert result.iou == prob.iou and result.agreement is None and result.cosine == prob.cosine


def test_reference_outputs_computed_once_give_the_same_figures():
    data = Dataset({"x": np.random.default_rng(2).standard_normal((8, 3, 8, 8)).astype(np.float32)})
    model, reference = _detector(0.9), _detector()
    once = reference_outputs(reference, data, device="cpu")
    assert evaluate(model, data, reference=once, device="cpu").outputs == \
        evaluate(model, data, reference=reference, device="cpu").outputs
    with pytest.raises(DataError, match="3 outputs, the reference 1"):
        evaluate(model, data, reference=once[:1], device="cpu")


def test_output_kinds_from_values():
    rng = np.random.default_rng(3)
    probabilities = rng.random((4, 7, 5))
    probabilities /= probabilities.sum(-1, keepdims=True)
    assert output_kind(probabilities.astype(np.float32)) == CLASS_SCORES  # a recogniser's per-step softmax
    assert output_kind(rng.standard_normal((4, 7, 5)).astype(np.float32)) == VALUES
    assert output_kind(rng.random((4, 1, 6, 6)).astype(np.float32)) == MAP
    assert output_kind(rng.standard_normal((4, 10)).astype(np.float32)) == CLASS_SCORES
    assert output_kind(np.arange(8, dtype=np.int64).reshape(2, 4)) == VALUES
