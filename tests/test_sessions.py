"""Pruning one model at many sparsities re-uses work (gradients, channel groups, CHITA++ stages) without
changing the results, as the sweep and the budget search rely on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxprune.workflows.budget import Budget, search_sparsity
from onnxprune.graph.canonical import canonicalize
from onnxprune.data import load_data
from onnxprune.validate.evaluation import evaluate
from onnxprune.graph.io import load_model
from onnxprune.methods import get_method, make_config, prune_model
from onnxprune.methods.unstructured.chita import ChitaConfig, ChitaPlusConfig, _path, schedule
from onnxprune.methods.structured.l1_channel import ChannelConfig
from onnxprune.graph.prunable import read_weights
from onnxprune.graph.io import save_model

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def mlp():
    model = canonicalize(load_model(MODELS / "mlp.onnx")).model
    return model, load_data(MODELS / "mlp_calib.npz", model).take(300), load_data(MODELS / "mlp_test.npz", model)


def _max_diff(a, b) -> float:
    wa, wb = read_weights(a), read_weights(b)
    return max(float(np.max(np.abs(wa[n] - wb[n]))) for n in wa)


def _sparsity(model) -> float:
    weights = read_weights(model)
    return 1 - sum(int(np.count_nonzero(w)) for w in weights.values()) / sum(w.size for w in weights.values())


def test_chita_session_reuses_the_dense_gradients_and_matches_fresh_runs(mlp):
    model, calib, _ = mlp
    session = get_method("chita").open(model, ChitaConfig(rows=300, engine="model"), calib)
    first, second = session.prune(0.5), session.prune(0.8)
    assert first.details["stages"][0]["gradients_reused"] == 0
    assert second.details["stages"][0]["gradients_reused"] == 1
    fresh = prune_model("chita", model, ChitaConfig(sparsity=0.8, rows=300, engine="model"), calib)
    assert _max_diff(second.model, fresh.model) < 1e-5
    assert session.prune(0.0).model.graph.initializer == model.graph.initializer  # nothing to remove


def test_chita_plus_session_passes_through_expected_sparsities(mlp, tmp_path):
    model, calib, test = mlp
    config = ChitaPlusConfig(rows=300, stages=4)
    session = get_method("chita++").open(model, config, calib)
    session.expect([0.5, 0.8])
    high = session.prune(0.8)
    levels = [round(s["sparsity"], 4) for s in high.details["stages"]]
    assert levels == [0.3313, 0.5, 0.7009, 0.8]  # the waypoint replaces the schedule's 0.5528
    low = session.prune(0.5)
    assert low.details["stages"] == [] and abs(_sparsity(low.model) - 0.5) < 1e-3
    magnitude = prune_model("magnitude", model, make_config(get_method("magnitude"), sparsity=0.8))
    for name, result in (("chita", high.model), ("magnitude", magnitude.model)):
        save_model(result, tmp_path / f"{name}.onnx")
    accuracy = {n: evaluate(tmp_path / f"{n}.onnx", test).accuracy for n in ("chita", "magnitude")}
    assert accuracy["chita"] > accuracy["magnitude"] + 0.03
    # a later sparsity starts from the kept stage below it (0.5) and runs the rest of its own schedule
    # (0.5452, 0.65), dropping the sliver 0.5452 next to the start
    middle = session.prune(0.65)
    assert [round(s["sparsity"], 4) for s in middle.details["stages"]] == [0.65]
    assert abs(_sparsity(middle.model) - 0.65) < 1e-3


def test_stage_path_from_a_checkpoint_with_waypoints():
    levels = schedule("exp", 0.0, 0.9, 10)
    assert _path(levels, 0.0, 0.0, []) == levels
    path = _path(levels, 0.0, 0.0, [0.3, 0.5, 0.7])
    assert {0.3, 0.5, 0.7} <= set(path) and path[-1] == 0.9 and path == sorted(path)
    depth = -np.log1p(-np.array([0.0] + path))
    assert np.diff(depth).min() >= np.diff(-np.log1p(-np.array([0.0] + levels))).min() / 2 - 1e-9
    assert _path(levels, 0.0, 0.6, []) == [v for v in levels if v > 0.65]  # 0.6019 is a sliver after 0.6


def test_channel_session_matches_fresh_runs():
    model = canonicalize(load_model(MODELS / "cnn.onnx")).model
    session = get_method("l1-channel").open(model, ChannelConfig(round_to=4), None)
    for sparsity in (0.5, 0.25):
        again = prune_model("l1-channel", model, ChannelConfig(sparsity=sparsity, round_to=4)).model
        assert session.prune(sparsity).model.SerializeToString() == again.SerializeToString()


def test_budget_search_with_chita_plus_respects_the_budget(tmp_path, mlp):
    model, _, test = mlp
    data = tmp_path / "test.npz"
    np.savez(data, input=test.inputs["input"][:2000], labels=test.labels[:2000])
    out = tmp_path / "best.onnx"
    result = search_sparsity(MODELS / "mlp.onnx", out, "chita++", Budget(max_accuracy_drop=0.02), data=data,
                             calib=MODELS / "mlp_calib.npz", tolerance=0.05, rows=300, stages=3)
    measured = evaluate(out, data)
    assert result.dense_accuracy - measured.accuracy <= 0.02 and measured.accuracy == result.accuracy
    assert 0.6 < result.sparsity < 0.95
    assert abs(_sparsity(load_model(out)) - result.sparsity) < 1e-3
