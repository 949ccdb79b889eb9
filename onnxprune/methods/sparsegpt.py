"""SparseGPT (Frantar & Alistarh, 2023): per layer, the OBS column sweep on the Cholesky factor of
``(H + λI)⁻¹`` from ONNX Runtime activations, pruning and updating the remaining weights in one pass."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import onnx

from onnxprune.data import Dataset
from onnxprune.methods.base import Interval
from onnxprune.methods.layerwise import LayerwiseConfig, LayerwiseSession


@dataclass
class SparsegptConfig(LayerwiseConfig):
    """SparseGPT's options on top of the layer-wise ones: ``damp`` (ridge λ = damp·mean(diag H)) and
    ``block_size`` (columns per lazy-update block of the sweep)."""

    damp: float = 0.01
    block_size: int = 128

    constraints = {"damp": Interval(0, None, "neither"), "block_size": Interval(1, None)}


def sparsegpt_session(model: onnx.ModelProto, config: SparsegptConfig, calib: Dataset | None) -> LayerwiseSession:
    """A session that captures the Gram matrices once and sweeps every layer at each sparsity asked for."""
    from onnxprune.methods.layer_solver import solve_obs

    solver = functools.partial(solve_obs, block_size=config.block_size)
    return LayerwiseSession(model, config, calib, solver=solver, estimator=solver, damp=config.damp,
                            method="sparsegpt", samples=config.samples)
