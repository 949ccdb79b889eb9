"""Tiny seeded torch models for the test suite, an ONNX export helper and random input data.

Every builder returns a model in eval mode with seeded random weights; BatchNorm and LayerNorm
affine parameters and BatchNorm running statistics are random too, so folding them wrongly shows.

API::

    NETS: dict[str, Net]            # name -> Net(build, sample_shape), names below
    resnet() / mobilenet() / densenet() / shufflenet() / senet()   # input [N, 3, 16, 16] -> [N, 10]
    transformer()                   # input [N, 8, 16] (tokens x features) -> [N, 10]
    export(model, path, *, opset, dynamo, input_shape) -> Path
    random_data(model, samples=32, seed=0) -> Dataset   # for an ONNX model's inputs

``export`` writes one self-contained .onnx file whose single input is called ``input`` with a
dynamic batch axis; ``input_shape`` is the full example shape, batch included (use a batch >= 2,
the dynamo exporter specialises a batch of 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn

from onnxprune.data import Dataset, input_specs

CLASSES = 10
IMAGE = (3, 16, 16)
TOKENS = (8, 16)


def _randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm/LayerNorm non-trivial affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
    return model.eval()


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model under a fixed torch seed, then randomize its norm layers."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _randomize_norms(build(), seed)


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) followed by BatchNorm."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class _Head(nn.Module):
    """Global average pool, flatten, Linear classifier."""

    def __init__(self, channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class _BasicBlock(nn.Module):
    """ResNet basic block; a strided 1x1 conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), nn.ReLU(), _conv_bn(cout, cout))
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class _ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 8), nn.ReLU())
        self.blocks = nn.Sequential(_BasicBlock(8, 8, 1), _BasicBlock(8, 16, 2))
        self.head = _Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(_conv_bn(cin, hidden, 1), nn.ReLU6(),
                                  _conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(),
                                  _conv_bn(hidden, cout, 1))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class _MobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 8), nn.ReLU6())
        self.blocks = nn.Sequential(_InvertedResidual(8, 8, 1), _InvertedResidual(8, 16, 2),
                                    _InvertedResidual(16, 16, 1))
        self.last = nn.Sequential(_conv_bn(16, 32, 1), nn.ReLU6())
        self.head = _Head(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last(self.blocks(self.stem(x))))


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv producing ``growth`` channels, concatenated to its input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class _DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.block = nn.Sequential(_DenseLayer(8, 4), _DenseLayer(12, 4))
        self.transition = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 12, 1, bias=False),
                                        nn.AvgPool2d(2))
        self.head = nn.Sequential(nn.BatchNorm2d(12), nn.ReLU(), _Head(12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.transition(self.block(self.stem(x))))


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: [N, g, C/g, H, W] -> transpose groups -> [N, C, H, W]."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split channels in two, transform one half, concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(_conv_bn(half, half, 1), nn.ReLU(), _conv_bn(half, half, 3, groups=half),
                                    _conv_bn(half, half, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, change = x.chunk(2, dim=1)
        return _channel_shuffle(torch.cat([keep, self.branch(change)], dim=1), 2)


class _ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 16, 3, 2), nn.ReLU())
        self.grouped = nn.Sequential(_conv_bn(16, 16, 1, groups=4), nn.ReLU())
        self.units = nn.Sequential(_ShuffleUnit(16), _ShuffleUnit(16))
        self.head = _Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _channel_shuffle(self.grouped(self.stem(x)), 4)
        return self.head(self.units(x))


class _SqueezeExcite(nn.Module):
    """GAP -> FC -> ReLU -> FC -> Sigmoid, scaling the channels of the input."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]


class _SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 16), nn.ReLU())
        self.se = _SqueezeExcite(16)
        self.conv = nn.Sequential(_conv_bn(16, 16, 3, 2), nn.ReLU())
        self.head = _Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.se(self.stem(x))))


class _EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with self-attention written in plain ops."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.norm1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, hidden)
        self.ff2 = nn.Linear(hidden, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, D] -> [N, heads, T, D/heads]."""
        n, t, d = x.shape
        return x.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.norm1(x)
        q, k, v = self._split(self.q(h)), self._split(self.k(h)), self._split(self.v(h))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        x = x + self.out(torch.matmul(attn, v).transpose(1, 2).reshape(n, t, d))
        return x + self.ff2(nn.functional.gelu(self.ff1(self.norm2(x))))


