"""Channel-group analysis on real exports and hand-built graphs, and the graph surgery it drives:
coupled layers found, unknown ops refused with a reason, pruned graphs running in ONNX Runtime.

The strongest check is exactness: removing a set of channels must give exactly the model in
which those channels' consumer weights are zero (dead channels), for every prunable group."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nets import NETS, export, random_data
from onnxprune.graph.canonical import canonicalize
from onnxprune.channels.analysis import analyse_channels, find_groups
from onnxprune.channels.batchnorm import fold_batchnorms
from onnxprune.channels.model import CHANNELWISE, CONSUMER
from onnxprune.channels.surgery import ChannelMap, apply_channel_maps
from onnxprune.errors import ConfigError
from onnxprune.graph.io import load_model
from onnxprune.methods.structured.l1_channel import ChannelConfig
from onnxprune.methods import prune_model
from onnxprune.runtime.sessions import make_session

EXPORTS = {"legacy": (False, 13), "dynamo": (True, None)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(name, exporter) -> canonical model of a tests/nets.py net, exported once per module."""
    folder = tmp_path_factory.mktemp("groups")
    cache: dict[tuple[str, str], onnx.ModelProto] = {}

    def get(name: str, exporter: str = "legacy") -> onnx.ModelProto:
        if (name, exporter) not in cache:
            dynamo, opset = EXPORTS[exporter]
            path = export(NETS[name].build(), folder / f"{name}-{exporter}.onnx", opset=opset, dynamo=dynamo,
                          input_shape=NETS[name].input_shape())
            cache[(name, exporter)] = canonicalize(load_model(path)).model
        return cache[(name, exporter)]

    return get


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return make_session(model, device="cpu").run(None, inputs)[0]


def by_producers(groups, *names: str):
    """The group whose producers include every node name containing each of ``names``."""
    for group in groups:
        if all(any(n in p for p in group.producers) for n in names):
            return group
    raise AssertionError(f"no group produced by {names}: {[g.producers for g in groups]}")


