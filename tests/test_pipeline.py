"""The prune pipeline and the CLI end to end: real files, real ORT sessions, real numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from graphs import save, tiny_conv, tiny_mlp
from onnxprune.cli import cli
from onnxprune.pipeline import prune
from onnxprune.graph.prunable import read_weights
from onnxprune.runtime.sessions import make_session

MODELS = Path(__file__).resolve().parent.parent / "models"


def _invoke(*args: str) -> tuple[int, dict | str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exit_code == 0 and "--json" in args:
        return 0, json.loads(result.stdout)
    return result.exit_code, result.output


def _run(path, x):
    return make_session(str(path), device="cpu").run(None, {"x": x})[0]


def test_magnitude_global_threshold_is_shared_across_tensors(tmp_path):
    source = save(tiny_mlp(), tmp_path / "in.onnx")
    outcome = prune(source, tmp_path / "out.onnx", "magnitude", sparsity=0.6)
    before, after = read_weights(onnx.load(str(source))), read_weights(onnx.load(str(tmp_path / "out.onnx")))
    kept = np.concatenate([np.abs(after[n][after[n] != 0]) for n in after])
    dropped = np.concatenate([np.abs(before[n][after[n] == 0]) for n in after])
    assert kept.min() >= dropped.max()
    total = sum(w.size for w in before.values())
    assert outcome.after.prunable_nonzero == int(np.floor(0.4 * total))


def test_uniform_allocation_prunes_each_tensor_alike(tmp_path):
    source = save(tiny_mlp(), tmp_path / "in.onnx")
    outcome = prune(source, tmp_path / "out.onnx", "magnitude", sparsity=0.75, allocation="uniform")
    assert [round(t.sparsity, 4) for t in outcome.after.tensors] == [0.75, 0.75]


def test_sparsity_zero_reproduces_outputs_and_is_deterministic(tmp_path):
    source = save(tiny_conv(), tmp_path / "in.onnx")
    prune(source, tmp_path / "a.onnx", "magnitude", sparsity=0.0)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    a = make_session(str(tmp_path / "a.onnx"), device="cpu").run(None, {"x": x})[0]
    b = make_session(str(source), device="cpu").run(None, {"x": x})[0]
    assert np.max(np.abs(a - b)) <= 1e-6
    prune(source, tmp_path / "b.onnx", "magnitude", sparsity=0.5)
    prune(source, tmp_path / "c.onnx", "magnitude", sparsity=0.5)
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()


def test_cli_on_bundled_mlp(tmp_path):
    dense, test = MODELS / "mlp.onnx", MODELS / "mlp_test.npz"
    out, report = tmp_path / "mlp50.onnx", tmp_path / "r.json"
    code, pruned = _invoke("prune", str(dense), "-o", str(out), "-s", "0.5", "--report", str(report), "--json")
    assert code == 0, pruned
    assert abs(pruned["after"]["sparsity"] - 0.5) < 1e-3
    assert json.loads(report.read_text())["after"]["prunable_nonzero"] == pruned["after"]["prunable_nonzero"]
    written, original = onnx.load(str(out)), onnx.load(str(dense))
    assert [i.name for i in written.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in written.graph.output] == [o.name for o in original.graph.output]
    assert written.opset_import == original.opset_import
    code, base = _invoke("eval", str(dense), "--data", str(test), "--json")
    code, ours = _invoke("eval", str(out), "--data", str(test), "--reference", str(dense), "--json")
    assert code == 0 and base["samples"] == 10000
    assert base["accuracy"] > 0.90
    assert ours["accuracy"] > base["accuracy"] - 0.03
    assert ours["agreement"] > 0.90 and ours["max_abs_diff"] > 0.0
    code, speed = _invoke("bench", str(out), "--vs", str(dense), "--batch", "8", "--runs", "50", "--json")
    assert code == 0 and speed["provider"] == "cpu" and speed["runs"] == 50
    assert speed["median_ms"] > 0 and speed["p90_ms"] >= speed["median_ms"] and speed["ratio"] > 0
    code, info = _invoke("inspect", str(dense), "--json")
    assert code == 0 and info["opset"] == 17 and info["stats"]["params"] == 784 * 40 + 40 + 40 * 20 + 20 + 20 * 10 + 10
    assert [t["shape"] for t in info["stats"]["tensors"]] == [[40, 784], [20, 40], [10, 20]]


@pytest.mark.parametrize("args, words", [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--method", "nope"], "unknown method"),
    (["-O", "colour=blue"], "no option 'colour'"),
    (["--calib", "WRONG"], "dtype float64"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, args, words):
    source = save(tiny_mlp(), tmp_path / "in.onnx")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 8)))
    args = [str(wrong) if a == "WRONG" else a for a in args]
    code, output = _invoke("prune", str(source), "-o", str(tmp_path / "out.onnx"), *args)
    assert code == 2
    assert output.startswith("error: ") and words in output and output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.onnx", "wrong.npz"])


def test_console_script_refuses_in_place_output(tmp_path):
    source = save(tiny_mlp(), tmp_path / "in.onnx")
    before = source.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(source), "-o", str(source)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert source.read_bytes() == before


def test_demo_runs_every_method_on_the_bundled_cnn(tmp_path):
    code, result = _invoke("demo", "--out", str(tmp_path), "--json")
    assert code == 0, result
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "magnitude", "chita", "chita++", "sparsegpt", "wanda", "l1-channel", "intrafusion",
                         "chita-channel"}
    assert rows["dense"]["accuracy"] > 0.97
    assert rows["chita"]["accuracy"] > rows["magnitude"]["accuracy"] > 0.80  # unstructured at 0.7
    assert rows["intrafusion"]["accuracy"] > rows["l1-channel"]["accuracy"] + 0.20  # structured at 0.3
    assert rows["chita-channel"]["accuracy"] > 0.97  # structured at 0.3, refitted on the calibration data
    assert rows["l1-channel"]["params"] < 0.6 * rows["dense"]["params"]
    assert len(list(tmp_path.glob("*.onnx"))) == 8


def test_public_names_are_not_shadowed_by_submodules():
    import importlib
    import pkgutil
    import types

    import onnxprune

    for info in pkgutil.walk_packages(onnxprune.__path__, "onnxprune."):
        importlib.import_module(info.name)
    shadowed = [n for n in onnxprune.__all__ if isinstance(getattr(onnxprune, n), types.ModuleType)]
    assert shadowed == []
