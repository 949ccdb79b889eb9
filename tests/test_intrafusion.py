"""Intra-Fusion: the optimal-transport map, function preservation on duplicated channels, the
end-to-end gain over l1-channel on the bundled CNN, importance options and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nets import export, random_data
from onnxprune.graph.canonical import canonicalize
from onnxprune.channels.analysis import analyse_channels
from onnxprune.channels.surgery import ChannelMap, apply_channel_maps, group_slabs, read_initializers
from onnxprune.data import load_data
from onnxprune.errors import ConfigError
from onnxprune.validate.evaluation import evaluate
from onnxprune.graph.io import load_model
from onnxprune.methods import prune_model
from onnxprune.methods.structured.intrafusion import IntraFusionConfig
from onnxprune.methods.structured.l1_channel import ChannelConfig
from onnxprune.methods.structured.ot_fusion import fusion_maps, pairing_vectors, transport_plan
from onnxprune.pipeline import prune
from onnxprune.runtime.feeds import run_batched
from onnxprune.runtime.sessions import make_session

MODELS = Path(__file__).resolve().parents[1] / "models"


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return make_session(model, device="cpu").run(None, inputs)[0]


# ----- the transport map ----------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 24), fraction=st.floats(0.1, 0.9), seed=st.integers(0, 1000), weighted=st.booleans())
def test_transport_plan_holds_its_marginals(n, fraction, seed, weighted):
    rng = np.random.default_rng(seed)
    m = max(1, int(n * fraction))
    vectors = pairing_vectors([rng.standard_normal((n, 5)), rng.standard_normal((n, 3))])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    keep = np.sort(rng.choice(n, m, replace=False))
    importance = rng.random(n) + 0.01 if weighted else None
    plan = transport_plan(vectors, keep, importance)
    source = importance / importance.sum() if weighted else np.full(n, 1 / n)
    target = importance[keep] / importance[keep].sum() if weighted else np.full(m, 1 / m)
    assert plan.shape == (n, m) and (plan >= 0).all()
    assert np.allclose(plan.sum(axis=1), source, atol=1e-9)
    assert np.allclose(plan.sum(axis=0), target, atol=1e-9)
    assert np.count_nonzero(plan > 1e-15) <= n + m - 1  # an exact (vertex) solution, not entropic
    published, _ = fusion_maps(plan, "published")
    assert np.allclose(published.sum(axis=1), 1.0)
    producer, consumer = fusion_maps(plan, "preserving")
    assert np.allclose(producer.sum(axis=0), 1.0) and np.allclose(consumer.sum(axis=1), 1.0)


def test_kept_channels_receive_themselves_first():
    """With uniform marginals each kept channel's own mass goes to itself (zero cost)."""
    rng = np.random.default_rng(0)
    vectors = pairing_vectors([rng.standard_normal((10, 7))])
    keep = np.array([1, 4, 6, 9, 0])
    plan = transport_plan(vectors, keep)
    assert np.allclose(plan[keep, np.arange(len(keep))], 1 / 10)


# ----- function preservation ---------------------------------------------------------------------

