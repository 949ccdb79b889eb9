"""Structured channel pruning, the default baseline (``l1-channel``): in each channel group keep
the most important channels and drop the rest, physically shrinking every tensor involved (the
driver is ``structured.ChannelSession``)."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.channels.surgery import ChannelMap
from onnxprune.data import Dataset
from onnxprune.methods.structured.session import ChannelConfig, ChannelSession, GroupView

__all__ = ["ChannelConfig", "l1_channel_session"]


def selection_plan(view: GroupView, keep: np.ndarray) -> ChannelMap:
    """Keep the chosen channels as they are."""
    return ChannelMap.selection(view.group.size, keep)


def l1_channel_session(model: onnx.ModelProto, config: ChannelConfig, calib: Dataset | None = None) -> ChannelSession:
    """A session that keeps the selected channels as they are."""
    return ChannelSession(model, config, calib, selection_plan)
