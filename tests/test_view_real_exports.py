"""Graph patterns of real vendor exports (Paddle2ONNX, dynamo BERT, YOLO-style detectors) that broke the
torch view: each small graph must convert, match ONNX Runtime and give finite gradients through
``view.fisher`` (vmap over grad, as CHITA computes them)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxprune.data import Dataset
from onnxprune.errors import ConversionError
from onnxprune.graph.canonical import canonicalize
from onnxprune.graph.prunable import read_weights
from onnxprune.methods import prune_model
from onnxprune.methods.unstructured.chita import ChitaConfig
from onnxprune.view.fisher import FlatLayout, choose_targets, gradient_matrix
from onnxprune.view.torchview import ParityResult, Tolerance, build_torch_view, check_parity

RNG = np.random.default_rng(0)
CLASSES = 4


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    """A Constant node, as Paddle2ONNX writes every weight."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_value"))


def _floats(*shape: int, dtype=np.float32) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(dtype)


def _model(nodes: list[onnx.NodeProto], opset: int, input_shape: list | None = ("N", 3, 8, 8),
           dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x → nodes → y[N, CLASSES], canonicalized (Constant nodes become initializers)."""
    graph = helper.make_graph(nodes, "export", [helper.make_tensor_value_info("x", dtype, input_shape)],
                              [helper.make_tensor_value_info("y", dtype, ["N", CLASSES])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return canonicalize(model).model


def _head(features: str, width: int, dtype=np.float32) -> list[onnx.NodeProto]:
    """features[N, C, H, W] → GlobalAveragePool → Flatten → Gemm(C → CLASSES, with bias) → y."""
    return [helper.make_node("GlobalAveragePool", [features], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            _constant("fc.weight", _floats(CLASSES, width, dtype=dtype)),
            _constant("fc.bias", _floats(CLASSES, dtype=dtype)),
            helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], transB=1)]


def _conv(dtype=np.float32) -> list[onnx.NodeProto]:
    """x[N, 3, 8, 8] → Conv(3 → 6, 3x3, pad 1) → a."""
    return [_constant("conv.weight", _floats(6, 3, 3, 3, dtype=dtype)),
            helper.make_node("Conv", ["x", "conv.weight"], ["a"], pads=[1, 1, 1, 1])]


def _data(shape=(16, 3, 8, 8), dtype=np.float32) -> Dataset:
    return Dataset({"x": RNG.standard_normal(shape).astype(dtype)})


def _check(model: onnx.ModelProto, data: Dataset) -> ParityResult:
    """The view converts, matches ONNX Runtime, and every gradient row of every weight is finite."""
    view = build_torch_view(model)
    parity = check_parity(view, model, data)
    weights = {n: w.astype(np.float32) for n, w in read_weights(model, list(view.params)).items()}
    layout = FlatLayout({n: w.shape for n, w in weights.items()})
    params = {view.param_paths[n]: torch.from_numpy(w) for n, w in weights.items()}
    targets = choose_targets(view, params, data, "logits", seed=0)
    at = gradient_matrix(view, layout, weights, data, targets, rows=4, samples_per_row=2)
    assert at.shape == (layout.size, 4)
    assert torch.isfinite(at).all() and at.abs().max() > 0
    return parity


def test_slice_with_constant_bounds_under_torch_func():
    """Was: 'Cannot access data pointer of Tensor that doesn't have storage' (Slice read its constant
    inputs with .numpy() inside torch.func.grad). Negative steps and axes included."""
    nodes = _conv() + [_constant("starts", np.array([1, -2], np.int64)), _constant("ends", np.array([7, -9], np.int64)),
                       _constant("axes", np.array([2, -1], np.int64)), _constant("steps", np.array([2, -1], np.int64)),
                       helper.make_node("Slice", ["a", "starts", "ends", "axes", "steps"], ["s"])] + _head("s", 6)
    _check(_model(nodes, 13), _data())


@pytest.mark.parametrize("opset", [11, 13])
def test_clip_with_tensor_bounds(opset):
    """Clip-11+ takes min and max as inputs; an empty name is no bound on that side."""
    nodes = _conv() + [_constant("low", np.array(-0.2, np.float32)), _constant("high", np.array(0.3, np.float32)),
                       helper.make_node("Clip", ["a", "low", "high"], ["both"]),
                       helper.make_node("Clip", ["both", "", "high"], ["capped"])] + _head("capped", 6)
    _check(_model(nodes, opset), _data())


def _batch_norm(x: str, **attributes) -> list[onnx.NodeProto]:
    """BatchNormalization of the 6 channels of ``x`` with Constant-node statistics → b."""
    return [_constant("bn.scale", _floats(6) + 1), _constant("bn.bias", _floats(6)), _constant("bn.mean", _floats(6)),
            _constant("bn.var", np.abs(_floats(6)) + 0.5),
            helper.make_node("BatchNormalization", [x, "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"],
                             **attributes)]


def test_batch_norm_12_as_paddle2onnx_writes_it():
    """Paddle2ONNX: Constant-node statistics, epsilon and momentum set, shapes computed at run time (the
    input's rank is unknown: onnx2torch's BatchNorm needed it)."""
    nodes = [_constant("conv.weight", _floats(6, 3, 3, 3)),
             helper.make_node("Conv", ["x", "conv.weight"], ["a"], pads=[1, 1, 1, 1])]
    nodes += _batch_norm("a", epsilon=1e-5, momentum=0.9) + _head("b", 6)
    _check(_model(nodes, 12, input_shape=None), _data())


@pytest.mark.parametrize("opset", [9, 15])
def test_batch_norm_9_and_15(opset):
    extra = {"training_mode": 0} if opset >= 14 else {}
    _check(_model(_conv() + _batch_norm("a", **extra) + _head("b", 6), opset), _data())


def test_batch_norm_in_training_mode_is_refused():
    model = _model(_conv() + _batch_norm("a", training_mode=1) + _head("b", 6), 15)
    with pytest.raises(ConversionError, match="BatchNormalization-15.*training mode"):
        build_torch_view(model)


def _fp16_model() -> onnx.ModelProto:
    return _model(_conv(np.float16) + [helper.make_node("Relu", ["a"], ["r"])] + _head("r", 6, np.float16), 13,
                  dtype=TensorProto.FLOAT16)


def test_fp16_weights_view_in_float32():
    model = _fp16_model()
    view = build_torch_view(model)
    assert all(p.dtype == torch.float32 for p in view.params.values())
    _check(model, _data(dtype=np.float16))


def test_fp16_model_is_written_back_in_fp16():
    model = _fp16_model()
    data = _data(dtype=np.float16)
    pruned = prune_model("chita", model, ChitaConfig(sparsity=0.5, rows=8, targets="logits", engine="model"), data).model
    weights = read_weights(pruned)
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float16)}
    assert sum(int(np.count_nonzero(w)) for w in weights.values()) <= sum(w.size for w in weights.values()) // 2
    (y,) = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": data.inputs["x"]})
    assert y.dtype == np.float16 and np.isfinite(y).all()


def test_parity_tolerance_scales_with_the_output():
    """A large sigmoid-like output passes with float noise above the absolute tolerance; a real
    difference is refused with the figures."""
    nodes = [_constant("w", _floats(3 * 8 * 8, CLASSES)), _constant("big", np.array(300.0, np.float32)),
             helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Mul", ["m", "big"], ["y"])]
    model = _model(nodes, 13)
    view = build_torch_view(model)
    data = _data()
    result = check_parity(view, model, data)
    figures = result.per_output["y"]
    assert result.worst_output == "y" and figures.max_abs_output > 100 and figures.rel_l2 < 1e-5
    with torch.no_grad():
        view.params["w"].mul_(1.01)
    with pytest.raises(ConversionError, match=r"output 'y'.*max abs diff .*max\|y\|.*relative L2"):
        check_parity(view, model, data)
    check_parity(view, model, data, tolerance=Tolerance(atol=1e-4, rtol=0.05, rel_l2=0.05))


def test_layer_norm_17_with_statistics_and_prelu():
    """Dynamo BERT writes LayerNormalization-17 (its statistics outputs listed when kept); face and
    detection models PRelu with a per-channel slope: both under vmap over grad."""
    nodes = _conv() + [_constant("ln.scale", _floats(8) + 1), _constant("ln.bias", _floats(8)),
                       helper.make_node("LayerNormalization", ["a", "ln.scale", "ln.bias"], ["n", "mean", "inv_std"],
                                        axis=-1, epsilon=1e-5),
                       _constant("slope", _floats(6, 1, 1)), helper.make_node("PRelu", ["n", "slope"], ["p"])]
    _check(_model(nodes + _head("p", 6), 17), _data())


def test_slice_with_bounds_computed_from_shape_arithmetic():
    """Was: the same storage error when the bounds come from Shape → Gather → Unsqueeze (a BERT export's
    position-id slice): such bounds are now read with tolist() at run time."""
    nodes = _conv() + [helper.make_node("Shape", ["a"], ["shape"]),
                       _constant("index", np.array(3, np.int64)),
                       helper.make_node("Gather", ["shape", "index"], ["width"], axis=0),
                       _constant("zero", np.array([0], np.int64)),
                       helper.make_node("Unsqueeze", ["width", "zero"], ["end"]),
                       _constant("start", np.array([1], np.int64)), _constant("axis", np.array([3], np.int64)),
                       helper.make_node("Slice", ["a", "start", "end", "axis"], ["b"])] + _head("b", 6)
    assert _check(_model(nodes, 13), _data()).max_abs_diff < 1e-4


def test_global_max_pool_has_a_view():
    """GlobalMaxPool (tf2onnx exports) had no converter."""
    nodes = _conv() + [helper.make_node("GlobalMaxPool", ["a"], ["pooled"]),
                       helper.make_node("Flatten", ["pooled"], ["flat"]),
                       _constant("fc.weight", _floats(CLASSES, 6)), _constant("fc.bias", _floats(CLASSES)),
                       helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], transB=1)]
    assert _check(_model(nodes, 15), _data()).max_abs_diff < 1e-4


def test_loss_is_taken_on_the_first_float_output_and_fits_what_it_holds():
    """An export whose first output is an integer pass-through and whose float output is not class scores
    (an embedding map): 'auto' targets become output-distortion directions instead of argmax classes."""
    nodes = _conv() + [helper.make_node("Shape", ["x"], ["ids"]), helper.make_node("Relu", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "export", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [4]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])])
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)).model
    view = build_torch_view(model)
    weights = read_weights(model, list(view.params))
    params = {view.param_paths[n]: torch.from_numpy(w) for n, w in weights.items()}
    targets = choose_targets(view, params, _data(), "auto", seed=0)
    assert targets.dtype == torch.float32 and targets.shape == (16, 6 * 8, 8)  # directions, not class indices
