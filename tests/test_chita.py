"""CHITA and CHITA++ end to end: real exported models, the real torch view, ONNX Runtime on the written files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import nets
from onnxprune.graph.canonical import canonicalize
from onnxprune.data import Dataset, load_data
from onnxprune.errors import ConfigError, DataError, ResourceError
from onnxprune.validate.evaluation import evaluate
from onnxprune.units import parse_bytes
from onnxprune.view.fisher import FlatLayout, choose_targets, gradient_matrix, plan_memory, resolve_rows
from onnxprune.graph.io import load_model
from onnxprune.methods import prune_model
from onnxprune.methods.unstructured.chita import ChitaConfig, ChitaPlusConfig, schedule, stage_rows
from onnxprune.pipeline import prune
from onnxprune.graph.prunable import read_weights, select_prunable
from onnxprune.view.torchview import build_torch_view
from onnxprune.graph.edit import replace_initializers
from onnxprune.graph.io import save_model

MODELS = Path(__file__).resolve().parent.parent / "models"
MLP, MLP_CALIB, MLP_TEST = MODELS / "mlp.onnx", MODELS / "mlp_calib.npz", MODELS / "mlp_test.npz"


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> tuple[Path, Dataset]:
    """A seeded ResNet-style net with BatchNorm exported by the legacy exporter, and labelled random data."""
    path = nets.export(nets.resnet(), tmp_path_factory.mktemp("resnet") / "resnet.onnx", opset=17, dynamo=False,
                       input_shape=(2, *nets.IMAGE))
    data = nets.random_data(onnx.load(str(path)), samples=48)
    data.labels = np.random.default_rng(0).integers(0, nets.CLASSES, len(data)).astype(np.int64)
    return path, data


@pytest.mark.parametrize("targets,per_row", [("labels", 1), ("labels", 3), ("logits", 2)])
def test_gradient_rows_equal_per_sample_autograd(resnet, targets, per_row):
    path, data = resnet
    model = canonicalize(load_model(path)).model
    names = [w.name for w in select_prunable(model)]
    weights = read_weights(model, names)
    view = build_torch_view(model, names)
    layout = FlatLayout({n: weights[n].shape for n in names}, {names[0]: 1})
    params = {view.param_paths[n]: torch.from_numpy(weights[n].copy()) for n in names}
    picked = choose_targets(view, params, data, targets, seed=0)
    at = gradient_matrix(view, layout, weights, data, picked, rows=5, samples_per_row=per_row)
    for row in (0, 4):
        x = torch.from_numpy(data.inputs["input"][row * per_row:(row + 1) * per_row])
        logits = view(x)[0]
        target = picked[row * per_row:(row + 1) * per_row]
        loss = ((target.reshape(logits.shape) * logits).sum() / per_row if targets == "logits"
                else torch.nn.functional.cross_entropy(logits, target.reshape(-1)))
        grads = torch.autograd.grad(loss, [view.params[n] for n in names])
        expected = layout.flatten({n: g.numpy() for n, g in zip(names, grads)})
        np.testing.assert_allclose(at[:, row].numpy(), expected, rtol=1e-4, atol=1e-6)
    # a column range across tensors, stored at some positions only, with the square sum over all of it
    start, stop = layout.slots[1].offset - 100, layout.slots[2].offset + 50
    index = torch.arange(0, stop - start, 7)
    square_sum = torch.zeros((), dtype=torch.float64)
    part = gradient_matrix(view, layout, weights, data, picked, rows=5, samples_per_row=per_row,
                           columns=(start, stop), index=index, square_sum=square_sum)
    torch.testing.assert_close(part, at[start:stop][index])
    assert float(square_sum) == pytest.approx(float(at[start:stop].double().pow(2).sum()), rel=1e-5)


def test_chita_beats_magnitude_on_the_bundled_mlp(tmp_path):
    test = load_data(MLP_TEST, load_model(MLP))
    outcomes = {}
    for method in ("magnitude", "chita"):
        out = tmp_path / f"{method}.onnx"
        options = {"engine": "model"} if method == "chita" else {}
        outcomes[method] = prune(MLP, out, method, calib=MLP_CALIB, sparsity=0.9, **options)
        outcomes[method].accuracy = evaluate(out, test).accuracy
    assert outcomes["chita"].accuracy > outcomes["magnitude"].accuracy + 0.10
    original, pruned = onnx.load(str(MLP)), onnx.load(str(tmp_path / "chita.onnx"))
    assert [i.name for i in pruned.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]
    assert pruned.graph.input[0].type == original.graph.input[0].type
    assert pruned.opset_import == original.opset_import
    weights = read_weights(pruned)
    total = sum(w.size for w in weights.values())
    assert sum(int(np.count_nonzero(w)) for w in weights.values()) <= int(0.1 * total)
    assert outcomes["chita"].details["gradients_s"] > 0 and outcomes["chita"].details["rows"] == 1000


def _groups_of_four(w: np.ndarray, trans_b: bool) -> np.ndarray:
    """Groups of 4 consecutive input weights of a Gemm weight ([out, in] with transB, else [in, out])."""
    return (w if trans_b else w.T).reshape(-1, 4)


def test_nm_pattern_holds_along_the_input_axis_and_beats_magnitude(tmp_path):
    out = tmp_path / "nm.onnx"
    prune(MLP, out, "chita", calib=MLP_CALIB, pattern="2:4", rows=500, engine="model")
    model = onnx.load(str(out))
    gemm = {n.input[1]: any(a.name == "transB" and a.i for a in n.attribute)
            for n in model.graph.node if n.op_type == "Gemm"}
    dense = read_weights(onnx.load(str(MLP)))
    by_magnitude = {}
    for name, w in read_weights(model).items():
        assert np.all(np.count_nonzero(_groups_of_four(w, gemm[name]), axis=1) <= 2), name
        groups = _groups_of_four(dense[name].copy(), gemm[name])
        np.put_along_axis(groups, np.argsort(np.abs(groups), axis=1)[:, :2], 0, axis=1)
        by_magnitude[name] = groups.reshape(dense[name].shape if gemm[name] else dense[name].T.shape)
        by_magnitude[name] = by_magnitude[name] if gemm[name] else by_magnitude[name].T
    save_model(replace_initializers(onnx.load(str(MLP)), by_magnitude), tmp_path / "nm_magnitude.onnx")
    test = load_data(MLP_TEST, model)
    assert evaluate(out, test).accuracy > evaluate(tmp_path / "nm_magnitude.onnx", test).accuracy + 0.05


def test_chita_plus_on_a_batchnorm_resnet_is_exact_and_deterministic(resnet, tmp_path):
    path, data = resnet
    model = canonicalize(load_model(path)).model
    config = ChitaPlusConfig(sparsity=0.7, stages=2, rows=40, allocation="uniform", block_size=64)
    first, second = (prune(path, tmp_path / f"r{i}.onnx", "chita++", calib=data, sparsity=0.7, stages=2, rows=40,
                           allocation="uniform", block_size=64) for i in range(2))
    a, b = read_weights(onnx.load(first.output)), read_weights(onnx.load(second.output))
    for w in select_prunable(model):
        assert np.array_equal(a[w.name], b[w.name])
        assert np.count_nonzero(a[w.name]) <= int(np.floor(0.3 * w.size))
    assert [round(s["sparsity"], 4) for s in first.details["stages"]] == [round(s, 4) for s in schedule(
        config.schedule, config.base_sparsity, config.sparsity, config.stages)]
    assert [s["rows"] for s in first.details["stages"]] == [20, 40]  # the first half of the way: early_rows


@pytest.mark.parametrize("early,base,expected", [(0.5, 0.0, [500] * 5 + [1000] * 5), (1.0, 0.0, [1000] * 10),
                                                 (0.25, 0.5, [250] * 5 + [1000] * 5)])
def test_early_stages_take_the_first_rows_up_to_half_the_way_in_log_density(early, base, expected):
    config = ChitaPlusConfig(sparsity=0.9, early_rows=early, base_sparsity=base)
    levels = schedule(config.schedule, base, 0.9, config.stages)
    assert [stage_rows(1000, config, level, base, 0.9) for level in levels] == expected
    assert stage_rows(1000, ChitaConfig(sparsity=0.9), 0.1, 0.0, 0.9) == 1000  # one-shot CHITA: all rows
    assert stage_rows(3, config, levels[0], base, 0.9) == max(1, round(3 * early))


def test_memory_budget_splits_the_gradient_matrix_into_passes():
    model = canonicalize(load_model(MLP)).model
    calib = load_data(MLP_CALIB, model)
    result = prune_model("chita", model, ChitaConfig(sparsity=0.8, rows=100, max_memory="4M", engine="model"), calib)
    stage = result.details["stages"][0]
    assert stage["passes"] > 1
    weights = read_weights(result.model)
    total = sum(w.size for w in weights.values())
    assert sum(int(np.count_nonzero(w)) for w in weights.values()) <= int(0.2 * total)


def test_memory_planner_and_sizes():
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("500M") == 500 << 20 and parse_bytes("1.5GiB") == 3 << 29
    assert plan_memory(1000, 300_000, 8 << 30).passes == 1
    split = plan_memory(1000, 300_000, 400 << 20)
    assert split.passes == 4 and split.columns_per_pass == 75_000  # the fewest passes, of equal width
    with pytest.raises(ResourceError, match="--max-memory"):
        plan_memory(1000, 300_000, 1 << 20)
    with pytest.raises(ConfigError, match="max_memory"):
        ChitaConfig(max_memory="lots")


def test_gradient_rows_use_all_calibration_samples_by_default():
    assert resolve_rows(0, 5000, 0, 1000) == (1000, 5)  # every sample lands in some row's mean
    assert resolve_rows(0, 700, 0, 1000) == (700, 1)
    assert resolve_rows(300, 1000, 0, 1000) == (300, 3)
    assert resolve_rows(0, 1000, 4, 1000) == (250, 4)
    with pytest.raises(DataError, match="at most 250"):
        resolve_rows(300, 1000, 4, 1000)


@pytest.mark.parametrize("options,error,match", [
    ({"sparsity": 1.0}, ConfigError, "sparsity"),
    ({"sparsity": -0.1}, ConfigError, "sparsity"),
    ({"rows": 5000, "engine": "model"}, DataError, "calibration samples"),
    ({"max_memory": "1M"}, ResourceError, "max-memory"),
    ({"pattern": "4:2"}, ConfigError, "pattern"),
])
def test_bad_options_fail_clearly_and_write_nothing(tmp_path, options, error, match):
    out = tmp_path / "out.onnx"
    with pytest.raises(error, match=match):
        prune(MLP, out, "chita", calib=MLP_CALIB, **options)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_calibration_data_that_does_not_match_fails_clearly(tmp_path):
    model = canonicalize(load_model(MLP)).model
    wrong_shape = Dataset({"input": np.zeros((10, 28, 28), np.float32)})
    wrong_name = Dataset({"pixels": np.zeros((10, 784), np.float32)})
    for data, match in ((wrong_shape, "shape"), (wrong_name, "pixels")):
        with pytest.raises(DataError, match=match):
            prune_model("chita", model, ChitaConfig(sparsity=0.5), data)
    with pytest.raises(DataError, match="calibration"):
        prune_model("chita", model, ChitaConfig(sparsity=0.5), None)
    with pytest.raises(DataError, match="labels"):
        prune_model("chita", model, ChitaConfig(sparsity=0.5, targets="labels", engine="model"),
                    Dataset({"input": np.zeros((10, 784), np.float32)}))
    bad_file, out = tmp_path / "calib.npz", tmp_path / "out.onnx"
    np.savez(bad_file, input=np.zeros((10, 28, 28), np.float32))
    with pytest.raises(DataError, match="shape"):
        prune(MLP, out, "chita", calib=bad_file, sparsity=0.5)
    assert not out.exists()
