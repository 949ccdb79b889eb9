"""SparseGPT (Frantar & Alistarh, 2023): per layer, the OBS column sweep on the Cholesky factor of
``(H + λI)⁻¹`` from ONNX Runtime activations, pruning and updating the remaining weights in one pass."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import onnx

from onnxprune.data import Dataset
from onnxprune.methods.base import Interval
from onnxprune.methods.unstructured.layerwise import LayerwiseConfig, LayerwiseSession


@dataclass
class SparsegptConfig(LayerwiseConfig):
    """SparseGPT's options on top of the layer-wise ones: ``ridge`` (λ = ridge·mean(diag H); the paper's
    dampening) and ``sweep_block`` (columns per lazy-update block of the sweep)."""

    ridge: float = 0.01
    sweep_block: int = 128

    checks = {"ridge": Interval(0, None, "neither"), "sweep_block": Interval(1, None)}
    renamed = {"damp": "ridge", "block_size": "sweep_block"}


def sparsegpt_session(model: onnx.ModelProto, config: SparsegptConfig, calib: Dataset | None) -> LayerwiseSession:
    """A session that captures the Gram matrices once and sweeps every layer at each sparsity asked for."""
    from onnxprune.methods.solvers.layer_solver import solve_obs

    solver = functools.partial(solve_obs, block_size=config.sweep_block)
    return LayerwiseSession(model, config, calib, solver=solver, estimator=solver, ridge=config.ridge,
                            method="sparsegpt")