def assert_dead_channels_exact(model: onnx.ModelProto, inputs: dict[str, np.ndarray], tolerance: float = 1e-5) -> int:
    """For every prunable group, slicing half its channels out equals zeroing their consumers."""
    analysis = analyse_channels(model)
    rng = np.random.default_rng(0)
    for group in analysis.prunable():
        keep = np.sort(rng.choice(group.size, max(1, group.size // 2), replace=False))
        mask = np.zeros(group.size)
        mask[keep] = 1.0
        sliced = apply_channel_maps(model, analysis, {group.index: ChannelMap.selection(group.size, keep)})
        dead = apply_channel_maps(model, analysis, {group.index: ChannelMap(np.eye(group.size), np.diag(mask))})
        expected = run(dead, inputs)
        got = run(sliced, inputs)
        assert got.shape == expected.shape
        scale = max(1.0, float(np.abs(expected).max()))
        assert np.abs(got - expected).max() <= tolerance * scale, f"group {group.index} ({group.producers})"
    return len(analysis.prunable())


# ----- coupled layers in real exports ------------------------------------------------------------

@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_resnet_residual_adds_couple_producers(exported, exporter):
    groups = find_groups(exported("resnet", exporter))
    sizes = [g.size for g in groups]
    assert sizes == [8, 8, 16, 16, 10]
    stream = groups[0]  # stem + first block's second conv, added by the identity residual
    assert len(stream.producers) == 2 and len(stream.consumers) == 3 and stream.prunable
    last = groups[3]  # second block's conv2 + 1x1 shortcut, read by the classifier through pool+flatten
    assert len(last.producers) == 2 and last.prunable
    assert [m.op_type for m in last.members if m.role == CONSUMER] == ["Gemm"]
    assert not groups[-1].prunable and "graph output" in groups[-1].reason


def test_mobilenet_depthwise_is_channelwise(exported):
    model = exported("mobilenet")
    analysis = analyse_channels(model)
    expand = [g for g in analysis.groups if any(m.role == CHANNELWISE for m in g.members)]
    assert [g.size for g in expand] == [32, 32, 64] and all(g.prunable for g in expand)
    for group in expand:
        depthwise = [m for m in group.members if m.role == CHANNELWISE]
        assert {m.op_type for m in depthwise} == {"Conv"} and any(m.weight for m in depthwise)
    assert sum(f.kind == "group" for f in analysis.fixes) == 3
    residual = [g for g in analysis.groups if len(g.producers) == 2]
    assert [g.size for g in residual] == [8, 16]


def test_densenet_concat_offsets(exported):
    groups = find_groups(exported("densenet"))
    stem, first, second, transition = groups[:4]
    assert (stem.size, first.size, second.size, transition.size) == (8, 4, 4, 12)
    assert all(g.prunable for g in groups[:4])
    # the stem's 8 channels start every concatenation, the first layer's 4 follow at offset 8
    assert {m.offset for m in stem.members if m.role == CONSUMER} == {0}
    assert {m.offset for m in first.members if m.role == CONSUMER} == {8}
    assert {m.offset for m in second.members if m.role == CONSUMER} == {12}
    # pre-activation BatchNorms on the concatenation hold per-channel members of each group
    assert any(m.op_type == "BatchNormalization" for m in first.members if m.role == CHANNELWISE)


def test_senet_gate_joins_trunk(exported):
    groups = find_groups(exported("senet"))
    trunk = by_producers(groups, "stem", "fc2")
    assert trunk.size == 16 and trunk.prunable
    assert any("fc1" in c for c in trunk.consumers)
    squeeze = by_producers(groups, "fc1")
    assert squeeze.size == 4 and squeeze.prunable


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_shufflenet_refuses_grouped_conv_and_shuffle(exported, exporter):
    groups = find_groups(exported("shufflenet", exporter))
    reasons = " ".join(g.reason for g in groups if not g.prunable)
    assert "grouped convolution (group=4)" in reasons
    # the shuffle's reshape into [N, groups, C/groups, ...] is refused: C/groups computed at run
    # time (legacy) or the channels not regrouped on one axis by the reshape back (dynamo)
    assert "reshape into heads computes the head size" in reasons or "reshape splits the channels" in reasons
    branch = [g for g in groups if g.prunable]
    assert [g.size for g in branch] == [8, 8]  # each unit's 1x1 -> depthwise -> 1x1 inner channels


def test_transformer_prunes_mlp_hidden_only(exported):
    groups = find_groups(exported("transformer"))
    prunable = [g for g in groups if g.prunable]
    assert [g.size for g in prunable] == [32, 32]
    assert all(m.op_type == "MatMul" for g in prunable for m in g.members if m.weight)
    attention = [g for g in groups if not g.prunable and "Reshape" in g.reason]
    assert len(attention) == 6  # q, k, v of two layers: heads split the channels


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "densenet", "senet", "shufflenet", "transformer"])
def test_pruned_graphs_run_and_dead_channels_are_exact(exported, name):
    model = exported(name, "legacy")
    inputs = random_data(model, 4).inputs
    assert assert_dead_channels_exact(model, inputs) >= 2
    pruned = prune_model("l1-channel", model, ChannelConfig(sparsity=0.5)).model
    out = run(pruned, inputs)
    assert out.shape == (4, 10)
    before = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    after = sum(int(np.prod(t.dims)) for t in pruned.graph.initializer)
    assert after < 0.85 * before
    # names, dynamic batch axis, opset and the output's shape info survive
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]
    assert pruned.graph.output[0] == model.graph.output[0]
    assert pruned.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert list(pruned.opset_import) == list(model.opset_import)


def test_dynamo_exports_fix_reshape_targets(exported):
    for name in ("resnet", "senet", "mobilenet"):
        model = exported(name, "dynamo")
        analysis = analyse_channels(model)
        assert any(f.kind == "entry" for f in analysis.fixes), name
        inputs = random_data(model, 3).inputs
        assert assert_dead_channels_exact(model, inputs) >= 3
        assert run(prune_model("l1-channel", model, ChannelConfig(sparsity=0.5)).model, inputs).shape == (3, 10)


# ----- flatten into Gemm, Split, shared weights, BatchNorm folding --------------------------------

