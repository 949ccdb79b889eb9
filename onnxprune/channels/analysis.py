"""Channel groups of an ONNX graph: which weight slices must be pruned together.

Every tensor that carries channels gets a layout: the axis holding them, the spaces laid end to
end along it (several after a Concat) and how many consecutive entries each channel spans (more
than one after a Flatten into a Gemm). One pass over the graph in node order applies each node's
rule (``channels/rules.py``, looked up by op type and opset); afterwards every uncut space is a
channel group holding all the weight slabs (members) that carry its channels and the shape
constants (fixes) that encode its size. An op without a rule makes the groups it touches
unprunable, with the reason; nothing is guessed.
"""

from __future__ import annotations

import onnx

from onnxprune.channels import rules, weight_rules  # noqa: F401  (they register the built-in rules)
from onnxprune.channels.model import ChannelAnalysis, ChannelGroup
from onnxprune.channels.registry import lookup
from onnxprune.channels.walker import Walker


def analyse_channels(model: onnx.ModelProto) -> ChannelAnalysis:
    """Channel groups and shape fixes of a canonical model (weights as initializers)."""
    walker = Walker(model, lookup)
    for node in model.graph.node:
        walker.visit(node)
    return walker.finish()


def find_groups(model: onnx.ModelProto) -> list[ChannelGroup]:
    """The channel groups of a canonical model, in graph order, each with its size, members and,
    when it cannot be pruned, the reason."""
    return analyse_channels(model).groups
