"""Layer-wise pruning from ONNX Runtime activations: Gram capture, layer solvers, methods end to end."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import graphs
from onnxprune.activations.gram import capture_grams
from onnxprune.activations.layers import layer_sources
from onnxprune.data import Dataset, load_data
from onnxprune.errors import ConfigError, ResourceError
from onnxprune.graph.canonical import canonicalize
from onnxprune.graph.edit import replace_initializers
from onnxprune.graph.io import save_model
from onnxprune.graph.io import load_model
from onnxprune.graph.prunable import read_weights
from onnxprune.methods import prune_model
from onnxprune.methods.unstructured.chita import ChitaConfig
from onnxprune.methods.solvers.layer_solver import (LayerProblem, LayerTarget, _solve_rows, layer_backsolve, pruned_count,
                                                    solve_chita, solve_obs, solve_wanda)
from onnxprune.methods.unstructured.sparsegpt import SparsegptConfig
from onnxprune.methods.unstructured.wanda import WandaConfig
from onnxprune.validate.evaluation import evaluate

MODELS = Path(__file__).resolve().parent.parent / "models"


def _objective(W: np.ndarray, W_bar: np.ndarray, H_l: np.ndarray) -> float:
    D = W - W_bar
    return float(np.sum((D @ H_l) * D))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("keep", [3, 5, 7])
def test_layer_solver_is_within_one_percent_of_the_best_support(seed, keep):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((40, 6)) * np.exp(rng.normal(0, 0.5, 6)) + 0.5 * rng.standard_normal((40, 1))
    H, W = X.T @ X, rng.standard_normal((2, 6))
    lam = 0.01 * np.mean(np.diag(H))
    H_l = H + lam * np.eye(6)
    W_t, H_t = torch.from_numpy(W), torch.from_numpy(H_l)
    best = min(_objective(layer_backsolve(W_t, H_t, torch.isin(torch.arange(12), torch.tensor(s)).reshape(2, 6)).numpy(),
                          W, H_l) for s in itertools.combinations(range(12), keep))
    got = solve_chita(LayerProblem(W, H, lam), LayerTarget(1 - keep / 12), swap_rounds=1)
    assert np.count_nonzero(got) == keep
    assert _objective(got, W, H_l) <= 1.01 * best


def _conv_model(x_shape: tuple[int, ...], dtype=np.float32) -> onnx.ModelProto:
    """x → Conv(6→4, 3x2 kernel, stride (2,1), dilation (2,1), asymmetric pads, 2 groups) → Relu →
    Flatten → Gemm(transB=0) → y; a Constant node holds the Gemm weight (as some exporters write it)."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    conv_w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 2)).astype(dtype), "conv.w")
    out_h, out_w = (x_shape[2] + 3 - 5) // 2 + 1, x_shape[3] + 1 - 1
    fc = numpy_helper.from_array((0.1 * rng.standard_normal((4 * out_h * out_w, 5))).astype(dtype), "fc.w")
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv", strides=[2, 1], dilations=[2, 1],
                              pads=[1, 0, 2, 1], group=2),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Constant", [], ["fc.w"], name="fc_const", value=fc),
             helper.make_node("Gemm", ["f", "fc.w"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", elem, ["N", *x_shape[1:]])],
                              [helper.make_tensor_value_info("y", elem, ["N", 5])], [conv_w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=graphs.IR_VERSION)


def test_batched_gram_equals_all_rows_at_once_and_conv_patches_match_a_direct_im2col():
    x = np.random.default_rng(1).standard_normal((10, 6, 9, 7)).astype(np.float32)
    model = canonicalize(_conv_model(x.shape)).model
    sources, skipped = layer_sources(model, ["conv.w", "fc.w"])
    assert not skipped
    seen = []
    grams = capture_grams(model, Dataset({"x": x}), sources, batch_size=3, on_batch=lambda b: seen.append(b))
    assert [len(b["x"]) for b in seen] == [3, 3, 3, 1]
    # direct im2col: every output position of every group, read from the padded input
    padded = np.pad(x, [(0, 0), (0, 0), (1, 2), (0, 1)]).astype(np.float64)
    rows = [[] for _ in range(2)]
    for n, i, j in itertools.product(range(10), range((9 + 3 - 5) // 2 + 1), range(7)):
        patch = padded[n, :, 2 * i:2 * i + 5:2, j:j + 2]
        for g in range(2):
            rows[g].append(patch[3 * g:3 * g + 3].reshape(-1))
    for g in range(2):
        X = np.array(rows[g])
        np.testing.assert_allclose(grams["conv.w"].H[g], X.T @ X, rtol=1e-9, atol=1e-9 * np.abs(X.T @ X).max())
        np.testing.assert_allclose(grams["conv.w"].mean[g], X.mean(0), atol=1e-9)
    # the Gemm's rows are the Flatten outputs; batches of 3 add up to the Gram of all 10 at once
    whole = capture_grams(model, Dataset({"x": x}), sources, batch_size=10)
    scale = np.abs(whole["fc.w"].H).max()
    assert np.abs(grams["fc.w"].H - whole["fc.w"].H).max() <= 1e-9 * scale
    assert grams["fc.w"].n_rows == 10 and grams["conv.w"].n_rows == 10 * 4 * 7


def test_grams_do_not_depend_on_how_samples_are_batched():
    """Batches of 8, 24 or all 40 samples give the same bits: Gram matrices are summed over chunks of 8 samples
    in order, thinned rows are drawn per chunk, and a depthwise Conv's positions per sample."""
    from onnxprune.activations.layers import ConvGeometry, depthwise_gram

    x = np.random.default_rng(3).standard_normal((40, 6, 9, 7)).astype(np.float32)
    model = canonicalize(_conv_model(x.shape)).model
    sources, _ = layer_sources(model, ["conv.w", "fc.w"])
    for max_rows in (None, 300):
        found = [capture_grams(model, Dataset({"x": x}), sources, batch_size=b, max_rows=max_rows) for b in (8, 24, 40)]
        for name in ("conv.w", "fc.w"):
            assert all(np.array_equal(f[name].H, found[0][name].H) and f[name].n_rows == found[0][name].n_rows
                       for f in found[1:]), (name, max_rows)
    geometry = ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "NOTSET", 6)
    whole = depthwise_gram(x, geometry)
    halves = [depthwise_gram(x[:20], geometry), depthwise_gram(x[20:], geometry)]
    assert whole[2] == halves[0][2] + halves[1][2]
    assert np.allclose(whole[0], halves[0][0] + halves[1][0], rtol=1e-12)


def test_a_batch_over_the_memory_budget_is_lowered_not_refused():
    """A budget that holds the Gram matrices but not a batch of 10 samples: the capture runs in smaller
    batches (same H), and refuses only when one sample does not fit."""
    x = np.random.default_rng(1).standard_normal((10, 6, 9, 7)).astype(np.float32)
    model = canonicalize(_conv_model(x.shape)).model
    sources, _ = layer_sources(model, ["conv.w", "fc.w"])
    whole = capture_grams(model, Dataset({"x": x}), sources, batch_size=10)
    gram = sum(g.nbytes for g in whole.values())
    seen = []
    tight = capture_grams(model, Dataset({"x": x}), sources, batch_size=10, max_memory=gram + 30_000,
                          on_batch=lambda b: seen.append(len(b["x"])))
    assert 1 <= max(seen) < 10 and sum(seen) == 10
    for name in whole:
        assert np.abs(tight[name].H - whole[name].H).max() <= 1e-9 * np.abs(whole[name].H).max()
    with pytest.raises(ResourceError, match="one batch of 1 samples"):
        capture_grams(model, Dataset({"x": x}), sources, batch_size=10, max_memory=gram + 100)


def test_nm_pattern_holds_for_every_solver():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 16))
    W, H = rng.standard_normal((5, 16)), X.T @ X
    for solver in (solve_chita, solve_obs, solve_wanda):
        got = solver(LayerProblem(W, H, 0.01 * np.mean(np.diag(H))), LayerTarget(0.5, (2, 4)))
        assert np.all(np.count_nonzero(got.reshape(5, 4, 4), axis=2) == 2), solver.__name__


def test_capture_never_changes_the_written_model():
    model = canonicalize(load_model(MODELS / "mlp.onnx")).model
    calib = load_data(MODELS / "mlp_calib.npz", model).take(200)
    result = prune_model("sparsegpt", model, SparsegptConfig(sparsity=0.5), calib)
    weights = read_weights(result.model)
    again = replace_initializers(model, weights)
    assert result.model.SerializeToString() == again.SerializeToString()
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]


