"""The registry of pruning methods; each method lives in its own module with one entry point."""

from __future__ import annotations

from onnxprune.errors import ConfigError
from onnxprune.methods.base import MethodConfig, MethodResult, MethodSpec, make_config
from onnxprune.methods.chita import ChitaConfig, ChitaPlusConfig, chita_session, prune_chita, prune_chita_plus
from onnxprune.methods.intrafusion import IntraFusionConfig, intrafusion_session, prune_intrafusion
from onnxprune.methods.l1_channel import ChannelConfig, l1_channel_session, prune_l1_channel
from onnxprune.methods.magnitude import MagnitudeConfig, prune_magnitude
from onnxprune.methods.sparsegpt import SparsegptConfig, prune_sparsegpt, sparsegpt_session
from onnxprune.methods.wanda import WandaConfig, prune_wanda, wanda_session

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("magnitude", prune_magnitude, MagnitudeConfig, structured=False, needs_calib=False,
                   summary="zero the smallest |w| (global threshold)"),
        MethodSpec("chita", prune_chita, ChitaConfig, structured=False, needs_calib=True,
                   summary="second-order IHT + backsolve on the empirical Fisher or per layer (-O engine=)", session=chita_session),
        MethodSpec("chita++", prune_chita_plus, ChitaPlusConfig, structured=False, needs_calib=True,
                   summary="CHITA in stages of rising sparsity, re-linearised each stage", session=chita_session),
        MethodSpec("sparsegpt", prune_sparsegpt, SparsegptConfig, structured=False, needs_calib=True,
                   summary="per-layer OBS sweep on ONNX Runtime activations (no torch view)",
                   session=sparsegpt_session),
        MethodSpec("wanda", prune_wanda, WandaConfig, structured=False, needs_calib=True,
                   summary="keep the largest |w|·‖x‖ per output row (activations from ONNX Runtime)",
                   session=wanda_session),
        MethodSpec("l1-channel", prune_l1_channel, ChannelConfig, structured=True, needs_calib=False,
                   summary="remove the least important channels of each group (L1 of BN-folded weights)",
                   session=l1_channel_session),
        MethodSpec("intrafusion", prune_intrafusion, IntraFusionConfig, structured=True, needs_calib=False,
                   summary="fuse every channel into the kept ones by exact optimal transport (data-free)",
                   session=intrafusion_session),
    )
}


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``; ConfigError listing the choices otherwise."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "MethodConfig", "MethodResult", "MethodSpec", "get_method", "make_config"]
