"""The device option of CHITA: one code path for CPU and CUDA, checked here on the CPU only (no test needs a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from onnxprune import compute
from onnxprune.data import load_data
from onnxprune.errors import ConfigError
from onnxprune.graph.canonical import canonicalize
from onnxprune.graph.io import load_model
from onnxprune.graph.prunable import read_weights
from onnxprune.methods.unstructured import chita
from onnxprune.methods import prune_model
from onnxprune.methods.unstructured.chita import ChitaConfig, ChitaPlusConfig, ChitaSession, _GradientCache
from onnxprune.pipeline import prune

MODELS = Path(__file__).resolve().parent.parent / "models"
MLP, MLP_CALIB = MODELS / "mlp.onnx", MODELS / "mlp_calib.npz"


@pytest.fixture()
def no_gpu(monkeypatch):
    """Torch sees no GPU, whatever the machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def mlp():
    model = canonicalize(load_model(MLP)).model
    return model, load_data(MLP_CALIB, model).take(200)


def test_device_choice(no_gpu):
    assert compute.torch_device("auto") == torch.device("cpu") == compute.torch_device("cpu")
    with pytest.raises(ConfigError, match="sees no GPU.*device cpu"):
        compute.torch_device("cuda")
    with pytest.raises(ConfigError, match="device must be one of"):
        compute.torch_device("tpu")
    with pytest.raises(ConfigError, match="device"):
        ChitaConfig(device="gpu")
    a, b = compute.generator(3), compute.generator(3, torch.device("cpu"))
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))


def test_cuda_without_a_gpu_fails_before_any_work(no_gpu, monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the device was checked")

    monkeypatch.setattr(chita, "build_torch_view", forbidden)
    monkeypatch.setattr(chita, "select_prunable", forbidden)
    out = tmp_path / "out.onnx"
    with pytest.raises(ConfigError, match="device 'cuda' requested but torch"):
        prune(MLP, out, "chita", calib=MLP_CALIB, sparsity=0.5, device="cuda", engine="model")
    assert not out.exists()


def test_cpu_and_auto_give_the_same_masks_through_the_one_code_path(no_gpu, monkeypatch, mlp):
    model, calib = mlp
    seen = []
    solve = chita.solver.chita

    def recording(problem, *args, **kwargs):
        seen.append((problem.at.device, problem.anchor.device, torch.get_default_device()))
        return solve(problem, *args, **kwargs)

    monkeypatch.setattr(chita.solver, "chita", recording)
    results = {d: prune_model("chita", model, ChitaConfig(sparsity=0.8, rows=200, device=d, engine="model"), calib) for d in ("cpu", "auto")}
    cpu = torch.device("cpu")
    assert seen and all(device == cpu for entry in seen for device in entry)
    assert results["cpu"].details["device"] == results["auto"].details["device"] == "cpu"
    a, b = read_weights(results["cpu"].model), read_weights(results["auto"].model)
    for name in a:
        assert np.array_equal(a[name] != 0, b[name] != 0) and np.array_equal(a[name], b[name])


def test_chita_plus_stages_are_nested_and_reuse_nearby_gradients(mlp):
    model, calib = mlp
    session = ChitaSession(model, ChitaPlusConfig(rows=200, stages=3, reuse_gradients=1.0, early_rows=1.0), calib)
    low, high = session.prune(0.5), session.prune(0.8)
    assert [s["gradients_reused"] for s in low.details["stages"]] == [0, 1, 1]
    kept_low, kept_high = read_weights(low.model), read_weights(high.model)
    for name in kept_low:
        assert not np.any((kept_high[name] != 0) & (kept_low[name] == 0)), name  # nothing pruned comes back
    assert high.details["stages"][0]["columns"] == sum(int(np.count_nonzero(w)) for w in kept_low.values())


def test_gradient_cache_reuses_close_weights_and_subsets_only():
    cache = _GradientCache(tolerance=0.1)
    weights, index = torch.ones(10), torch.arange(10)
    at = torch.arange(20.0).reshape(10, 2)
    cache.store(weights, index, at, 1.0)
    assert cache.lookup(weights, index, 2) is at
    subset = cache.lookup(weights * 1.05, torch.tensor([2, 5]), 2)
    assert torch.equal(subset, at[[2, 5]])
    assert cache.lookup(weights, torch.tensor([2, 7]), 2) is None and cache.at is None  # not kept: dropped
    cache.store(weights, index, at, 1.0)
    assert cache.lookup(weights * 2, index, 2) is None and cache.at is None
    cache.store(weights, index, at, 1.0)
    assert cache.lookup(weights, index, 4) is None and cache.at is None  # another row count: dropped