def test_too_few_calibration_rows_warn_and_stay_finite(caplog):
    model = canonicalize(graphs.tiny_mlp()).model
    calib = Dataset({"x": np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)})
    with caplog.at_level(logging.WARNING):
        result = prune_model("chita", model, ChitaConfig(sparsity=0.5, engine="layer", allocation="uniform"), calib)
    assert "5 calibration rows for 16 inputs" in caplog.text
    assert all(np.isfinite(w).all() for w in read_weights(result.model).values())
    assert result.details["engine"] == "layer"


def test_sequential_captures_each_wave_from_the_partly_pruned_model():
    model = canonicalize(graphs.tiny_mlp()).model
    calib = Dataset({"x": graphs.mlp_data(count=64)["x"]})
    at_once = prune_model("sparsegpt", model, SparsegptConfig(sparsity=0.5), calib)
    waves = prune_model("sparsegpt", model, SparsegptConfig(sparsity=0.5, sequential="on"), calib)
    assert (at_once.details["passes"], waves.details["passes"]) == (1, 2)
    first, second = read_weights(at_once.model), read_weights(waves.model)
    np.testing.assert_array_equal(first["fc1.weight"], second["fc1.weight"])  # wave 0 sees the dense model
    assert not np.array_equal(first["fc2.weight"], second["fc2.weight"])  # wave 1 sees pruned fc1 outputs


