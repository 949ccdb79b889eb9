"""What a user meets on the command line: --json, --debug and -v before or after any command (errors as JSON
under --json), and every flag of ``prune`` acting in every mode (one sparsity, budget, target) or refused
there with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from graphs import save, tiny_conv
from onnxprune.cli import cli

MODELS = Path(__file__).resolve().parents[1] / "models"
MLP = MODELS / "mlp.onnx"


def _cli(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """MLP calibration (64) and test (300) data, and a conv net with dynamic spatial dims and its data."""
    folder = tmp_path_factory.mktemp("cli")
    with np.load(MODELS / "mlp_calib.npz") as calib, np.load(MODELS / "mlp_test.npz") as test:
        np.savez(folder / "calib.npz", input=calib["input"][:64], labels=calib["labels"][:64])
        np.savez(folder / "test.npz", input=test["input"][:300], labels=test["labels"][:300])
        np.savez(folder / "unlabelled.npz", input=test["input"][:300])
    conv = tiny_conv()  # x[N,3,H,W] → two Convs → global average pool → scores[N,4]
    for axis in (2, 3):
        conv.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = "HW"[axis - 2]
    conv.graph.node.extend([helper.make_node("GlobalAveragePool", ["y"], ["pooled"]),
                            helper.make_node("Flatten", ["pooled"], ["scores"])])
    del conv.graph.output[:]
    conv.graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4]))
    save(conv, folder / "conv.onnx")
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(folder / "conv_data.npz", x=x)
    return {"calib": folder / "calib.npz", "test": folder / "test.npz", "unlabelled": folder / "unlabelled.npz",
            "conv": folder / "conv.onnx", "conv_data": folder / "conv_data.npz"}


COMMANDS = {
    "inspect": lambda f, t: ["inspect", MLP],
    "prune": lambda f, t: ["prune", MLP, "-o", t / "out.onnx", "-s", "0.3"],
    "eval": lambda f, t: ["eval", MLP, "--data", f["test"]],
    "bench": lambda f, t: ["bench", MLP, "--runs", "50", "--warmup", "1"],
    "sweep": lambda f, t: ["sweep", MLP, "-o", t / "sweep", "--data", f["test"], "--methods", "magnitude",
                           "--sparsities", "0.5", "--batch", "2"],
    "methods": lambda f, t: ["methods"],
    "calib": lambda f, t: ["calib", f["test"], "--model", MLP, "-o", t / "c.npz"],
}


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_json_works_before_and_after_every_command(command, position, files, tmp_path):
    args = COMMANDS[command](files, tmp_path)
    args = ["--json", *args] if position == "before" else [*args, "--json"]
    code, out, err = _cli(*args)
    assert code == 0, err
    assert isinstance(json.loads(out), dict)


@pytest.mark.parametrize("position", ["before", "after"])
def test_errors_are_json_under_json_and_tracebacks_come_with_debug(position, tmp_path):
    args = ["prune", tmp_path / "missing.onnx", "-o", tmp_path / "out.onnx"]
    code, out, err = _cli(*(["--json", *args] if position == "before" else [*args, "--json"]))
    error = json.loads(out)
    assert code == 2 and error["type"] == "ModelError" and "missing.onnx" in error["error"] and err == ""
    code, out, err = _cli(*(["--debug", *args] if position == "before" else [*args, "--debug"]))
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
    code, out, err = _cli(*args)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_without_labels_or_reference_says_what_it_measured(files):
    code, out, err = _cli("eval", MLP, "--data", files["unlabelled"])
    assert code == 0 and "no labels and no reference model" in out
    code, out, err = _cli("eval", MLP, "--data", files["unlabelled"], "--json")
    assert json.loads(out)["note"].startswith("the data has no labels and no reference")
    code, out, err = _cli("eval", MLP, "--data", files["test"], "--reference", MLP, "--json")
    assert json.loads(out)["note"] is None and json.loads(out)["agreement"] == 1.0


def test_methods_lists_every_option_once_with_its_meaning():
    code, out, err = _cli("methods", "--json")
    catalogue = json.loads(out)
    assert code == 0 and len(catalogue["methods"]) == 8
    names = [o["name"] for o in catalogue["options"]]
    assert len(names) == len(set(names)) and {"ridge", "rows", "samples", "sequential", "device"} <= set(names)
    code, text, err = _cli("methods")
    assert text.count("\n  ridge: ") == 1 and "damp -> ridge" in text


def _report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "r.json").read_text())


def _outcome(report: dict) -> dict:
    """The prune outcome of a report of any mode (a budget report holds it under 'outcome')."""
    return report.get("outcome") or report


# Each mode's way to run prune: one sparsity, a budget (its report wraps the outcome), a target.
MODES = {
    "plain": ["-s", "0.8"],
    "budget": ["--min-agreement", "40", "--data", "TEST"],
    "target": ["--target-macs", "0.5"],
}
# flag → (mode-independent arguments, the method it is given to, check of the report and the written file)
FLAGS = {
    "--compress": (["--compress"], "magnitude", lambda r, out: bool(_outcome(r)["compressed"])),
    "--onnxslim": (["--onnxslim"], "l1-channel",
                   lambda r, out: any("onnxslim" in c for c in _outcome(r)["canonical_changes"])),
    "--round-to": (["--round-to", "8"], "l1-channel",
                   lambda r, out: all(g["kept"] % 8 == 0 for g in _outcome(r)["details"]["groups"])),
    "--data": (["--data", "TEST"], "l1-channel", lambda r, out: _outcome(r)["quality"]["samples"] == 300),
    "--seed": (["--seed", "3", "--importance", "random"], "l1-channel",
               lambda r, out: _outcome(r)["config"]["seed"] == 3),
    "--rows": (["--rows", "500", "--calib", "CALIB"], "chita-channel",
               lambda r, out: _outcome(r)["config"]["rows"] == 500),
    "--recover-steps": (["--recover-steps", "20", "--calib", "CALIB"], "l1-channel",
                        lambda r, out: _outcome(r)["details"]["recovery"]["steps"] >= 1),
    "--quantize": (["--quantize", "int8", "--calib", "CALIB"], "l1-channel",
                   lambda r, out: _outcome(r)["details"]["quantization"]["kept"] == "int8"
                   and any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)),
    "--ray": (["--ray", "local", "--calib", "CALIB"], "sparsegpt",
              lambda r, out: "Ray cluster" in _outcome(r)["details"]["ray"]),
    "--skip-first": (["--skip-first"], "magnitude",
                     lambda r, out: np.count_nonzero(onnx.numpy_helper.to_array(
                         next(i for i in onnx.load(str(out)).graph.initializer if i.name == "fc1.weight"))) == 784 * 40),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("flag", list(FLAGS))
def test_every_flag_acts_in_every_mode_or_is_refused(flag, mode, files, tmp_path):
    arguments, method, acted = FLAGS[flag]
    if flag == "--ray":
        pytest.importorskip("ray")
    out = tmp_path / "out.onnx"
    if mode == "budget" and flag == "--data":
        arguments = []  # a budget search has --data already
    args = ["prune", MLP, "-o", out, "-m", method, "--report", tmp_path / "r.json", *MODES[mode], *arguments]
    args = [files["test"] if a == "TEST" else files["calib"] if a == "CALIB" else a for a in args]
    code, stdout, stderr = _cli(*args)
    if mode == "target" and method in ("magnitude", "sparsegpt"):  # a target sets channel widths: refused, in one line
        assert code == 2 and "use a channel method" in stderr and len(stderr.strip().splitlines()) == 1
        assert not out.exists()
        return
    assert code == 0, stderr
    assert acted(_report(tmp_path), out), f"{flag} did nothing in {mode} mode"


@pytest.mark.parametrize("args, message", [
    (["-m", "magnitude", "--rows", "10"], "has no option 'rows'"),
    (["-m", "l1-channel", "--pattern", "2:4"], "has no option 'pattern'"),
    (["-m", "l1-channel", "--skip-first"], "has no option 'skip_first'"),
    (["-m", "l1-channel", "--target-macs", "0.5", "--sparsity", "0.5"], "drop --sparsity"),
    (["-m", "magnitude", "--max-accuracy-drop", "1", "--sparsity", "0.5", "--data", "TEST"], "drop --sparsity"),
    (["-m", "magnitude", "--max-accuracy-drop", "1"], "needs evaluation data"),
    (["-m", "l1-channel", "--target-macs", "0.5", "--max-accuracy-drop", "1"], "needs evaluation data"),
    (["-m", "magnitude", "--max-accuracy-drop", "1", "--data", "UNLABELLED"], "needs labels"),
    (["-m", "magnitude", "--max-accuracy-drop", "1", "--min-agreement", "90", "--data", "TEST"], "exactly one budget"),
    (["-m", "l1-channel", "--target-table", "TEST"], "give one target"),
    (["-m", "l1-channel", "--target-macs", "0.5", "--target-table", "TEST"], "without --target-speedup"),
    (["-m", "chita", "--calib", "CALIB", "-O", "engine=layer", "--rows", "10"], "model engine"),
    (["-m", "magnitude", "--max-accuracy-drop", "150", "--data", "TEST"], "accuracy points, in [0, 100)"),
    (["-m", "magnitude", "--min-agreement", "0.99", "--data", "TEST"], "a percentage in (1, 100]"),
])
def test_flags_that_cannot_act_are_refused_in_one_line(args, message, files, tmp_path):
    out = tmp_path / "out.onnx"
    args = [files["test"] if a == "TEST" else files["calib"] if a == "CALIB" else
            files["unlabelled"] if a == "UNLABELLED" else a for a in args]
    code, stdout, stderr = _cli("prune", MLP, "-o", out, *args)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def test_input_shape_acts_in_every_mode(files, tmp_path):
    """A model with dynamic spatial dims: --input-shape gives the MACs in plain, budget and target modes."""
    for mode in (["-s", "0.5"], ["--min-agreement", "50", "--data", files["conv_data"]],
                 ["-m", "l1-channel", "--target-macs", "0.7"]):
        out = tmp_path / "out.onnx"
        out.unlink(missing_ok=True)
        code, stdout, stderr = _cli("prune", files["conv"], "-o", out, *mode, "--input-shape", "x=1,3,8,8",
                                    "--report", tmp_path / "r.json")
        assert code == 0, stderr
        after = _outcome(_report(tmp_path))["after"]
        assert after["macs"] is not None and after["macs"] > 0, mode
        (tmp_path / "r.json").unlink()


def test_a_target_that_breaks_the_budget_is_refused_and_one_that_keeps_it_is_written(files, tmp_path):
    out = tmp_path / "out.onnx"
    code, stdout, stderr = _cli("prune", MLP, "-o", out, "-m", "l1-channel", "--target-macs", "0.3",
                                "--max-accuracy-drop", "0.5", "--data", files["test"])
    assert code == 3 and "breaks the budget" in stderr and "nothing was written" in stderr and not out.exists()
    code, stdout, stderr = _cli("prune", MLP, "-o", out, "-m", "chita-channel", "--calib", files["calib"],
                                "--target-macs", "0.9", "--min-agreement", "80", "--data", files["test"], "--json")
    assert code == 0, stderr
    found = json.loads(stdout)["details"]["target"]
    assert found["budget"]["within"] and found["budget"]["agreement"] >= 0.8
    assert found["holdout"]["samples"] == 8 and 0.9 < found["holdout"]["cosine"] <= 1.0


def test_option_renames_are_one_warning_line(files, tmp_path):
    """The console script prints a renamed option's warning once, as one line."""
    done = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(MLP), "-o", str(tmp_path / "out.onnx"),
                           "-m", "sparsegpt", "--calib", str(files["calib"]), "-O", "damp=0.02"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "damp" in line]
    assert lines == ["warning: option 'damp' of sparsegpt is now called 'ridge'; the old name goes in the next release"]
