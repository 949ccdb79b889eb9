"""Where onnxprune's torch work runs (the torch view, gradient matrices, CHITA's solver): one code path for
CPU and CUDA. Callers resolve the device once with ``torch_device`` and run under ``with placed_on(device):``,
so tensor factories land there; the helpers below move numpy data in and make random generators match.
"""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager

import numpy as np
import torch

from onnxprune.errors import ConfigError
from onnxprune.options import DEVICES

log = logging.getLogger(__name__)



def torch_device(requested: str = "auto") -> torch.device:
    """The torch device for ``requested``: 'auto' is CUDA when torch sees a GPU, else the CPU; 'cuda'
    without a usable GPU is a ConfigError saying what torch reports."""
    if requested not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise ConfigError(f"device 'cuda' requested but torch {torch.__version__} ({build}) sees no GPU "
                          f"(torch.cuda.device_count() = {torch.cuda.device_count()}): use --device cpu or "
                          "auto, or install a CUDA build of torch that matches the driver")
    return torch.device("cuda", torch.cuda.current_device())


def placed_on(device: torch.device) -> ContextManager:
    """A context that makes tensor factories land on ``device``; on the CPU none is needed, and torch's
    device mode would otherwise intercept every torch call (seconds of overhead in the per-layer solves)."""
    return device if device.type != "cpu" else contextlib.nullcontext()


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor on the current default device (``with device:``); shares memory on the CPU."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.get_default_device())


def generator(seed: int, device: torch.device | None = None) -> torch.Generator:
    """A seeded generator on ``device`` (default: the current default device), as sampling there requires."""
    return torch.Generator(device=device or torch.get_default_device()).manual_seed(seed)


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (what the driver reports), None on the CPU."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    log.info("CUDA device %s: %.1f GiB free of %.1f GiB", device, free / (1 << 30), total / (1 << 30))
    return int(free)