class _FlattenNet(nn.Module):
    """Two convs concatenated, flattened without pooling into a Linear: every channel is 4x4 inputs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, 2, 1), nn.Conv2d(3, 5, 3, 2, 1)
        self.bn = nn.BatchNorm2d(11)
        self.fc1, self.fc2 = nn.Linear(11 * 16, 12), nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(h, 1))))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_flatten_into_gemm_expands_each_channel(tmp_path, exporter):
    torch.manual_seed(0)
    dynamo, opset = EXPORTS[exporter]
    path = export(_FlattenNet().eval(), tmp_path / "flat.onnx", opset=opset, dynamo=dynamo, input_shape=(2, 3, 8, 8))
    model = canonicalize(load_model(path)).model
    groups = find_groups(model)
    a, b = groups[0], groups[1]
    assert (a.size, b.size) == (6, 5) and a.prunable and b.prunable
    fc_a = next(m for m in a.members if m.role == CONSUMER)
    fc_b = next(m for m in b.members if m.role == CONSUMER)
    assert (fc_a.op_type, fc_a.block, fc_a.offset) == ("Gemm", 16, 0)
    assert (fc_b.block, fc_b.offset) == (16, 6 * 16)
    inputs = random_data(model, 4).inputs
    assert assert_dead_channels_exact(model, inputs) == 3
    pruned = prune_model("l1-channel", model, ChannelConfig(sparsity=0.5)).model
    weights = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    fc1 = next(m.tensor for m in a.members if m.role == CONSUMER)
    assert weights[fc1] == (6, (3 + 2) * 16)  # 12 -> 6 outputs, 11 -> 5 channels x 16 inputs each
    assert run(pruned, inputs).shape == (4, 10)


def _graph(nodes, inits, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return canonicalize(model).model


def _conv_weights(rng, *shapes) -> dict[str, np.ndarray]:
    return {f"w{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}


def test_split_cuts_a_group_and_fixes_its_sizes():
    """x -> Conv(8) -> Split [3, 5] -> Conv, Conv -> Concat -> Conv(4): two groups, Split sizes rewritten."""
    rng = np.random.default_rng(0)
    inits = _conv_weights(rng, (8, 2, 1, 1), (6, 3, 1, 1), (6, 5, 1, 1), (4, 12, 1, 1))
    inits["split"] = np.array([3, 5], np.int64)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0"),
             helper.make_node("Relu", ["a"], ["r"], name="r0"),
             helper.make_node("Split", ["r", "split"], ["s0", "s1"], name="split", axis=1),
             helper.make_node("Conv", ["s0", "w1"], ["b0"], name="c1"),
             helper.make_node("Conv", ["s1", "w2"], ["b1"], name="c2"),
             helper.make_node("Concat", ["b0", "b1"], ["cat"], name="cat", axis=1),
             helper.make_node("Relu", ["cat"], ["rc"], name="r1"),
             helper.make_node("Conv", ["rc", "w3"], ["y"], name="c3")]
    model = _graph(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])])
    analysis = analyse_channels(model)
    sizes = [g.size for g in analysis.groups]
    assert sizes == [3, 5, 6, 6, 4]
    assert [f.kind for f in analysis.fixes] == ["split"]
    inputs = {"x": rng.standard_normal((2, 2, 4, 4)).astype(np.float32)}
    assert assert_dead_channels_exact(model, inputs) == 4
    pruned = prune_model("l1-channel", model, ChannelConfig(sparsity=0.4)).model
    split = next(t for t in pruned.graph.initializer if t.name == "split")
    assert numpy_helper.to_array(split).tolist() == [2, 3]
    assert run(pruned, inputs).shape == (2, 4, 4, 4)


def test_shared_weight_couples_its_readers():
    """One weight read by two Convs on two inputs: both outputs must be pruned alike."""
    rng = np.random.default_rng(1)
    inits = _conv_weights(rng, (6, 2, 1, 1), (3, 6, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="ca"),
             helper.make_node("Conv", ["z", "w0"], ["b"], name="cb"),
             helper.make_node("Mul", ["a", "b"], ["m"], name="mul"),
             helper.make_node("Conv", ["m", "w1"], ["y"], name="out")]
    model = _graph(nodes, inits, [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2, 3, 3]) for n in "xz"],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 3, 3])])
    groups = find_groups(model)
    assert groups[0].size == 6 and groups[0].prunable and set(groups[0].producers) == {"ca", "cb"}
    inputs = {n: rng.standard_normal((2, 2, 3, 3)).astype(np.float32) for n in "xz"}
    assert assert_dead_channels_exact(model, inputs) == 1


def test_batchnorm_folding_is_exact_on_the_bundled_cnn():
    from pathlib import Path

    from onnxprune.data import load_data

    root = Path(__file__).resolve().parents[1] / "models"
    model = canonicalize(load_model(root / "cnn.onnx")).model
    folded, count = fold_batchnorms(model)
    assert count == sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 9
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    data = load_data(root / "cnn_test.npz", model).take(64)
    assert np.abs(run(folded, data.inputs) - run(model, data.inputs)).max() <= 1e-4
    # pruning nothing reproduces the dense model: folding and surgery lose nothing
    same = prune_model("l1-channel", model, ChannelConfig(sparsity=0.0)).model
    assert np.abs(run(same, data.inputs) - run(model, data.inputs)).max() <= 1e-4


# ----- refusals --------------------------------------------------------------------------------

def _lrn_model() -> onnx.ModelProto:
    """Conv(6) -> LRN (mixes neighbouring channels) -> Conv(4), and a plain Conv(5) -> Conv branch."""
    rng = np.random.default_rng(2)
    inits = _conv_weights(rng, (6, 3, 1, 1), (4, 6, 1, 1), (5, 3, 1, 1), (4, 5, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0"),
             helper.make_node("LRN", ["a"], ["n"], name="lrn", size=3),
             helper.make_node("Conv", ["n", "w1"], ["p"], name="c1"),
             helper.make_node("Conv", ["x", "w2"], ["b"], name="c2"),
             helper.make_node("Relu", ["b"], ["rb"], name="relu"),
             helper.make_node("Conv", ["rb", "w3"], ["q"], name="c3"),
             helper.make_node("Add", ["p", "q"], ["y"], name="add")]
    return _graph(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])])


def test_unknown_op_makes_its_group_unprunable():
    model = _lrn_model()
    groups = find_groups(model)
    lrn = groups[0]
    assert lrn.size == 6 and not lrn.prunable
    assert "LRN node 'lrn'" in lrn.reason and "unknown channel semantics" in lrn.reason
    assert groups[2].size == 5 and groups[2].prunable
    with pytest.raises(ConfigError, match="group 0 cannot be pruned: LRN node 'lrn'"):
        prune_model("l1-channel", model, ChannelConfig(sparsity=0.5, group=0))
    result = prune_model("l1-channel", model, ChannelConfig(sparsity=0.5))
    skipped = {s["group"]: s["reason"] for s in result.details["skipped"]}
    assert "LRN" in skipped[0] and "graph output" in skipped[1]
    assert [g["group"] for g in result.details["groups"]] == [2]
    shapes = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    assert shapes["w0"] == (6, 3, 1, 1) and shapes["w2"] == (2, 3, 1, 1) and shapes["w3"] == (4, 2, 1, 1)


def test_custom_domain_op_is_refused_with_its_name():
    rng = np.random.default_rng(3)
    inits = _conv_weights(rng, (6, 3, 1, 1), (4, 6, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0"),
             helper.make_node("Magic", ["a"], ["m"], name="magic", domain="com.example"),
             helper.make_node("Conv", ["m", "w1"], ["y"], name="c1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    group = find_groups(model)[0]
    assert not group.prunable and "com.example.Magic" in group.reason


def test_bad_group_index_and_empty_group_are_config_errors(exported):
    model = exported("resnet")
    with pytest.raises(ConfigError, match="group 9 does not exist; this model has 5 channel group"):
        prune_model("l1-channel", model, ChannelConfig(sparsity=0.5, group=9))
    with pytest.raises(ConfigError, match="group must be a group index"):
        ChannelConfig(group="first")
    with pytest.raises(ConfigError, match="round_to must be >= 1"):
        ChannelConfig(round_to=0)
    with pytest.raises(ConfigError, match="importance must be one of"):
        ChannelConfig(importance="l3")


def test_weight_tied_across_a_graph_input_axis_is_not_pruned():
    """x @ W → tanh → @ W: W's rows are read from the graph input by the first MatMul, so the group
    that would slice them (the first MatMul's output) must be refused, and pruning changes nothing."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "tied"], ["h1"], name="mm1"), helper.make_node("Tanh", ["h1"], ["t1"]),
         helper.make_node("MatMul", ["t1", "tied"], ["h2"], name="mm2"), helper.make_node("Tanh", ["h2"], ["t2"]),
         helper.make_node("MatMul", ["t2", "head"], ["y"], name="head")],
        "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "tied"),
         numpy_helper.from_array(rng.standard_normal((16, 10)).astype(np.float32), "head")])
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)).model
    tied = [g for g in find_groups(model) if any(m.tensor == "tied" for m in g.members)]
    assert tied and all(not g.prunable and "also read by" in g.reason for g in tied)
    result = prune_model("l1-channel", model, ChannelConfig(sparsity=0.5))
    assert [list(t.dims) for t in result.model.graph.initializer if t.name == "tied"] == [[16, 16]]