def test_a_memory_budget_too_small_is_refused_before_running(monkeypatch):
    model = canonicalize(load_model(MODELS / "cnn.onnx")).model
    calib = load_data(MODELS / "cnn_calib.npz", model).take(8)
    monkeypatch.setattr("onnxprune.activations.gram.Capture", None)  # a run would fail differently
    with pytest.raises(ResourceError, match=r"Gram matrices .*--max-memory is 1\.0 MB"):
        prune_model("sparsegpt", model, SparsegptConfig(max_memory="1M"), calib)


def test_bad_options_are_config_errors():
    for build in (lambda: SparsegptConfig(ridge=0), lambda: WandaConfig(scope="col"),
                  lambda: SparsegptConfig(pattern="4:2"), lambda: ChitaConfig(engine="gpu"),
                  lambda: SparsegptConfig(batch_size=0)):
        with pytest.raises(ConfigError):
            build()


def test_fp16_model_is_pruned_in_float32_and_written_in_float16():
    x = np.random.default_rng(3).standard_normal((64, 6, 9, 7)).astype(np.float16)
    model = canonicalize(_conv_model(x.shape, np.float16)).model
    result = prune_model("sparsegpt", model, SparsegptConfig(sparsity=0.5), Dataset({"x": x}))
    weights = read_weights(result.model)
    assert all(w.dtype == np.float16 and np.isfinite(w).all() for w in weights.values())
    assert abs(1 - np.count_nonzero(weights["conv.w"]) / weights["conv.w"].size - 0.5) < 0.01