class _Transformer(nn.Module):
    def __init__(self, dim: int = TOKENS[1], heads: int = 2, layers: int = 2):
        super().__init__()
        self.layers = nn.Sequential(*[_EncoderLayer(dim, heads, 2 * dim) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.layers(x)).mean(dim=1))


def resnet(seed: int = 0) -> nn.Module:
    """ResNet-style CNN: Conv/BN/ReLU, residual Add, strided block with 1x1 shortcut, GAP, Linear."""
    return _seeded(_ResNet, seed)


def mobilenet(seed: int = 0) -> nn.Module:
    """MobileNetV2-style CNN: inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project), ReLU6."""
    return _seeded(_MobileNet, seed)


def densenet(seed: int = 0) -> nn.Module:
    """DenseNet-style CNN: dense layers concatenated along channels, transition with AvgPool."""
    return _seeded(_DenseNet, seed)


def shufflenet(seed: int = 0) -> nn.Module:
    """ShuffleNet-style CNN: grouped 1x1 conv, channel split, channel shuffle (reshape/transpose)."""
    return _seeded(_ShuffleNet, seed)


def senet(seed: int = 0) -> nn.Module:
    """CNN with a squeeze-excitation block (GAP, FC, ReLU, FC, Sigmoid, Mul)."""
    return _seeded(_SENet, seed)


def transformer(seed: int = 0) -> nn.Module:
    """Two pre-norm encoder layers (plain-op multi-head attention, GELU MLP), mean-pooled tokens,
    Linear classifier; input [N, 8, 16] floats."""
    return _seeded(_Transformer, seed)


@dataclass(frozen=True)
class Net:
    """A model builder and the shape of one sample (batch axis excluded)."""

    build: Callable[..., nn.Module]
    sample_shape: tuple[int, ...]

    def input_shape(self, batch: int = 2) -> tuple[int, ...]:
        """The full input shape for ``batch`` samples."""
        return (batch, *self.sample_shape)


NETS: dict[str, Net] = {
    "resnet": Net(resnet, IMAGE),
    "mobilenet": Net(mobilenet, IMAGE),
    "densenet": Net(densenet, IMAGE),
    "shufflenet": Net(shufflenet, IMAGE),
    "senet": Net(senet, IMAGE),
    "transformer": Net(transformer, TOKENS),
}


def export(model: nn.Module, path: str | Path, *, opset: int | None, dynamo: bool,
           input_shape: tuple[int, ...]) -> Path:
    """Export ``model`` to ``path`` (input ``input``, output ``output``, dynamic batch axis).

    ``dynamo=False``: the legacy TorchScript exporter at ``opset`` (required).
    ``dynamo=True``: the torch.export-based exporter at ``opset`` or, when None, its default.
    """
    path = Path(path)
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    model = model.eval()
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                    input_names=["input"], output_names=["output"],
                                    dynamic_shapes=({0: batch},), verbose=False)
        program.save(str(path), external_data=False)
    else:
        if opset is None:
            raise ValueError("the legacy exporter needs an explicit opset")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def random_data(model: onnx.ModelProto, samples: int = 32, seed: int = 0) -> Dataset:
    """Standard-normal float32 samples for every input of an ONNX model (dynamic batch axis;
    a fixed batch is repeated enough times to hold at least ``samples``)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in input_specs(model):
        batch = spec.shape[0]
        count = samples if batch is None else batch * -(-samples // batch)
        rest = spec.shape[1:]
        if any(d is None for d in rest):
            raise ValueError(f"input {spec.name!r} has a dynamic non-batch axis: {spec.shape}")
        inputs[spec.name] = rng.standard_normal((count, *rest)).astype(np.float32)
    return Dataset(inputs)
