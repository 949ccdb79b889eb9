"""Recovery by distillation: it brings a pruned model back towards the dense one on data it held out, never
returns a worse model, keeps an unstructured model's zeros, writes weights that ONNX Runtime runs as the torch
view does, and repeats itself for the same seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli import cli
from onnxprune.data import load_data
from onnxprune.errors import ConfigError
from onnxprune.graph.prunable import read_weights
from onnxprune.pipeline import prune
from onnxprune.runtime.feeds import run_batched
from onnxprune.runtime.sessions import make_session
from onnxprune.view.distill import Recovery
from onnxprune.view.torchview import build_torch_view, run_view

MODELS = Path(__file__).resolve().parents[1] / "models"
MLP = MODELS / "mlp.onnx"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recovery")
    with np.load(MODELS / "mlp_calib.npz") as calib, np.load(MODELS / "mlp_test.npz") as test:
        np.savez(folder / "calib.npz", input=calib["input"][:256])
        np.savez(folder / "test.npz", input=test["input"][:2000], labels=test["labels"][:2000])
    return {"calib": folder / "calib.npz", "test": folder / "test.npz"}


def test_recovery_brings_a_data_free_channel_prune_back_on_held_out_data(data, tmp_path):
    options = dict(method="l1-channel", sparsity=0.5, reconstruct="off", calib=data["calib"])
    before = prune(MLP, tmp_path / "before.onnx", data=data["test"], **options)
    after = prune(MLP, tmp_path / "after.onnx", data=data["test"], recover=Recovery(steps=600, lr=1e-3), **options)
    found = after.details["recovery"]
    assert found["holdout_samples"] == 32 and found["error_after"] < 0.8 * found["error_before"]
    assert after.sources["calibration"]["used"] == 224 and after.sources["calibration"]["held_out"] == 32
    assert after.quality.accuracy > before.quality.accuracy + 0.2  # 2,000 test images it never saw
    # the weights written give in ORT what the torch view gives
    written = onnx.load(str(tmp_path / "after.onnx"))
    test = load_data(data["test"], written).take(200)
    ours = run_batched(make_session(written, device="cpu"), test)[0]
    view = build_torch_view(written)
    assert np.linalg.norm(run_view(view, test)[0] - ours) <= 1e-4 * np.linalg.norm(ours)


def test_recovery_never_returns_a_worse_model_and_repeats_itself(data, tmp_path):
    # nothing to recover at sparsity 0: the held-out error cannot fall, so the model comes back as it was
    plain = prune(MLP, tmp_path / "plain.onnx", "magnitude", sparsity=0.0, calib=data["calib"])
    kept = prune(MLP, tmp_path / "kept.onnx", "magnitude", sparsity=0.0, calib=data["calib"],
                 recover=Recovery(steps=60, lr=1e-2, check=20))
    assert kept.details["recovery"]["error_after"] == kept.details["recovery"]["error_before"] == 0.0
    assert (tmp_path / "kept.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()
    assert plain.after.params == kept.after.params
    runs = [prune(MLP, tmp_path / f"r{i}.onnx", "l1-channel", sparsity=0.5, reconstruct="off", calib=data["calib"],
                  recover=Recovery(steps=50, lr=1e-3, check=25)) for i in range(2)]
    assert (tmp_path / "r0.onnx").read_bytes() == (tmp_path / "r1.onnx").read_bytes()
    assert runs[0].details["recovery"]["measurements"] == runs[1].details["recovery"]["measurements"]


def test_recovery_keeps_the_zeros_of_an_unstructured_model(data, tmp_path):
    outcome = prune(MLP, tmp_path / "m.onnx", "magnitude", sparsity=0.8, calib=data["calib"],
                    recover=Recovery(steps=200, lr=1e-3))
    assert outcome.details["recovery"]["error_after"] < outcome.details["recovery"]["error_before"]
    pruned = prune(MLP, tmp_path / "p.onnx", "magnitude", sparsity=0.8)
    ours, theirs = read_weights(onnx.load(str(tmp_path / "m.onnx"))), read_weights(onnx.load(str(tmp_path / "p.onnx")))
    for name in theirs:
        assert np.array_equal(ours[name] == 0, theirs[name] == 0), name
    assert not all(np.array_equal(ours[n], theirs[n]) for n in theirs)
    assert outcome.after.sparsity == pruned.after.sparsity


@pytest.mark.parametrize("args, message", [
    (["--recover", "10"], "on calibration data: pass --calib"),
    (["--recover-lr", "0.01", "--calib", "CALIB"], "give it a budget"),
    (["--recover", "-1", "--calib", "CALIB"], "time budget in seconds, > 0"),
    (["--recover-steps", "0", "--calib", "CALIB"], "--recover-steps must be >= 1"),
])
def test_bad_recovery_settings_are_refused_in_one_line(args, message, data, tmp_path):
    args = [str(data["calib"]) if a == "CALIB" else a for a in args]
    result = CliRunner().invoke(cli, ["prune", str(MLP), "-o", str(tmp_path / "o.onnx"), "-m", "magnitude", *args])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
    with pytest.raises(ConfigError):
        Recovery()


def test_cli_prints_what_recovery_did(data, tmp_path):
    result = CliRunner().invoke(cli, ["prune", str(MLP), "-o", str(tmp_path / "o.onnx"), "-m", "l1-channel", "-s",
                                      "0.5", "-O", "reconstruct=off", "--calib", str(data["calib"]), "--recover-steps",
                                      "50", "--recover-lr", "0.001"])
    assert result.exit_code == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("recovery: 50 steps"))
    assert "held-out error" in line and "on 32 samples" in line


def test_padding_positions_do_not_count_in_the_loss_of_a_token_model():
    import torch

    from onnxprune.view.distill import _losses

    generator = torch.Generator().manual_seed(0)
    target = torch.randn(2, 5, 3, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    out = target.clone()
    out[0, 1] += 0.5
    out[0, 3:] += 100.0  # padding: any value
    out[1, 4] -= 100.0
    masked = float(_losses(["mse"], (out,), [target], [1.0], mask))
    assert masked == pytest.approx(3 * 0.25 / (7 * 3), rel=1e-6)
    assert float(_losses(["mse"], (out,), [target], [1.0], None)) > 1000 * masked


def test_sweep_recovers_and_quantizes_every_point_it_writes(data, tmp_path):
    common = ["sweep", str(MLP), "--data", str(data["test"]), "--methods", "l1-channel", "--sparsities", "0.5",
              "-O", "reconstruct=off", "--batch", "8", "--json"]
    plain = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "plain")])
    staged = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "staged"), "--calib", str(data["calib"]),
                                      "--recover-steps", "600", "--recover-lr", "0.001", "--quantize", "int8"])
    assert plain.exit_code == 0 and staged.exit_code == 0, staged.stderr
    before, after = json.loads(plain.stdout)["points"][0], json.loads(staged.stdout)["points"][0]
    assert before["stages"] is None and "recovery steps" in after["stages"] and "int8 kept" in after["stages"]
    assert after["accuracy"] > before["accuracy"] + 0.2  # 2,000 test images, recovered then made INT8
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(after["model"]).graph.node)
    assert "| stages |" in (tmp_path / "staged" / "report.md").read_text()
    refused = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "refused"), "--quantize", "auto"])
    assert refused.exit_code == 2 and "pass --calib" in json.loads(refused.stdout)["error"]
    assert not (tmp_path / "refused").exists()
