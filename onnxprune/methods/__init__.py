"""The registry of pruning methods. Each method lives in its own module with one config class and one
session factory; a module (and what it imports: torch, POT) is loaded only when its method is used."""

from __future__ import annotations

from onnxprune.errors import ConfigError
from onnxprune.methods.base import MethodConfig, MethodResult, MethodSpec, make_config, prune_model

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("magnitude", "onnxprune.methods.magnitude", "MagnitudeConfig", "magnitude_session",
                   structured=False, needs_calib=False, summary="zero the smallest |w| (global threshold)"),
        MethodSpec("chita", "onnxprune.methods.chita", "ChitaConfig", "chita_session", structured=False,
                   needs_calib=True,
                   summary="second-order IHT + backsolve on the empirical Fisher or per layer (-O engine=)"),
        MethodSpec("chita++", "onnxprune.methods.chita", "ChitaPlusConfig", "chita_session", structured=False,
                   needs_calib=True, summary="CHITA in stages of rising sparsity, re-linearised each stage"),
        MethodSpec("sparsegpt", "onnxprune.methods.sparsegpt", "SparsegptConfig", "sparsegpt_session",
                   structured=False, needs_calib=True,
                   summary="per-layer OBS sweep on ONNX Runtime activations (no torch view)"),
        MethodSpec("wanda", "onnxprune.methods.wanda", "WandaConfig", "wanda_session", structured=False,
                   needs_calib=True, summary="keep the largest |w|·‖x‖ per output row (activations from ONNX Runtime)"),
        MethodSpec("l1-channel", "onnxprune.methods.l1_channel", "ChannelConfig", "l1_channel_session",
                   structured=True, needs_calib=False,
                   summary="remove the least important channels of each group (L1 of BN-folded weights)"),
        MethodSpec("intrafusion", "onnxprune.methods.intrafusion", "IntraFusionConfig", "intrafusion_session",
                   structured=True, needs_calib=False,
                   summary="fuse every channel into the kept ones by exact optimal transport (data-free)"),
        MethodSpec("chita-channel", "onnxprune.methods.chita_channel", "ChitaChannelConfig", "chita_channel_session",
                   structured=True, needs_calib=True,
                   summary="keep the channels whose consumers' refit reconstructs best (greedy + swaps), refit"),
    )
}


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``; ConfigError listing the choices otherwise."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "MethodConfig", "MethodResult", "MethodSpec", "get_method", "make_config", "prune_model"]