@pytest.fixture(scope="module")
def cnn_accuracy(tmp_path_factory):
    """ORT accuracy on 1000 test images of the CNN pruned by magnitude (0.7), and layer-wise at 0.5."""
    model = canonicalize(load_model(MODELS / "cnn.onnx")).model
    calib = load_data(MODELS / "cnn_calib.npz", model).take(64)
    test = load_data(MODELS / "cnn_test.npz", model).take(1000)
    folder = tmp_path_factory.mktemp("cnn")
    from onnxprune.methods.unstructured.magnitude import MagnitudeConfig

    results = {"magnitude": prune_model("magnitude", model, MagnitudeConfig(sparsity=0.7)),
               "chita": prune_model("chita", model, ChitaConfig(sparsity=0.5, engine="layer"), calib),
               "sparsegpt": prune_model("sparsegpt", model, SparsegptConfig(sparsity=0.5), calib),
               "sparsegpt 2:4": prune_model("sparsegpt", model, SparsegptConfig(pattern="2:4"), calib)}
    accuracy = {}
    for name, result in results.items():
        save_model(result.model, folder / f"{name}.onnx")
        accuracy[name] = evaluate(folder / f"{name}.onnx", test).accuracy
    return accuracy, results


@pytest.mark.parametrize("method", ["chita", "sparsegpt"])
def test_layerwise_at_half_beats_magnitude_at_seventy_percent_on_the_cnn(cnn_accuracy, method):
    accuracy, results = cnn_accuracy
    assert accuracy[method] >= 0.95 and accuracy[method] > accuracy["magnitude"] + 0.03, accuracy
    weights = read_weights(results[method].model)
    assert abs(1 - sum(np.count_nonzero(w) for w in weights.values()) / sum(w.size for w in weights.values())
               - 0.5) < 0.01


def test_nm_on_convolutions_runs_along_input_channels(cnn_accuracy):
    """2:4 keeps 2 of every 4 consecutive input channels at each kernel position (the hardware pattern);
    the 1-channel stem stays dense with the reason."""
    accuracy, results = cnn_accuracy
    result = results["sparsegpt 2:4"]
    assert accuracy["sparsegpt 2:4"] >= 0.95, accuracy
    assert "stem.0.weight" in result.details["dense_layers"]
    convs = [name for name, w in read_weights(result.model).items() if w.ndim == 4 and name != "stem.0.weight"]
    assert convs
    for name in convs:
        w = read_weights(result.model)[name]
        groups = np.moveaxis(w, 1, -1).reshape(-1, 4)
        assert np.all(np.count_nonzero(groups, axis=1) <= 2), name


def test_allocation_meets_the_budget_and_reads_the_error_curves_one_step_past_each_level():
    grid = np.round(np.arange(10) * 0.1, 2)
    sizes = np.array([100.0, 100.0, 100.0])
    slope = np.array([1.0, 0.2, 5.0])  # error per unit of sparsity, convex: slope · s²

    asked = []

    def errors(layer: int, level: int) -> float:
        asked.append((layer, level))
        return float(slope[layer] * grid[level] ** 2)

    from onnxprune.methods.unstructured.layerwise import allocate_sparsities

    chosen = allocate_sparsities(errors, grid, sizes, 0.5)
    assert float(sizes @ chosen) == pytest.approx(0.5 * sizes.sum())
    assert chosen[1] > chosen[0] > chosen[2] > 0  # the flattest curve is pruned most
    reached = np.ceil(chosen / 0.1 - 1e-9).astype(int)
    assert all(level <= reached[layer] + 1 for layer, level in asked)
    assert len(set(asked)) < 3 * len(grid)


def test_a_layer_met_again_after_its_problems_left_the_cache_has_the_rest_of_its_curve_solved_at_once():
    from types import SimpleNamespace

    from tqdm import tqdm

    from onnxprune.methods.unstructured.layerwise import ErrorCurves, ProblemCache

    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 24))
    problems = {name: [LayerProblem(rng.standard_normal((8, 24)), X.T @ X, 1.0)] for name in "abc"}
    cache = ProblemCache(capacity=10 ** 9)
    for name in "abc":
        cache.put(name, problems[name])
    one = sum(t.numel() * t.element_size() for t in (problems["a"][0].W_bar, problems["a"][0].H))
    cache.fit(one)  # room for one layer: the least recently used go first, the last one stays
    assert ["a" in cache, "b" in cache, "c" in cache] == [False, False, True] and cache.held_bytes == one
    targets = [LayerTarget(float(s)) for s in (0.0, 0.2, 0.4, 0.6, 0.8)]
    curves = {}
    for cached in (True, False):
        curve = ErrorCurves([SimpleNamespace(name=n) for n in "ab"], solve_obs, lambda n: problems[n], targets,
                            tqdm(disable=True), cached=lambda n: cached)
        first = curve(0, 1), curve(1, 1), curve(0, 2)
        curves[cached] = (first, sorted(curve.known))
    assert curves[True][0] == curves[False][0]  # the same numbers either way
    assert curves[True][1] == [(0, 0.2), (0, 0.4), (1, 0.2)]
    assert curves[False][1] == [(0, 0.2), (0, 0.4), (0, 0.6), (0, 0.8), (1, 0.2)]  # a's rest solved at once


