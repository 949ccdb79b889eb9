"""Wanda (Sun et al., 2024): keep the weights with the largest ``|W_ij|·‖X_j‖₂`` in each output row,
with ``‖X_j‖₂`` from ONNX Runtime activations; no weight update (the published baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxprune.data import Dataset
from onnxprune.methods.base import OneOf
from onnxprune.methods.unstructured.layerwise import SCOPES, LayerwiseConfig, LayerwiseSession


@dataclass
class WandaConfig(LayerwiseConfig):
    """Wanda's option on top of the layer-wise ones: ``scope``, the comparison group of the scores:
    'row' (each output row, as published) or 'layer' (the whole weight)."""

    scope: str = "row"

    checks = {"scope": OneOf(SCOPES)}


def wanda_session(model: onnx.ModelProto, config: WandaConfig, calib: Dataset | None) -> LayerwiseSession:
    """A session that captures the input norms once and prunes at each sparsity asked for."""
    from onnxprune.methods.solvers.layer_solver import solve_wanda

    return LayerwiseSession(model, config, calib, solver=solve_wanda, estimator=solve_wanda, ridge=None,
                            scope=config.scope, method="wanda")
