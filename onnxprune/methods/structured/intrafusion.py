"""Intra-Fusion (``intrafusion``): structured channel pruning that fuses the dropped channels into
the kept ones along an exact optimal-transport map instead of discarding them; data-free unless
calibration data is given, which by default refits the fused consumers (``reconstruction.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx

from onnxprune.channels.surgery import ChannelMap
from onnxprune.data import Dataset
from onnxprune.methods.base import OneOf
from onnxprune.methods.structured.session import ChannelConfig, ChannelSession, GroupView
from onnxprune.methods.structured.ot_fusion import MARGINALS, NORMALIZATIONS, fusion_maps, pairing_vectors, transport_plan


@dataclass
class IntraFusionConfig(ChannelConfig):
    """Channel-pruning options plus the fusion's.

    ``normalization`` (default 'published', measured better on the bundled CNN, see
    tools/bench_intrafusion.py): the paper's map, each source channel's mass summing to 1, on both
    sides; 'preserving': producers take the weighted average of the channels fused into them and
    consumers their sum, which keeps exactly duplicated channels exact. ``marginals`` (default
    'uniform'): OT mass per channel, or proportional to channel importance ('importance').
    """

    normalization: str = "published"
    marginals: str = "uniform"

    checks = {"normalization": OneOf(NORMALIZATIONS), "marginals": OneOf(MARGINALS)}


def _fusion_plan(config: IntraFusionConfig, view: GroupView, keep: np.ndarray) -> ChannelMap:
    """Transport every channel onto the kept ones and merge along the plan."""
    vectors = pairing_vectors([slab for member, slab in view.slabs if member.weight])
    plan = transport_plan(vectors, keep, view.scores if config.marginals == "importance" else None)
    producer, consumer = fusion_maps(plan, config.normalization)
    return ChannelMap(producer, consumer)


def intrafusion_session(model: onnx.ModelProto, config: IntraFusionConfig,
                        calib: Dataset | None = None) -> ChannelSession:
    """A session that fuses every channel of a group into its kept ones."""
    return ChannelSession(model, config, calib, partial(_fusion_plan, config),
                          extra={"normalization": config.normalization, "marginals": config.marginals})

