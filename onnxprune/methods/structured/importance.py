"""Channel importance for structured pruning: a non-negative score per channel of a group, from
the BatchNorm-folded weights (L1/L2 norm), first-order saliency (Taylor) or a seeded draw."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.channels.model import ChannelGroup
from onnxprune.channels.surgery import member_slab
from onnxprune.data import Dataset
from onnxprune.errors import ConfigError

IMPORTANCES = ("l1", "l2", "taylor", "random")


def _slab_scores(slabs: list[np.ndarray], kind: str) -> np.ndarray:
    """Per-channel norm of each slab ('l1', 'l2' or 'sum' of saliencies), averaged over slabs."""
    if kind == "l2":
        per_member = [np.sqrt(np.sum(np.square(s, dtype=np.float64), axis=1)) for s in slabs]
    elif kind == "l1":
        per_member = [np.sum(np.abs(s), axis=1, dtype=np.float64) for s in slabs]
    else:
        per_member = [np.sum(s, axis=1, dtype=np.float64) for s in slabs]
    return np.mean(per_member, axis=0)


def _taylor_saliency(model: onnx.ModelProto, tensors: set[str], calib: Dataset) -> dict[str, np.ndarray]:
    """|w · ∂L/∂w| for each named weight, summed over the calibration data through the torch view.

    L is the cross-entropy of the first output against the labels, or against the model's own
    top-1 predictions when the data has none.
    """
    import torch

    from onnxprune.graph.prunable import find_prunable
    from onnxprune.threads import apply_to_torch
    from onnxprune.view.torchview import build_torch_view

    apply_to_torch()

    names = [w.name for w in find_prunable(model) if w.name in tensors]
    view = build_torch_view(model, weights=names)
    for start in range(0, len(calib), 64):
        batch = calib.take(64, start)
        inputs = [torch.from_numpy(np.ascontiguousarray(batch.inputs[n])) for n in view.input_names]
        logits = view(*inputs)[0]
        if logits.ndim != 2:
            raise ConfigError("importance 'taylor' needs a classifier whose first output is [N, classes]; "
                              "use --importance l1")
        target = torch.from_numpy(batch.labels.astype(np.int64)) if batch.labels is not None \
            else logits.argmax(dim=1).detach()
        torch.nn.functional.cross_entropy(logits, target, reduction="sum").backward()
    return {name: (p.detach() * p.grad).abs().numpy().astype(np.float64)
            for name, p in view.params.items() if p.grad is not None}


def channel_importance(model: onnx.ModelProto, values: dict[str, np.ndarray], groups: list[ChannelGroup],
                       kind: str, calib: Dataset | None = None, seed: int = 0) -> dict[int, np.ndarray]:
    """A non-negative score per channel for each group (higher = more important); ``values``
    holds the model's initializers."""
    if kind == "random":
        rng = np.random.default_rng(seed)
        return {g.index: rng.random(g.size) for g in groups}
    if kind == "taylor":
        if calib is None:
            raise ConfigError("importance 'taylor' needs calibration data (--calib)")
        values = _taylor_saliency(model, {m.tensor for g in groups for m in g.members if m.weight}, calib)
        kind = "sum"
    return {g.index: _slab_scores([member_slab(values[m.tensor], m, g.size) for m in g.members
                                   if m.weight and m.tensor in values], kind) for g in groups}