@pytest.mark.parametrize("supports", ["2:4", "unequal", "2:4 low-rank", "unequal low-rank"])
def test_swap_changes_are_the_exact_change_of_a_solve_on_the_swapped_support(supports):
    from onnxprune.methods.solvers.layer_solver import LowRankGram, _pairs, _solve_rows, gram_factor

    gen = torch.Generator().manual_seed(4)
    d, rows = 24, 6
    n = 5 if "low-rank" in supports else 200  # 5 rows: H of rank 5, solved through its factor
    X = torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.randn(d, d, generator=gen, dtype=torch.float64)
    H = X.T @ X / n + 0.01 * torch.eye(d, dtype=torch.float64)
    low = LowRankGram(gram_factor(X.T @ X / n, n), 0.01) if n < d else None
    W_bar = torch.randn(rows, d, generator=gen, dtype=torch.float64)
    mask = torch.zeros(rows, d, dtype=torch.bool)
    for i in range(rows):  # 2:4 along each row, or 6 to 16 weights kept per row (one padded batch)
        if supports.startswith("2:4"):
            for g in range(d // 4):
                mask[i, 4 * g + torch.randperm(4, generator=gen)[:2]] = True
        else:
            mask[i, torch.randperm(d, generator=gen)[:6 + 2 * i]] = True
    group = torch.arange(d) // 4 if supports.startswith("2:4") else None
    solved = _solve_rows(W_bar, H, mask, choose=lambda drop, add: _pairs(drop, add, group, 6), low_rank=low)
    checked = 0
    for i, row in enumerate(solved):
        for out, into, change in row.swaps:
            trial = mask[i:i + 1].clone()
            trial[0, out], trial[0, into] = False, True
            exact = _solve_rows(W_bar[i:i + 1], H, trial, stats=False)[0].value - row.value  # full route
            assert change == pytest.approx(exact, rel=1e-3, abs=1e-6 * row.value)
            checked += 1
    assert checked >= rows * 4


def test_few_calibration_rows_solve_through_the_factor_of_h_with_the_full_solves_results():
    from onnxprune.methods.solvers.layer_solver import _solve_rows

    rng = np.random.default_rng(3)
    d, n = 96, 20  # 20 rows for 96 inputs: H has rank 20, below a quarter of 96
    X = rng.standard_normal((n, d)) * np.exp(rng.normal(0, 1, d))
    H, W = X.T @ X, rng.standard_normal((16, d))
    lam = 0.01 * np.mean(np.diag(H))
    low_rank, full = LayerProblem(W, H, lam, rows=n), LayerProblem(W, H, lam)
    assert low_rank.low_rank is not None and low_rank.low_rank.X.shape == (n + 8, d)
    assert full.low_rank is None and LayerProblem(W, H, lam, rows=d // 4 + 1).low_rank is None
    mask = torch.from_numpy(rng.random((16, d)) < 0.4)
    for a, b in zip(_solve_rows(full.W_bar, full.H_l, mask),
                    _solve_rows(low_rank.W_bar, low_rank.H_l, mask, low_rank=low_rank.low_rank)):
        assert torch.allclose(a.w, b.w, rtol=0, atol=1e-9 * float(a.w.abs().max()))
        assert b.value == pytest.approx(a.value, rel=1e-9)
        assert torch.allclose(b.drop[torch.isfinite(a.drop)], a.drop[torch.isfinite(a.drop)], rtol=1e-4)
        assert torch.allclose(b.add[torch.isfinite(a.add)], a.add[torch.isfinite(a.add)], rtol=1e-3, atol=1e-6 * a.value)
    for target in (LayerTarget(0.5), LayerTarget(0.5, None, "row")):
        np.testing.assert_allclose(solve_chita(low_rank, target), solve_chita(full, target), rtol=0, atol=1e-8)


def test_default_swap_rounds_depend_on_the_budget_and_empty_targets_prune_nothing():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((200, 16))
    problem = LayerProblem(rng.standard_normal((6, 16)), X.T @ X, 0.01 * np.mean(np.sum(X * X, 0)))
    for target, rounds in ((LayerTarget(0.5), 0), (LayerTarget(0.5, (2, 4)), 1), (LayerTarget(0.5, None, "row"), 1)):
        np.testing.assert_array_equal(solve_chita(problem, target), solve_chita(problem, target, swap_rounds=rounds))
    assert not LayerTarget(0.0).prunes_any(6, 16) and not LayerTarget(0.1, None, "row").prunes_any(6, 9)
    assert LayerTarget(0.02).prunes_any(6, 16) and LayerTarget(0.0, (2, 4)).prunes_any(6, 16)


def test_depthwise_gram_equals_im2col_and_thins_long_rows():
    from onnxprune.activations.layers import DEPTHWISE_ROWS, ConvGeometry, conv_rows, depthwise_gram

    rng = np.random.default_rng(5)
    for geometry, shape in ((ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "NOTSET", 12), (3, 12, 10, 14)),
                            (ConvGeometry((5, 5), (2, 1), (1, 2), (0, 0, 0, 0), "SAME_UPPER", 6), (2, 6, 15, 17)),
                            (ConvGeometry((3,), (1,), (1,), (1, 1), "NOTSET", 4), (2, 4, 40))):
        x = rng.standard_normal(shape).astype(np.float32)
        rows = conv_rows(x, geometry).astype(np.float64)
        H, sums, count = depthwise_gram(x, geometry, samples=len(x))
        assert count == rows.shape[1] <= DEPTHWISE_ROWS
        assert np.abs(H - np.einsum("gri,grj->gij", rows, rows)).max() <= 1e-12 * np.abs(H).max()
        assert np.allclose(sums, rows.sum(1))
    # a long input: every s-th position of the widest axis, about DEPTHWISE_ROWS rows, the same second moments
    geometry = ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "NOTSET", 4)
    x = rng.standard_normal((16, 4, 24, 160)).astype(np.float32)
    H, _, count = depthwise_gram(x, geometry, samples=16)
    rows = conv_rows(x, geometry).astype(np.float64)
    full = np.einsum("gri,grj->gij", rows, rows) / rows.shape[1]
    assert DEPTHWISE_ROWS // 2 <= count <= 1.1 * DEPTHWISE_ROWS < rows.shape[1]
    assert np.abs(H / count - full).max() < 0.1 * np.abs(full).max()
    # a batch of many 1×1 maps: the widest axis has one position, so every row is kept (none would be empty)
    x = rng.standard_normal((9000, 4, 1, 1)).astype(np.float32)
    H, sums, count = depthwise_gram(x, geometry)
    assert count == 9000 and np.allclose(H[:, 4, 4], (x[:, :, 0, 0].astype(np.float64) ** 2).sum(0))


