"""Sweep reports and the accuracy-budget search, on real files measured by ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs import IR_VERSION
from onnxprune.workflows.budget import Budget, search_sparsity
from onnxprune.validate.bench import benchmark
from onnxprune.errors import ConfigError
from onnxprune.validate.evaluation import evaluate
from onnxprune.methods import get_method
from onnxprune.workflows.sweeps import pareto, sweep, task_chunks

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_sweep_report_matches_eval_and_bench(tmp_path):
    data = tmp_path / "test.npz"
    with np.load(MODELS / "mlp_test.npz") as full:
        np.savez(data, input=full["input"][:1000], labels=full["labels"][:1000])
    report = sweep(MODELS / "mlp.onnx", tmp_path / "out", data=data, methods=["magnitude", "l1-channel"],
                   sparsities=[0.3, 0.6], runs=50, batch=8)
    folder = tmp_path / "out"
    for name in ("report.json", "report.md", "quality_vs_sparsity.png", "pareto_latency.png", "pareto_size.png"):
        assert (folder / name).stat().st_size > 500, name
    stored = json.loads((folder / "report.json").read_text())
    assert len(stored["points"]) == 4 and all(p["error"] is None for p in stored["points"])
    assert stored["environment"]["provider"] == "cpu" and stored["environment"]["onnxruntime"]
    for point in stored["points"]:
        again = evaluate(point["model"], data, reference=MODELS / "mlp.onnx")
        assert point["accuracy"] == again.accuracy and point["agreement"] == again.agreement
    structured = next(p for p in report.points if p.method == "l1-channel" and p.sparsity == 0.6)
    assert structured.params < report.dense.params
    speed = benchmark(structured.model, batch=8, runs=50)
    assert 0.2 < speed.median_ms / structured.median_ms < 5.0
    assert "| magnitude | 0.30 |" in (folder / "report.md").read_text()


def test_sweep_options_reach_the_methods_that_take_them(tmp_path):
    data = tmp_path / "test.npz"
    with np.load(MODELS / "cnn_test.npz") as full:
        np.savez(data, input=full["input"][:200], labels=full["labels"][:200])
    report = sweep(MODELS / "cnn.onnx", tmp_path / "out", data=data, methods=["magnitude", "l1-channel"],
                   sparsities=[0.3], runs=50, options={"round_to": 8, "magnitude.allocation": "uniform"})
    assert report.options == {"magnitude": {"allocation": "uniform"}, "l1-channel": {"round_to": 8}}
    channels = [i.dims[0] for i in onnx.load(report.points[1].model).graph.initializer if len(i.dims) == 4]
    assert channels and all(c % 8 == 0 for c in channels)  # 0.3 of 32/64/128 without rounding: 22/45/90
    assert "options of l1-channel | `round_to=8`" in (tmp_path / "out" / "report.md").read_text()
    for bad, match in (({"sparsity": 0.5}, "--sparsities"), ({"stages": 10}, "no swept method"),
                       ({"chita.rows": 10}, "not a swept method"), ({"round_to": "x"}, "round_to")):
        with pytest.raises(ConfigError, match=match):
            sweep(MODELS / "cnn.onnx", tmp_path / "bad", data=data, methods=["magnitude", "l1-channel"],
                  options=bad)
    assert not (tmp_path / "bad").exists()


def test_pareto_front_keeps_only_undominated_points():
    assert pareto([(1.0, 90.0), (2.0, 95.0), (1.5, 80.0), (3.0, 94.0)]) == [(1.0, 90.0), (2.0, 95.0)]


def _half_tiny_linear(path: Path, tiny_fraction: float) -> tuple[Path, Path]:
    """x[N,32] @ W[32,10]: a known fraction of W is ~0, the rest ~N(0,1); labels = the dense predictions."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 10)).astype(np.float32)
    tiny = rng.permutation(weight.size)[: int(tiny_fraction * weight.size)]
    weight.ravel()[tiny] = 1e-7
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "lin",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION), path)
    x = rng.standard_normal((400, 32)).astype(np.float32)
    data = path.with_suffix(".npz")
    np.savez(data, x=x, labels=(x @ weight).argmax(1).astype(np.int64))
    return path, data


def test_budget_search_finds_the_known_answer(tmp_path):
    model, data = _half_tiny_linear(tmp_path / "lin.onnx", 0.6)
    out = tmp_path / "best.onnx"
    result = search_sparsity(model, out, "magnitude", Budget(max_accuracy_drop=0.01), data=data, tolerance=0.005)
    assert result.dense_accuracy == 1.0
    assert 0.6 <= result.sparsity < 0.75
    measured = evaluate(out, data)
    assert 1.0 - measured.accuracy <= 0.01 and measured.accuracy == result.accuracy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx", "lin.npz", "lin.onnx"]


@pytest.mark.parametrize("budget", [dict(max_accuracy_drop=-1.0), dict(max_accuracy_drop=1.0),
                                    dict(min_agreement=0.0), dict(min_agreement=1.01), dict(min_agreement=99.0), dict()])
def test_bad_budgets_are_refused(budget):
    with pytest.raises(ConfigError):
        Budget(**budget)


def test_a_sweep_on_ray_sets_each_method_up_no_more_often_than_the_cluster_has_slots():
    specs = {name: get_method(name) for name in ("sparsegpt", "wanda", "chita++", "l1-channel")}
    order = [0.9, 0.7, 0.5, 0.3]

    def shape(names, slots):
        return [(spec.name, points) for spec, _, points in task_chunks([(specs[n], {}) for n in names], order, slots)]

    assert shape(["sparsegpt"], 2) == [("sparsegpt", [0.9, 0.7]), ("sparsegpt", [0.5, 0.3])]
    assert shape(["sparsegpt", "wanda"], 2) == [("sparsegpt", order), ("wanda", order)]
    assert shape(["sparsegpt", "chita++"], 8) == [("sparsegpt", [0.9]), ("sparsegpt", [0.7]), ("sparsegpt", [0.5]),
                                                  ("sparsegpt", [0.3]), ("chita++", order)]  # one staged path
    assert len(shape(["sparsegpt", "wanda", "l1-channel"], 4)) == 6  # ⌈4 / 3⌉ = 2 chunks each
