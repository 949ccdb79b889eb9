"""Reconstruction of structured pruning on calibration data: the consumer refit is exact when the removed
channels duplicate kept ones, chita-channel finds the redundant channels that L1 keeps, the selection's
low-rank updates agree with direct computation, and bad input (too few rows, no labels, no data)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.data import Dataset, load_data
from onnxprune.errors import ConfigError
from onnxprune.methods import prune_model
from onnxprune.methods.structured.chita_channel import ChitaChannelConfig, ConsumerFit, chita_channel_session
from onnxprune.methods.structured.l1_channel import ChannelConfig, l1_channel_session
from onnxprune.pipeline import prune
from onnxprune.validate.evaluation import evaluate
from onnxprune.runtime.sessions import make_session

MODELS = Path(__file__).resolve().parents[1] / "models"


def conv_pair(producer: np.ndarray, producer_bias: np.ndarray, consumer: np.ndarray) -> onnx.ModelProto:
    """input [N, 3, 8, 8] → Conv(producer) → Relu → Conv(consumer) → output; the Relu's channels form the group."""
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
             ((producer, "w1"), (producer_bias, "b1"), (consumer, "w2"),
              (np.linspace(-0.5, 0.5, consumer.shape[0]), "b2"))]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["output"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def images(count: int, seed: int = 0) -> Dataset:
    return Dataset({"input": np.random.default_rng(seed).standard_normal((count, 3, 8, 8)).astype(np.float32)})


def run(model: onnx.ModelProto, data: Dataset) -> np.ndarray:
    return make_session(model, device="cpu").run(None, data.inputs)[0]


def duplicated(consumer_scale: tuple[float, ...], copies: dict[int, int], seed: int = 0) -> onnx.ModelProto:
    """Six producer channels; channel k copies channel j for every k: j in ``copies`` (filter and bias),
    and the consumer's columns of channel c are scaled by ``consumer_scale[c]``."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((6, 3, 3, 3)), rng.standard_normal(6) * 0.1
    for k, j in copies.items():
        w1[k], b1[k] = w1[j], b1[j]
    w2 = rng.standard_normal((4, 6, 3, 3)) * np.asarray(consumer_scale)[None, :, None, None]
    return conv_pair(w1, b1, w2)


def test_refit_is_exact_when_removed_channels_duplicate_kept_ones():
    # channels 4 and 5 copy 0 and 1 and read little in the consumer, so L1 removes them; their inputs
    # X_4 = X_0 and X_5 = X_1, so the refit can move their consumer weights onto 0 and 1 exactly
    model = duplicated((1, 1, 1, 1, 0.05, 0.05), {4: 0, 5: 1})
    calib, test = images(64), images(16, seed=1)
    config = ChannelConfig(sparsity=1 / 3, group=0, ridge=1e-9)
    plain = prune_model("l1-channel", model, ChannelConfig(sparsity=1 / 3, group=0))
    result = prune_model("l1-channel", model, config, calib)
    (entry,) = result.details["groups"]
    assert entry["kept"] == 4 and result.details["reconstruct"] is True
    assert entry["reconstruction"]["error_before"] > 1e-4
    assert entry["reconstruction"]["error_after"] < 1e-8
    dense, refit = run(model, test), run(result.model, test)
    assert np.linalg.norm(refit - dense) <= 1e-4 * np.linalg.norm(dense)
    assert np.linalg.norm(run(plain.model, test) - dense) > 1e-3 * np.linalg.norm(dense)


def test_chita_channel_drops_redundant_channels_that_l1_keeps():
    # channels 2, 3 copy 0, 1 with large consumer weights (high L1, no information); 4, 5 are unique but small
    model = duplicated((1, 1, 2, 2, 0.2, 0.2), {2: 0, 3: 1})
    calib = images(64)
    l1 = prune_model("l1-channel", model, ChannelConfig(sparsity=1 / 3, group=0), calib)
    chita = prune_model("chita-channel", model, ChitaChannelConfig(sparsity=1 / 3, group=0), calib)
    l1_error = l1.details["groups"][0]["reconstruction"]["error_after"]
    chita_error = chita.details["groups"][0]["reconstruction"]["error_after"]
    assert l1_error > 1e-3 and chita_error < 1e-3 * l1_error
    test = images(16, seed=1)
    dense = run(model, test)
    assert np.linalg.norm(run(chita.model, test) - dense) <= 1e-3 * np.linalg.norm(dense)


def test_selection_updates_agree_with_direct_computation():
    model = duplicated((1, 0.5, 2, 1, 0.3, 0.7), {})
    session = chita_channel_session(model, ChitaChannelConfig(group=0), images(32))
    (inp,) = session.consumer_inputs()[0]
    fit = ConsumerFit(inp, session.values, 1e-3, 6)
    direct = ConsumerFit(inp, session.values, 1e-3, 6)
    costs = fit.removal_costs(np.arange(6))
    fit.remove(2)
    assert fit.error() == pytest.approx(direct.error() + costs[2], rel=1e-6, abs=1e-9)
    # the same set from scratch: invert the Gram restricted to the kept columns
    kept = np.setdiff1d(np.arange(len(direct.gram)), np.arange(2 * 9, 3 * 9))
    B = np.linalg.solve(direct.gram[np.ix_(kept, kept)], direct.cross[kept])
    assert fit.error() == pytest.approx((direct.target - np.sum(direct.cross[kept] * B)) / direct.target, rel=1e-6)
    gain = fit.addition_gains(np.array([2]))[0]
    before = fit.error()
    fit.add(2)
    assert fit.error() == pytest.approx(before - gain, rel=1e-6, abs=1e-9)
    assert fit.error() == pytest.approx(direct.error(), rel=1e-6, abs=1e-9)


def dense_pair(samples: int) -> tuple[onnx.ModelProto, Dataset]:
    """input [N, 8] → Gemm(8→16) → Relu → Gemm(16→4): the group's consumer reads 16 columns per row."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (16, 8)), ("b1", (16,)), ("w2", (4, 16)), ("b2", (4,)))]
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["output"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, Dataset({"input": rng.standard_normal((samples, 8)).astype(np.float32)})


def test_too_few_calibration_rows_warn_and_stay_finite(caplog):
    model, calib = dense_pair(samples=5)  # 5 rows for 16 columns and the bias
    with caplog.at_level(logging.WARNING, logger="onnxprune.methods.structured.reconstruction"):
        result = prune_model("chita-channel", model, ChitaChannelConfig(sparsity=0.5), calib)
    assert any("underdetermined" in r.getMessage() for r in caplog.records)
    for tensor in result.model.graph.initializer:
        assert np.isfinite(numpy_helper.to_array(tensor)).all()
    assert np.isfinite(run(result.model, calib)).all()


def test_reconstruct_needs_calibration_data_and_stays_off_without():
    model, calib = dense_pair(samples=32)
    with pytest.raises(ConfigError, match="calib"):
        l1_channel_session(model, ChannelConfig(reconstruct="on"), None)
    with pytest.raises(ConfigError, match="calib"):
        chita_channel_session(model, ChitaChannelConfig(), None)
    assert prune_model("l1-channel", model, ChannelConfig()).details["reconstruct"] is False
    off = prune_model("l1-channel", model, ChannelConfig(reconstruct="off"), calib)
    assert off.details["reconstruct"] is False and "reconstruction" not in off.details["groups"][0]


def test_bundled_cnn_with_unlabelled_calibration(tmp_path):
    model_path = MODELS / "cnn.onnx"
    calib = load_data(MODELS / "cnn_calib.npz", onnx.load(str(model_path))).take(64)
    np.savez(tmp_path / "calib.npz", **calib.inputs)  # inputs only: no labels
    out = tmp_path / "pruned.onnx"
    outcome = prune(model_path, out, "chita-channel", calib=tmp_path / "calib.npz", sparsity=0.5, swaps=2,
                    rows=4000)
    groups = outcome.details["groups"]
    assert groups and all(g["reconstruction"]["error_after"] < g["reconstruction"]["error_before"] for g in groups)
    test = load_data(MODELS / "cnn_test.npz", onnx.load(str(model_path))).take(500)
    assert evaluate(out, test, threads=1, device="cpu").accuracy > 0.90


def test_paired_capture_holds_both_grams_and_their_cross_product():
    from onnxprune.activations.capture import session_with_outputs
    from onnxprune.activations.gram import capture_grams
    from onnxprune.activations.layers import conv_rows, layer_sources

    rng = np.random.default_rng(3)
    model = conv_pair(rng.standard_normal((6, 3, 3, 3)), rng.standard_normal(6), rng.standard_normal((4, 6, 3, 3)))
    reference = conv_pair(rng.standard_normal((6, 3, 3, 3)), rng.standard_normal(6), rng.standard_normal((4, 6, 3, 3)))
    data = images(10)
    sources, _ = layer_sources(model, ["w2"])
    stats = capture_grams(model, data, sources, batch_size=4, reference=reference)["w2"]
    inputs = [session_with_outputs(m, {"r": TensorProto.FLOAT}, device="cpu").run(["r"], data.inputs)[0]
              for m in (model, reference)]
    x, x_ref = (conv_rows(a.astype(np.float64), sources[0].keys[0])[0] for a in inputs)
    H, cross, H_ref, mean, mean_ref = stats.blocks()
    assert stats.paired and stats.n_rows == x.shape[0] == 10 * 64
    for got, want in ((H, x.T @ x), (cross, x.T @ x_ref), (H_ref, x_ref.T @ x_ref)):
        assert np.abs(got - want).max() <= 1e-9 * np.abs(want).max()
    assert np.allclose(mean, x.mean(0)) and np.allclose(mean_ref, x_ref.mean(0))
    assert np.abs(cross - H).max() > 1.0  # the two models do differ


def test_masked_model_computes_what_the_pruned_model_does():
    from onnxprune.channels.analysis import analyse_channels
    from onnxprune.channels.surgery import ChannelMap, apply_channel_maps, masked_model

    model = duplicated((1.0, 0.5, 2.0, 1.0, 0.1, 0.3), {})
    analysis = analyse_channels(model)
    keep = np.array([0, 2, 5])
    fused = np.random.default_rng(1).uniform(0.0, 1.0, (6, 3))  # a fusion: kept channels mix several
    channel_map = ChannelMap(fused, ChannelMap.selection(6, keep).consumer)
    pruned = apply_channel_maps(model, analysis, {0: channel_map})
    masked = masked_model(model, analysis, {0: channel_map.in_place(keep)})
    data = images(8)
    assert numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == "w1")).shape[0] == 3
    assert {t.name: tuple(t.dims) for t in masked.graph.initializer} == \
        {t.name: tuple(t.dims) for t in model.graph.initializer}
    expected = run(pruned, data)
    assert np.abs(run(masked, data) - expected).max() <= 1e-5 * np.abs(expected).max()
    assert np.abs(run(model, data) - expected).max() > 0.1


def test_sequential_refit_absorbs_earlier_groups_errors_on_the_bundled_cnn():
    model = onnx.load(str(MODELS / "cnn.onnx"))
    calib = load_data(MODELS / "cnn_calib.npz", model).take(200)
    test = load_data(MODELS / "cnn_test.npz", model).take(1000)
    accuracy = {}
    for sequential in (False, True):
        result = prune_model("l1-channel", model, ChannelConfig(sparsity=0.5, rows=4000,
                                                                sequential="on" if sequential else "off"), calib)
        accuracy[sequential] = evaluate(result.model, test, threads=1, device="cpu").accuracy
        assert result.details.get("sequential_passes", 1) == (6 if sequential else 1)
    assert accuracy[True] > accuracy[False] + 0.005, accuracy
    with pytest.raises(ConfigError, match="sequential"):
        prune_model("l1-channel", model, ChannelConfig(sparsity=0.5, sequential="on"))