def _column_by_column_obs(W: np.ndarray, U: np.ndarray, target: LayerTarget, block: int = 128) -> np.ndarray:
    """The OBS sweep as written in SparseGPT, one column at a time with every update applied at once: masks
    chosen from the updated weights at each block's start (N:M: at each group's)."""
    W = W.copy()
    rows, cols = W.shape
    mask = np.zeros_like(W, dtype=bool)
    for j in range(cols):
        if target.nm is None and j % block == 0:
            stop = min(j + block, cols)
            scores = W[:, j:stop] ** 2 / np.diag(U)[j:stop] ** 2
            if target.scope == "row":
                count = pruned_count(target.sparsity, stop) - pruned_count(target.sparsity, j)
                order = np.argsort(scores, axis=1, kind="stable")[:, :count]
                np.put_along_axis(mask[:, j:stop], order, True, axis=1)
            else:
                count = pruned_count(target.sparsity, rows * stop) - pruned_count(target.sparsity, rows * j)
                flat = np.zeros(scores.size, dtype=bool)
                flat[np.argsort(scores, axis=None, kind="stable")[:count]] = True
                mask[:, j:stop] = flat.reshape(scores.shape)
        if target.nm is not None and j % target.nm[1] == 0:
            n, m = target.nm
            order = np.argsort(W[:, j:j + m] ** 2 / np.diag(U)[j:j + m] ** 2, axis=1, kind="stable")[:, :m - n]
            np.put_along_axis(mask[:, j:j + m], order, True, axis=1)
        error = np.where(mask[:, j], W[:, j] / U[j, j], 0.0)
        W[:, j:] -= np.outer(error, U[j, j:])
        W[:, j] = np.where(mask[:, j], 0.0, W[:, j])
    return W


