"""The registry of pruning methods. Each method lives in its own module with one config class and one
session factory; a module (and what it imports: torch, POT) is loaded only when its method is used."""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx

from onnxprune.data import Dataset
from onnxprune.errors import ConfigError
from onnxprune.methods.base import MethodConfig, MethodResult, MethodSpec, PruneSession, make_config
from onnxprune.options import GLOSSARY

_LAYERWISE_REUSE = ("the dense model's Gram matrices, captured once (sequential=on captures every wave again at each "
                    "sparsity), and the global allocation's error-curve points; every layer is solved again")
_CHANNEL_REUSE = ("BatchNorm folding, channel groups and scores, the consumers' Gram matrices of the dense model and "
                  "each group's selection per width (sequential waves are captured again)")

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("magnitude", "onnxprune.methods.unstructured.magnitude", "MagnitudeConfig", "magnitude_session",
                   structured=False, needs_calib=False, summary="zero the smallest |w| (global threshold)",
                   reuse="nothing (each sparsity takes milliseconds)"),
        MethodSpec("chita", "onnxprune.methods.unstructured.chita", "ChitaConfig", "chita_session", structured=False,
                   needs_calib=True,
                   summary="second-order IHT + backsolve per layer or on the empirical Fisher (-O engine=)",
                   reuse=f"layer engine (the default): {_LAYERWISE_REUSE}; model engine: the gradient matrix at the "
                         "trained weights (when it fits in one pass), so another sparsity costs one solve",
                   resumable=True),
        MethodSpec("chita++", "onnxprune.methods.unstructured.chita", "ChitaPlusConfig", "chita_session",
                   structured=False, needs_calib=True,
                   summary="CHITA in stages of rising sparsity, re-linearised each stage",
                   reuse="model engine (the default): every stage's weights, so a sparsity continues the one staged "
                         "path from the stored stage below it; layer engine (fallback): as chita's",
                   shared_path=True),
        MethodSpec("sparsegpt", "onnxprune.methods.unstructured.sparsegpt", "SparsegptConfig", "sparsegpt_session",
                   structured=False, needs_calib=True,
                   summary="per-layer OBS sweep on ONNX Runtime activations (no torch view)", reuse=_LAYERWISE_REUSE,
                   resumable=True),
        MethodSpec("wanda", "onnxprune.methods.unstructured.wanda", "WandaConfig", "wanda_session", structured=False,
                   needs_calib=True, summary="keep the largest |w|·‖x‖ per output row (activations from ONNX Runtime)",
                   reuse=_LAYERWISE_REUSE, resumable=True),
        MethodSpec("l1-channel", "onnxprune.methods.structured.l1_channel", "ChannelConfig", "l1_channel_session",
                   structured=True, needs_calib=False,
                   summary="remove the least important channels of each group (L1 of BN-folded weights)",
                   reuse=_CHANNEL_REUSE),
        MethodSpec("intrafusion", "onnxprune.methods.structured.intrafusion", "IntraFusionConfig",
                   "intrafusion_session", structured=True, needs_calib=False,
                   summary="fuse every channel into the kept ones by exact optimal transport (data-free)",
                   reuse=_CHANNEL_REUSE),
        MethodSpec("chita-channel", "onnxprune.methods.structured.chita_channel", "ChitaChannelConfig",
                   "chita_channel_session", structured=True, needs_calib=True,
                   summary="keep the channels whose consumers' refit reconstructs best (greedy + swaps), refit",
                   reuse=_CHANNEL_REUSE + "; the greedy elimination path of each group"),
    )
}


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``; ConfigError listing the choices otherwise."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def prune_model(method: str, model: onnx.ModelProto, config: MethodConfig,
                calib: Dataset | None = None) -> MethodResult:
    """Prune ``model`` once with the registered ``method`` at ``config.sparsity`` (a one-call session)."""
    return get_method(method).open(model, config, calib).prune(config.sparsity)


def method_catalogue() -> dict[str, Any]:
    """Every method (kind, data, summary, what its session re-uses) and every option once: its meaning and
    each method's default; with the old option names still accepted. ``onnxprune methods`` prints it."""
    methods, defaults, renamed = [], {}, {}
    for spec in METHODS.values():
        methods.append({"name": spec.name, "kind": "structured" if spec.structured else "unstructured",
                        "needs_calib": spec.needs_calib, "summary": spec.summary, "reuse": spec.reuse,
                        "resumable": spec.resumable})
        for f in dataclasses.fields(spec.config_cls):
            defaults.setdefault(f.name, {})[spec.name] = f.default
        renamed.update(spec.config_cls.aliases())
    options = [{"name": name, "meaning": GLOSSARY[name], "defaults": by_method} for name, by_method in defaults.items()]
    return {"methods": methods, "options": options, "renamed": renamed}


__all__ = ["METHODS", "MethodConfig", "MethodResult", "MethodSpec", "PruneSession", "get_method", "make_config",
           "method_catalogue", "prune_model"]
