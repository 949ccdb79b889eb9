"""The path matrix: every registered method (CHITA and CHITA++ with each engine) through every path of the
tool — prune, prune --compress, prune --json, sweep, the budget search (--max-accuracy-drop and
--min-agreement), --target-macs and the Python API — on the bundled MLP, and prune on a transformer-shaped
test net. Each cell ends in a written file that passes onnx.checker, runs in ONNX Runtime with the input
model's output shapes and has the sparsity asked, or in a named refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import nets
import onnxprune
from onnxprune.cli import cli
from onnxprune.methods import METHODS
from onnxprune.methods.structured.session import kept_channels
from onnxprune.runtime.feeds import run_batched
from onnxprune.runtime.sessions import make_session
from onnxprune.data import Dataset

MODELS = Path(__file__).resolve().parents[1] / "models"
MLP = MODELS / "mlp.onnx"
# options that keep each variant quick on small models (few gradient rows, two CHITA++ stages, no swap rounds
# after the layer engine's IHT: the swap search is tested against enumerated optima in test_layerwise.py)
VARIANTS = {
    "magnitude": ("magnitude", {}),
    "chita": ("chita", {"swap_rounds": 0}),
    "chita/model": ("chita", {"engine": "model", "rows": 32}),
    "chita/layer": ("chita", {"engine": "layer", "swap_rounds": 0}),
    "chita++": ("chita++", {"rows": 32, "stages": 2}),
    "chita++/model": ("chita++", {"engine": "model", "rows": 32, "stages": 2}),
    "chita++/layer": ("chita++", {"engine": "layer", "swap_rounds": 0}),
    "sparsegpt": ("sparsegpt", {}),
    "wanda": ("wanda", {}),
    "l1-channel": ("l1-channel", {}),
    "intrafusion": ("intrafusion", {}),
    "chita-channel": ("chita-channel", {"swaps": 2}),
}
PATHS = ("prune", "prune --compress --json", "sweep", "budget --max-accuracy-drop", "budget --min-agreement",
         "target --target-macs", "api")


def test_the_matrix_covers_every_registered_method():
    assert {method for method, _ in VARIANTS.values()} == set(METHODS)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """64 calibration and 300 test images of the bundled MLP, with labels."""
    folder = tmp_path_factory.mktemp("data")
    with np.load(MODELS / "mlp_calib.npz") as calib, np.load(MODELS / "mlp_test.npz") as test:
        np.savez(folder / "calib.npz", input=calib["input"][:64], labels=calib["labels"][:64])
        np.savez(folder / "test.npz", input=test["input"][:300], labels=test["labels"][:300])
    return {"calib": folder / "calib.npz", "test": folder / "test.npz"}


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout if "--json" in args else result.output


def _flags(options: dict) -> list[str]:
    return [item for key, value in options.items() for item in ("-O", f"{key}={value}")]


def _prunable_sparsity(path: Path) -> float:
    """The zero fraction of the prunable weights, dense or sparse initializers alike."""
    return onnxprune.model_stats(onnx.load(str(path)), path).sparsity


def _check_written(path: Path, source: Path, sample: Dataset) -> None:
    """The file passes onnx.checker (by path; with strict shape inference unless it holds sparse initializers,
    which onnx's strict inference does not type as tensors) and runs in ORT with the input model's output
    shapes."""
    onnx.checker.check_model(str(path), full_check=not onnx.load(str(path)).graph.sparse_initializer)
    ours = run_batched(make_session(path, device="cpu"), sample)
    theirs = run_batched(make_session(source, device="cpu"), sample)
    assert [o.shape for o in ours] == [t.shape for t in theirs]
    assert all(np.isfinite(o).all() for o in ours)


def _check_sparsity(path: Path, method: str, sparsity: float, groups: list[dict] | None = None) -> None:
    if METHODS[method].structured:
        assert groups, "a structured result names its pruned groups"
        for group in groups:
            assert group["kept"] == kept_channels(group["size"], sparsity)
    else:
        assert abs(_prunable_sparsity(path) - sparsity) < 0.01


def _sample() -> Dataset:
    with np.load(MODELS / "mlp_test.npz") as test:
        return Dataset({"input": test["input"][:16]})


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_method_through_every_path(variant, path, data, tmp_path):
    method, options = VARIANTS[variant]
    calib = ["--calib", data["calib"]]
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    structured = METHODS[method].structured
    if path.startswith("prune"):
        sparsity = 0.8 if "--compress" in path else 0.5  # sparse storage pays from 2/3 zeros on
        code, text = _cli("prune", MLP, "-o", out, "-m", method, "-s", sparsity, *calib, *_flags(options),
                          "--report", report, *path.split()[1:])
        assert code == 0, text
        outcome = json.loads(report.read_text())
        if "--json" in path:
            assert json.loads(text)["output"] == str(out)
            assert bool(outcome["compressed"]) != structured  # the tensors over 2/3 zeros are stored sparse
            assert outcome["after"]["file_bytes"] < outcome["before"]["file_bytes"]
        _check_written(out, MLP, _sample())
        _check_sparsity(out, method, sparsity, outcome["details"].get("groups"))
    elif path == "sweep":
        code, text = _cli("sweep", MLP, "-o", tmp_path / "sweep", "--data", data["test"], *calib, "--methods", method,
                          "--sparsities", "0.3,0.5", "--batch", "4", *_flags(options), "--json")
        assert code == 0, text
        stored = json.loads((tmp_path / "sweep" / "report.json").read_text())
        assert [p["error"] for p in stored["points"]] == [None, None]
        assert (tmp_path / "sweep" / "report.md").is_file() and (tmp_path / "sweep" / "quality_vs_sparsity.png").is_file()
        for point in stored["points"]:
            _check_written(Path(point["model"]), MLP, _sample())
            if not structured:
                _check_sparsity(Path(point["model"]), method, point["sparsity"])
    elif path.startswith("budget"):
        budget = (onnxprune.Budget(max_accuracy_drop=0.02) if path.endswith("drop")
                  else onnxprune.Budget(min_agreement=0.97))
        result = onnxprune.search_sparsity(MLP, out, method, budget, data=data["test"], calib=data["calib"],
                                           report=report, high=0.9, tolerance=0.45, **options)
        assert result.sparsity is not None and len(result.trials) >= 2
        assert json.loads(report.read_text())["sparsity"] == result.sparsity
        quality = onnxprune.evaluate(out, data["test"], reference=MLP)
        if path.endswith("drop"):
            assert result.dense_accuracy - quality.accuracy <= 0.02 + 1e-9 and quality.accuracy == result.accuracy
        else:
            assert quality.agreement >= 0.97 and quality.agreement == result.agreement
        _check_written(out, MLP, _sample())
        if not structured:
            _check_sparsity(out, method, result.sparsity)
    elif path.startswith("target"):
        code, text = _cli("prune", MLP, "-o", out, "-m", method, "--target-macs", "0.6", *calib, *_flags(options))
        if not structured:
            assert code == 2 and "a target sets channel widths: use a channel method" in text
            assert not out.exists()
            return
        assert code == 0, text
        assert "fidelity to the input model on 8 held-out calibration samples" in text
        before, after = (onnxprune.model_stats(onnx.load(str(p))).macs for p in (MLP, out))
        assert after <= 0.6 * before * 1.001
        _check_written(out, MLP, _sample())
    else:  # the Python API: one prune, then the same Pruner at two more sparsities
        outcome = onnxprune.prune(MLP, out, method, calib=data["calib"], sparsity=0.5, data=data["test"], **options)
        assert outcome.quality is not None and 0.0 <= outcome.quality.agreement <= 1.0
        _check_written(out, MLP, _sample())
        _check_sparsity(out, method, 0.5, outcome.details.get("groups"))
        pruner = onnxprune.Pruner(MLP, method, calib=data["calib"], **options)
        again = pruner.write(tmp_path / "p.onnx", 0.7)
        _check_sparsity(tmp_path / "p.onnx", method, 0.7, again.details.get("groups"))


@pytest.fixture(scope="module")
def transformer(tmp_path_factory) -> tuple[Path, Path]:
    """The transformer-shaped test net ([N, 8, 16] tokens, two encoder layers) and 32 random samples."""
    folder = tmp_path_factory.mktemp("transformer")
    path = nets.export(nets.transformer(), folder / "transformer.onnx", opset=17, dynamo=False,
                       input_shape=nets.NETS["transformer"].input_shape())
    data = nets.random_data(onnx.load(str(path)), samples=32)
    np.savez(folder / "calib.npz", **data.inputs)
    return path, folder / "calib.npz"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_method_prunes_a_transformer(variant, transformer, tmp_path):
    model, calib = transformer
    method, options = VARIANTS[variant]
    out = tmp_path / "out.onnx"
    outcome = onnxprune.prune(model, out, method, calib=calib, sparsity=0.5, **options)
    with np.load(calib) as arrays:
        _check_written(out, model, Dataset({"input": arrays["input"][:4]}))
    _check_sparsity(out, method, 0.5, outcome.details.get("groups"))
    if METHODS[method].structured:  # FFN neurons and whole attention heads are among the groups pruned
        assert len(outcome.details["groups"]) >= 2
