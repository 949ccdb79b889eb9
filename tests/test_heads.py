"""Structured pruning of transformers: attention heads as channel units (Q, K, V output columns
and the output projection's input rows, ``d`` entries each) and FFN neurons with the activation
in every exported form, on legacy and dynamo exports.

The check for heads is exactness against torch: removing heads from the ONNX graph must give the
torch module in which those heads contribute nothing (their V columns and output-projection
inputs zeroed)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from nets import NETS, export
from onnxprune.channels.analysis import analyse_channels
from onnxprune.channels.model import ChannelAnalysis, ChannelGroup
from onnxprune.channels.surgery import ChannelMap, apply_channel_maps
from onnxprune.graph.canonical import canonicalize
from onnxprune.graph.io import load_model
from onnxprune.runtime.sessions import make_session

EXPORTS = {"legacy": (False, 17), "dynamo": (True, 18)}
DIM, HEADS, TOKENS = 16, 4, 5
HEAD = DIM // HEADS


class _Attention(nn.Module):
    """BERT-style self-attention with constant head shapes, residual add and LayerNorm."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(DIM, DIM) for _ in range(4))
        self.norm = nn.LayerNorm(DIM)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, DIM] -> [N, HEADS, T, HEAD]."""
        return x.view(x.shape[0], x.shape[1], HEADS, HEAD).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / HEAD ** 0.5
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
        return self.norm(x + self.out(context.reshape(x.shape[0], x.shape[1], HEADS * HEAD)))


def _attention() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _Attention().eval()


def _masked(module: _Attention, keep: list[int]) -> nn.Module:
    """A copy of ``module`` whose heads outside ``keep`` contribute nothing."""
    masked = copy.deepcopy(module)
    dropped = [c for h in range(HEADS) if h not in keep for c in range(h * HEAD, (h + 1) * HEAD)]
    with torch.no_grad():
        masked.v.weight[dropped] = 0.0
        masked.v.bias[dropped] = 0.0
        masked.out.weight[:, dropped] = 0.0
    return masked


def _exported(module: nn.Module, path, exporter: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    dynamo, opset = EXPORTS[exporter]
    return canonicalize(load_model(export(module, path, opset=opset, dynamo=dynamo, input_shape=shape))).model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model, device="cpu").run(None, {"input": x})[0]


def _head_group(analysis: ChannelAnalysis) -> ChannelGroup:
    return next(g for g in analysis.groups if g.size == HEADS)


def _fixed_entries(model: onnx.ModelProto, analysis: ChannelAnalysis, group: ChannelGroup) -> list[int]:
    """The values the group's shape fixes hold in ``model`` (node names survive surgery)."""
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name: t for t in model.graph.initializer}
    values = []
    for fix in analysis.fixes:
        if fix.kind == "entry" and any(term[0] == group.index for terms in fix.terms for term in terms):
            target = numpy_helper.to_array(inits[nodes[fix.node].input[fix.slot]])
            values.append(int(target.reshape(-1)[fix.position]))
    return sorted(values)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_pruning_two_of_four_heads_equals_masking_them_in_torch(tmp_path, exporter):
    module = _attention()
    model = _exported(module, tmp_path / "attention.onnx", exporter, (2, TOKENS, DIM))
    analysis = analyse_channels(model)
    group = _head_group(analysis)
    assert group.prunable, group.reason
    assert {m.block for m in group.members} == {HEAD}  # whole heads: Q/K/V columns, biases, out rows
    assert len([m for m in group.members if m.weight]) == 4
    hidden = next(g for g in analysis.groups if g.size == DIM)
    assert "residual stream / normalised axis" in hidden.reason

    keep = [0, 2]
    pruned = apply_channel_maps(model, analysis, {group.index: ChannelMap.selection(HEADS, np.array(keep))})
    # three reshapes into [N, T, heads, d] and one back to [N, T, heads * d]
    assert _fixed_entries(model, analysis, group) == [HEADS] * 3 + [DIM]
    assert _fixed_entries(pruned, analysis, group) == [len(keep)] * 3 + [len(keep) * HEAD]
    weights = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert sorted(weights[m.tensor] for m in group.members if m.weight) == \
        [(len(keep) * HEAD, DIM)] + [(DIM, len(keep) * HEAD)] * 3

    x = np.random.default_rng(0).standard_normal((3, TOKENS, DIM)).astype(np.float32)
    with torch.no_grad():
        expected = _masked(module, keep)(torch.from_numpy(x)).numpy()
        dense = module(torch.from_numpy(x)).numpy()
    assert np.abs(_run(pruned, x) - expected).max() <= 1e-5
    assert np.abs(dense - expected).max() > 1e-2  # the masked heads mattered


def test_head_size_from_shape_arithmetic_is_refused(tmp_path):
    """The test transformer's legacy export computes d as Shape(q)[2] / heads at run time; its
    dynamo export spells constant shapes, so its heads are prunable."""
    net = NETS["transformer"]
    legacy = _exported(net.build(), tmp_path / "legacy.onnx", "legacy", net.input_shape())
    refused = [g for g in analyse_channels(legacy).groups if g.size == 2]
    assert len(refused) == 6 and all("computes the head size at run time" in g.reason for g in refused)
    dynamo = _exported(net.build(), tmp_path / "dynamo.onnx", "dynamo", net.input_shape())
    heads = [g for g in analyse_channels(dynamo).groups if g.size == 2]
    assert len(heads) == 2 and all(g.prunable and len(g.producers) == 3 for g in heads)


class _FeedForward(nn.Module):
    def __init__(self, approximate: str):
        super().__init__()
        self.up, self.down, self.approximate = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM), approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(x), approximate=self.approximate))


@pytest.mark.parametrize("approximate, dynamo, opset, form", [
    ("none", False, 17, {"Erf"}),            # x * 0.5 * (1 + erf(x / sqrt(2)))
    ("tanh", True, 18, {"Pow", "Tanh"}),     # 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
    ("none", False, 20, {"Gelu"}),           # the Gelu op
])
def test_ffn_neurons_are_one_group_for_every_gelu_form(tmp_path, approximate, dynamo, opset, form):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = _FeedForward(approximate).eval()
    path = export(module, tmp_path / "ffn.onnx", opset=opset, dynamo=dynamo, input_shape=(2, TOKENS, DIM))
    model = canonicalize(load_model(path)).model
    assert form <= {n.op_type for n in model.graph.node}
    analysis = analyse_channels(model)
    neurons = next(g for g in analysis.groups if g.size == 2 * DIM)
    assert neurons.prunable, neurons.reason
    assert len(neurons.producers) == 1 and len(neurons.consumers) == 1
    keep = np.arange(0, 2 * DIM, 2)
    pruned = apply_channel_maps(model, analysis, {neurons.index: ChannelMap.selection(2 * DIM, keep)})
    x = np.random.default_rng(0).standard_normal((3, TOKENS, DIM)).astype(np.float32)
    with torch.no_grad():
        module.down.weight[:, np.setdiff1d(np.arange(2 * DIM), keep)] = 0.0
        expected = module(torch.from_numpy(x)).numpy()
    assert np.abs(_run(pruned, x) - expected).max() <= 1e-5
