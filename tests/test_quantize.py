"""INT8 as a last stage: the quantized file passes the checker, runs and keeps the bundled CNN's accuracy,
'auto' keeps it only within the allowed loss, a target with INT8 is timed on the quantized shapes, and every
prune report says what the file buys in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli import cli
from onnxprune.pipeline import prune
from onnxprune.runtime.quantize import Quantization
from onnxprune.validate.evaluation import evaluate
from onnxprune.workflows.target import Target, prune_to_target

MODELS = Path(__file__).resolve().parents[1] / "models"
CNN = MODELS / "cnn.onnx"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("int8")
    with np.load(MODELS / "cnn_calib.npz") as calib, np.load(MODELS / "cnn_test.npz") as test:
        np.savez(folder / "calib.npz", input=calib["input"][:128], labels=calib["labels"][:128])
        np.savez(folder / "test.npz", input=test["input"][:2000], labels=test["labels"][:2000])
    return {"calib": folder / "calib.npz", "test": folder / "test.npz"}


def test_int8_after_pruning_passes_the_checker_runs_and_keeps_the_accuracy(data, tmp_path):
    common = dict(method="l1-channel", sparsity=0.3, round_to=8, reconstruct="off", calib=data["calib"], data=data["test"])
    fp32 = prune(CNN, tmp_path / "fp32.onnx", **common)
    int8 = prune(CNN, tmp_path / "int8.onnx", quantize=Quantization("int8"), **common)
    written = onnx.load(str(tmp_path / "int8.onnx"))
    onnx.checker.check_model(written, full_check=True)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in written.graph.node}
    assert abs(int8.quality.accuracy - fp32.quality.accuracy) <= 0.01
    assert evaluate(tmp_path / "int8.onnx", data["test"]).accuracy == int8.quality.accuracy
    found = int8.details["quantization"]
    assert found["kept"] == "int8" and [r["model"] for r in found["rows"]] == ["input fp32", "pruned fp32", "pruned int8"]
    assert found["rows"][2]["bytes"] < 0.5 * found["rows"][1]["bytes"]
    assert int8.after.file_bytes < 0.5 * fp32.after.file_bytes
    assert int8.speed["speedup"] > 0 and "note" not in int8.speed


def test_an_opset_11_model_is_converted_for_per_channel_weights(tmp_path):
    model = onnx.load(str(MODELS / "mlp.onnx"))  # Gemm and Relu: the same at opset 11
    model.opset_import[0].version = 11
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(old := tmp_path / "mlp11.onnx"))
    prune(old, tmp_path / "int8.onnx", method="magnitude", sparsity=0.0, calib=MODELS / "mlp_calib.npz",
          quantize=Quantization("int8", samples=64))
    written = onnx.load(str(tmp_path / "int8.onnx"))
    onnx.checker.check_model(written, full_check=True)
    assert [o.version for o in written.opset_import if o.domain in ("", "ai.onnx")] == [13]
    axes = [a.i for n in written.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes and evaluate(tmp_path / "int8.onnx", MODELS / "mlp_test.npz").accuracy > 0.9


def test_quantizer_advice_is_not_repeated_to_the_user(data, tmp_path, caplog):
    # the CNN's BatchNormalizations have rank-1 weights: ONNX Runtime notes each has no per-channel axis
    prune(CNN, tmp_path / "int8.onnx", "magnitude", sparsity=0.0, calib=data["calib"],
          quantize=Quantization("int8", samples=16))
    written = onnx.load(str(tmp_path / "int8.onnx"))
    assert {"BatchNormalization", "QuantizeLinear"} <= {n.op_type for n in written.graph.node}
    assert not [r.getMessage() for r in caplog.records if "out-of-range" in r.getMessage()
                or "pre-processing" in r.getMessage()]


def test_auto_keeps_int8_only_within_the_allowed_loss(tmp_path):
    # data-free l1-channel leaves the CNN near chance: its INT8 copy's top-1 answers differ on a few of 512 samples
    calib = tmp_path / "calib.npz"
    with np.load(MODELS / "cnn_calib.npz") as full:
        np.savez(calib, input=full["input"][:512], labels=full["labels"][:512])
    outcome = prune(CNN, tmp_path / "auto.onnx", "l1-channel", sparsity=0.3, round_to=8, reconstruct="off", calib=calib,
                    quantize=Quantization("auto", max_drop=0.0))
    found = outcome.details["quantization"]
    within = found["loss_to_float"] <= 0.0
    faster = found["rows"][2]["latency_ms"] < found["rows"][1]["latency_ms"]
    assert found["kept"] == ("int8" if within and faster else "fp32")
    assert f"{'within' if within else 'beyond'} the allowed loss" in found["reason"]
    quantized = "QuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "auto.onnx")).graph.node}
    assert quantized == (found["kept"] == "int8")


def test_unstructured_reports_say_ort_runs_them_at_dense_speed(tmp_path):
    outcome = prune(CNN, tmp_path / "m.onnx", "magnitude", sparsity=0.9, compress=True)
    assert "dense speed" in outcome.speed["note"] and outcome.speed["batch"] == 8
    assert 0.5 < outcome.speed["speedup"] < 2.0


def test_a_target_with_int8_is_timed_on_the_quantized_shapes(data, tmp_path):
    outcome = prune_to_target(CNN, tmp_path / "t.onnx", "l1-channel", Target(speedup=2.0), calib=data["calib"],
                              round_to=8, quantize=Quantization("int8"))
    found = outcome.details["target"]
    assert outcome.details["quantization"]["kept"] == "int8"
    assert found["achieved"] >= 2.0 * 0.85  # the pruned INT8 file against the float input, as measured
    assert outcome.speed["speedup"] >= 2.0 * 0.7  # a second measurement of the written file (noisy machines)


@pytest.mark.parametrize("args, message", [
    (["--quantize", "int8"], "calibrates activation ranges on data: pass --calib"),
    (["--quantize-calibration", "entropy", "--calib", "CALIB"], "add --quantize int8|auto"),
    (["--quantize", "int8", "--quantize-exclude", "Nope", "--calib", "CALIB"], "neither an op type nor a node name"),
])
def test_bad_quantization_settings_are_refused_in_one_line(args, message, data, tmp_path):
    args = [str(data["calib"]) if a == "CALIB" else a for a in args]
    result = CliRunner().invoke(cli, ["prune", str(CNN), "-o", str(tmp_path / "o.onnx"), "-m", "magnitude", *args])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