@pytest.mark.parametrize("target", [LayerTarget(0.5), LayerTarget(0.2), LayerTarget(0.7, None, "row"),
                                    LayerTarget(0.5, (2, 4)), LayerTarget(0.25, (6, 8))])
def test_obs_sweep_equals_the_column_by_column_sweep(target):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((120, 296)) * rng.uniform(0.2, 2.0, 296)
    W, H = rng.standard_normal((9, 296)), X.T @ X
    problem = LayerProblem(W, H, 0.01 * np.mean(np.diag(H)))
    got = solve_obs(problem, target)
    expected = _column_by_column_obs(W, problem.obs_factor.numpy(), target)
    assert np.array_equal(got == 0, expected == 0)
    assert np.abs(got - expected).max() <= 1e-10 * np.abs(expected).max()


def test_rows_pruning_fewer_than_they_keep_are_solved_from_the_pruned_side_to_the_same_weights():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 40)) * rng.uniform(0.3, 2.0, 40)
    H_l = torch.from_numpy(X.T @ X + 0.5 * np.eye(40))
    W = torch.from_numpy(rng.standard_normal((6, 40)))
    mask = torch.from_numpy(rng.random((6, 40)) >= np.linspace(0.1, 0.4, 6)[:, None])  # 10-40 % pruned per row
    expected = layer_backsolve(W, H_l, mask)
    rows = _solve_rows(W, H_l, mask, stats=False)
    got = torch.stack([r.w for r in rows])
    assert torch.equal(got == 0, ~mask)
    assert float((got - expected).abs().max()) <= 1e-10 * float(expected.abs().max())
    values = [_objective(r.w.numpy(), W[i].numpy(), H_l.numpy()) for i, r in enumerate(rows)]
    assert np.allclose([r.value for r in rows], values, rtol=1e-10)


@pytest.mark.parametrize("d", [64, 1100])  # eigvalsh below _LANCZOS_FROM, Lanczos above
def test_iht_curvature_has_the_largest_eigenvalue_of_the_scaled_hessian(d):
    from onnxprune.methods.solvers.layer_solver import _LANCZOS_FROM, _scaled_curvature

    rng = np.random.default_rng(d)
    X = rng.standard_normal((d + 50, d)) * rng.uniform(0.2, 3.0, d)
    problem = LayerProblem(rng.standard_normal((4, d)), X.T @ X, 0.3)
    scale = np.sqrt(np.diag(X.T @ X) + 0.3)
    expected = np.linalg.eigvalsh((X.T @ X + 0.3 * np.eye(d)) / np.outer(scale, scale))[-1]
    assert (d > _LANCZOS_FROM) == (d == 1100)
    assert _scaled_curvature(problem).L == pytest.approx(expected, rel=1e-6)