class _Duplicated(nn.Module):
    """Conv(3→8) whose channels 4..7 copy channels 0..3 (weights, bias, and the next conv's columns)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 10)
        with torch.no_grad():
            self.conv1.weight[4:] = self.conv1.weight[:4]
            self.conv1.bias[4:] = self.conv1.bias[:4]
            self.conv2.weight[:, 4:] = self.conv2.weight[:, :4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def test_fusing_duplicates_preserves_the_function(tmp_path):
    torch.manual_seed(0)
    path = export(_Duplicated().eval(), tmp_path / "dup.onnx", opset=17, dynamo=False, input_shape=(2, 3, 8, 8))
    model = canonicalize(load_model(path)).model
    inputs = random_data(model, 8).inputs
    dense = run(model, inputs)
    analysis = analyse_channels(model)
    group = analysis.groups[0]
    assert group.size == 8 and group.prunable
    slabs = group_slabs(read_initializers(model), group)
    keep = np.arange(4)
    plan = transport_plan(pairing_vectors([s for m, s in slabs if m.weight]), keep)
    assert np.allclose(plan[4:], plan[:4])  # each copy is transported onto its original
    conv1 = next(m.tensor for m, _ in slabs if m.role == "producer" and m.weight)
    outputs = {}
    for normalization in ("preserving", "published"):
        fused = apply_channel_maps(model, analysis, {group.index: ChannelMap(*fusion_maps(plan, normalization))})
        assert [tuple(t.dims) for t in fused.graph.initializer if t.name == conv1] == [(4, 3, 3, 3)]
        outputs[normalization] = run(fused, inputs)
    assert np.abs(outputs["preserving"] - dense).max() <= 1e-5
    # the published map adds two copies on both sides: the same channels, doubled, reach conv2 twice over
    assert np.abs(outputs["published"] - dense).max() > 1e-2
    # dropping the copies instead loses half of conv2's input
    dropped = apply_channel_maps(model, analysis, {group.index: ChannelMap.selection(8, keep)})
    assert np.abs(run(dropped, inputs) - dense).max() > 1e-2


# ----- end to end on the bundled CNN --------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn():
    model = canonicalize(load_model(MODELS / "cnn.onnx")).model
    return model, load_data(MODELS / "cnn_test.npz", model).take(1000)


def accuracy(model: onnx.ModelProto, data) -> float:
    logits = run_batched(make_session(model, device="cpu", threads=2), data)[0]
    return float(np.mean(logits.argmax(axis=1) == data.labels))


def test_intrafusion_beats_l1_on_the_most_sensitive_group(cnn, tmp_path):
    model, data = cnn
    dense = accuracy(model, data)
    assert dense > 0.95
    groups = [g for g in analyse_channels(model).groups if g.prunable]
    assert [g.size for g in groups] == [32, 32, 64, 64, 128, 128]
    l1 = {g.index: accuracy(prune_model("l1-channel", model, ChannelConfig(sparsity=0.5, group=g.index)).model, data)
          for g in groups}
    sensitive = min(l1, key=l1.get)
    assert l1[sensitive] < dense - 0.20
    # through the real pipeline: file in, file out, evaluated in ORT
    out = tmp_path / "fused.onnx"
    outcome = prune(MODELS / "cnn.onnx", out, "intrafusion", sparsity=0.5, group=sensitive)
    assert outcome.details["groups"][0]["kept"] == groups[sensitive].size // 2
    fused = evaluate(out, data, device="cpu").accuracy
    assert fused >= l1[sensitive] + 0.10, (sensitive, l1, fused)
    pruned = onnx.load(str(out))
    assert [o.name for o in pruned.graph.output] == ["logits"]
    assert pruned.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_whole_network_round_to_and_importances(cnn):
    model, data = cnn
    rounded = prune_model("intrafusion", model, IntraFusionConfig(sparsity=0.3, round_to=8))
    assert [g["kept"] for g in rounded.details["groups"]] == [24, 24, 48, 48, 96, 96]
    assert accuracy(rounded.model, data) > 0.5
    calib = load_data(MODELS / "cnn_calib.npz", model).take(128)
    for importance in ("l2", "random", "taylor"):
        config = ChannelConfig(sparsity=0.3, group=4, importance=importance, seed=1)
        result = prune_model("l1-channel", model, config, calib)
        assert result.details["importance"] == importance
        assert accuracy(result.model, data) > 0.5, importance
    with pytest.raises(ConfigError, match="needs calibration data"):
        prune_model("l1-channel", model, ChannelConfig(sparsity=0.3, importance="taylor"))


# ----- bad input: clear errors, nothing written --------------------------------------------------

def test_bad_input_is_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "out.onnx"
    cases = [({"group": 99}, "group 99 does not exist"),
             ({"group": 6}, "group 6 cannot be pruned: reaches graph output 'logits'"),
             ({"normalization": "mine"}, "normalization must be one of"),
             ({"marginals": "zipf"}, "marginals must be one of")]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            prune(MODELS / "cnn.onnx", out, "intrafusion", sparsity=0.5, **options)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sparsity_leaving_no_channel(tmp_path):
    from nets import NETS

    path = export(NETS["senet"].build(), tmp_path / "se.onnx", opset=17, dynamo=False,
                  input_shape=NETS["senet"].input_shape())
    model = canonicalize(load_model(path)).model
    squeeze = next(g for g in analyse_channels(model).groups if g.size == 4)
    with pytest.raises(ConfigError, match=f"sparsity 0.9 would leave no channel in group {squeeze.index} "):
        prune_model("intrafusion", model, IntraFusionConfig(sparsity=0.9, group=squeeze.index))
    result = prune_model("intrafusion", model, IntraFusionConfig(sparsity=0.9))
    skipped = {s["group"]: s["reason"] for s in result.details["skipped"]}
    assert "would leave no channel" in skipped[squeeze.index]
    assert run(result.model, random_data(model, 2).inputs).shape == (2, 10)
