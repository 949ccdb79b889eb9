"""Resumable layer-wise runs (``--resume DIR``): finished layers and error-curve points are kept and taken
up again; a folder belongs to one run; methods without layer steps are refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxprune import prune
from onnxprune.cli import cli
from onnxprune.errors import ConfigError
from onnxprune.methods.resume import IDENTITY_FILE

MODELS = Path(__file__).resolve().parent.parent / "models"


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


@pytest.mark.parametrize("options", [{"allocation": "global"}, {"sequential": "on"}])
def test_a_run_started_again_takes_its_finished_layers_and_solves_only_the_rest(tmp_path, options):
    calib = MODELS / "mlp_calib.npz"
    folder = tmp_path / "state"
    first = prune(MODELS / "mlp.onnx", tmp_path / "a.onnx", "sparsegpt", calib=calib, sparsity=0.6, resume=folder,
                  **options)
    layers = sorted((folder / "s0.6").glob("layer-*.npz"))
    assert len(layers) == len(first.details["layers"]) >= 2
    assert (folder / "curves.npz").exists() == (options.get("allocation") == "global")
    assert first.details["resume"]["layers_taken"] == 0
    # as if stopped after the first layer: the others are gone; the kept one is marked to prove it is taken
    for path in layers[1:]:
        path.unlink()
    with np.load(layers[0]) as stored:
        kept, details = stored["weight"], str(stored["details"])
    name = next(n for n, row in first.details["layers"].items() if json.loads(details)["d_in"] == row["d_in"])
    np.savez(layers[0], weight=kept * 2.0, details=np.array(details))
    second = prune(MODELS / "mlp.onnx", tmp_path / "b.onnx", "sparsegpt", calib=calib, sparsity=0.6, resume=folder,
                   **options)
    assert second.details["resume"]["layers_taken"] == 1
    a, b = _weights(tmp_path / "a.onnx"), _weights(tmp_path / "b.onnx")
    assert np.array_equal(b[name], 2.0 * a[name])
    if options.get("sequential") != "on":  # later waves fit the earlier waves' weights, here the doubled ones
        assert all(np.array_equal(a[n], b[n]) for n in a if n != name)
    assert len(sorted((folder / "s0.6").glob("layer-*.npz"))) == len(layers)


def test_a_folder_of_another_run_or_of_other_files_is_refused_and_nothing_is_written(tmp_path):
    calib = MODELS / "mlp_calib.npz"
    folder = tmp_path / "state"
    prune(MODELS / "mlp.onnx", tmp_path / "a.onnx", "sparsegpt", calib=calib, sparsity=0.5, resume=folder)
    prune(MODELS / "mlp.onnx", tmp_path / "b.onnx", "sparsegpt", calib=calib, sparsity=0.7, resume=folder)
    assert {p.name for p in folder.iterdir()} == {IDENTITY_FILE, "s0.5", "s0.7"}
    with pytest.raises(ConfigError, match="differs in options"):
        prune(MODELS / "mlp.onnx", tmp_path / "c.onnx", "sparsegpt", calib=calib, sparsity=0.5, resume=folder,
              allocation="global")
    with pytest.raises(ConfigError, match="differs in calibration"):
        prune(MODELS / "mlp.onnx", tmp_path / "c.onnx", "sparsegpt", calib=MODELS / "mlp_test.npz", sparsity=0.5,
              resume=folder)
    with pytest.raises(ConfigError, match="differs in method"):
        prune(MODELS / "mlp.onnx", tmp_path / "c.onnx", "wanda", calib=calib, sparsity=0.5, resume=folder)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ConfigError, match="not empty"):
        prune(MODELS / "mlp.onnx", tmp_path / "c.onnx", "sparsegpt", calib=calib, resume=other)
    assert not (tmp_path / "c.onnx").exists()
    assert [p.name for p in other.iterdir()] == ["cat.jpg"]


def test_methods_without_layer_steps_are_refused_before_a_folder_is_made(tmp_path):
    with pytest.raises(ConfigError, match="'magnitude' has no such steps"):
        prune(MODELS / "mlp.onnx", tmp_path / "a.onnx", "magnitude", resume=tmp_path / "m")
    with pytest.raises(ConfigError, match="'chita \\(model engine\\)' has no such steps"):  # the model engine: one solve, no layers
        prune(MODELS / "mlp.onnx", tmp_path / "a.onnx", "chita", calib=MODELS / "mlp_calib.npz", engine="model",
              resume=tmp_path / "c")
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()
    assert not (tmp_path / "a.onnx").exists()


def test_cli_resume_on_prune_and_sweep(tmp_path):
    runner = CliRunner()
    args = ["prune", str(MODELS / "mlp.onnx"), "-o", str(tmp_path / "a.onnx"), "-m", "chita", "--calib",
            str(MODELS / "mlp_calib.npz"), "--resume", str(tmp_path / "state"), "--json"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["details"]["resume"]["layers_taken"] == 0
    again = runner.invoke(cli, [*args[:3], str(tmp_path / "b.onnx"), *args[4:]])
    found = json.loads(again.output)["details"]
    assert found["resume"]["layers_taken"] == len(found["layers"]) >= 2
    assert _weights(tmp_path / "a.onnx").keys() == _weights(tmp_path / "b.onnx").keys()
    assert all(np.array_equal(x, _weights(tmp_path / "b.onnx")[n]) for n, x in _weights(tmp_path / "a.onnx").items())
    sweep = runner.invoke(cli, ["sweep", str(MODELS / "mlp.onnx"), "-o", str(tmp_path / "out"), "--data",
                                str(MODELS / "mlp_test.npz"), "--calib", str(MODELS / "mlp_calib.npz"), "--methods",
                                "magnitude,wanda", "--sparsities", "0.5", "--runs", "50",
                                "--resume", str(tmp_path / "sweep_state")])
    assert sweep.exit_code == 0, sweep.output
    assert [p.name for p in (tmp_path / "sweep_state").iterdir()] == ["wanda"]


def test_a_budget_search_keeps_every_trial_and_a_second_search_takes_them_all(tmp_path):
    from onnxprune import Budget, search_sparsity

    args = dict(data=MODELS / "mlp_test.npz", calib=MODELS / "mlp_calib.npz", resume=tmp_path / "state")
    first = search_sparsity(MODELS / "mlp.onnx", tmp_path / "a.onnx", "wanda", Budget(max_accuracy_drop=0.02), **args)
    folders = sorted(p.name for p in (tmp_path / "state").iterdir() if p.is_dir())
    assert sorted(f"s{t.sparsity!r}" for t in first.trials) == folders  # plain numbers, one per trial
    second = search_sparsity(MODELS / "mlp.onnx", tmp_path / "b.onnx", "wanda", Budget(max_accuracy_drop=0.02), **args)
    assert [t.sparsity for t in second.trials] == [t.sparsity for t in first.trials]
    assert second.outcome.details["resume"]["layers_taken"] == len(second.outcome.details["layers"])
    a, b = _weights(tmp_path / "a.onnx"), _weights(tmp_path / "b.onnx")
    assert all(np.array_equal(a[n], b[n]) for n in a)
