"""The rule registry of the channel analysis: user-declared semantics for custom-domain ops, rules
bounded to their opset range, and clear errors for clashing or missing registrations."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import channels
from onnxprune.channels.analysis import find_groups
from onnxprune.errors import ConfigError


def _custom_act_between_convs(version: int = 1) -> onnx.ModelProto:
    """x → Conv c0 (3→6) → com.example.MyAct → Conv c1 (6→4) → y, importing com.example ``version``."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 1, 1)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((4, 6, 1, 1)).astype(np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0"),
             helper.make_node("MyAct", ["a"], ["m"], name="act", domain="com.example"),
             helper.make_node("Conv", ["m", "w1"], ["y"], name="c1")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])], inits,
                              value_info=[helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 6, 4, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", version)])


def _first_group(model: onnx.ModelProto):
    group = find_groups(model)[0]
    assert group.size == 6 and group.producers == ("c0",)
    return group


def test_custom_op_blocks_until_registered_as_unary():
    model = _custom_act_between_convs()
    group = _first_group(model)
    assert not group.prunable and "com.example.MyAct has unknown channel semantics" in group.reason
    with channels.registered_op("MyAct", channels.unary, domain="com.example"):
        group = _first_group(model)
        assert group.prunable and group.consumers == ("c1",)
    assert not _first_group(model).prunable


def test_register_and_unregister_op():
    channels.register_op("MyAct", channels.elementwise, domain="com.example")
    try:
        assert _first_group(_custom_act_between_convs()).prunable
    finally:
        channels.unregister_op("MyAct", domain="com.example")
    assert not _first_group(_custom_act_between_convs()).prunable


def test_blocking_rule_gives_its_reason():
    with channels.registered_op("MyAct", channels.blocking("mixes channels in a way only its author knows"),
                                domain="com.example"):
        group = _first_group(_custom_act_between_convs())
    assert not group.prunable and "MyAct node 'act': mixes channels in a way only its author knows" in group.reason


def test_rule_is_not_used_outside_its_opset_range():
    with channels.registered_op("MyAct", channels.unary, domain="com.example", since=2, until=3):
        assert not _first_group(_custom_act_between_convs(version=1)).prunable
        assert _first_group(_custom_act_between_convs(version=2)).prunable
        assert _first_group(_custom_act_between_convs(version=3)).prunable
        group = _first_group(_custom_act_between_convs(version=4))
        assert not group.prunable and "com.example.MyAct has unknown channel semantics" in group.reason


def test_clashing_or_missing_registrations_are_config_errors():
    with pytest.raises(ConfigError, match=r"Relu already has a rule for opset 1 and later; call unregister_op"):
        channels.register_op("Relu", channels.unary)
    with channels.registered_op("MyAct", channels.unary, domain="com.example", until=5):
        with pytest.raises(ConfigError, match="com.example.MyAct already has a rule for opsets 1 to 5"):
            channels.register_op("MyAct", channels.unary, domain="com.example", since=3)
        channels.register_op("MyAct", channels.elementwise, domain="com.example", since=6)
        channels.unregister_op("MyAct", domain="com.example", since=6)
    with pytest.raises(ConfigError, match="no rule registered for com.example.MyAct"):
        channels.unregister_op("MyAct", domain="com.example")
    with pytest.raises(ConfigError, match="opset range 4 to 2 for com.example.MyAct is empty"):
        channels.register_op("MyAct", channels.unary, domain="com.example", since=4, until=2)
    with pytest.raises(ConfigError, match="must be a function"):
        channels.register_op("MyAct", "unary", domain="com.example")
