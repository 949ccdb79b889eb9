"""What the channel analysis finds: groups of channels pruned together, the weight slabs
(members) that hold them and the shape constants (fixes) that spell their counts."""

from __future__ import annotations

from dataclasses import dataclass, field

# Member roles: writes the channel, per-channel parameter after the producer, reads the channel.
PRODUCER, CHANNELWISE, CONSUMER = "producer", "channelwise", "consumer"


@dataclass(frozen=True)
class Member:
    """One slab of an initializer that holds a group's channels.

    The group's channel ``c`` occupies entries ``offset + c*block`` to ``offset + (c+1)*block`` of
    ``axis``. ``role``: producer (writes the channel), channelwise (per-channel parameter after the
    producer: bias, depthwise kernel, BatchNorm statistics, constant operand) or consumer (reads it).
    ``weight`` marks Conv/Gemm/MatMul weights, the tensors importance and pairing vectors use.
    """

    role: str
    node: str
    op_type: str
    tensor: str
    axis: int
    offset: int
    block: int
    weight: bool


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together: ``size`` of them, held by ``members``.

    ``reasons`` is empty for a prunable group; otherwise it says what stops the pruning.
    """

    index: int
    size: int
    members: tuple[Member, ...]
    reasons: tuple[str, ...] = ()

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str | None:
        """Why the group cannot be pruned, as one line; None when it can."""
        return "; ".join(self.reasons) if self.reasons else None

    @property
    def producers(self) -> tuple[str, ...]:
        """Names of the nodes that write the group's channels."""
        return tuple(dict.fromkeys(m.node for m in self.members if m.role == PRODUCER))

    @property
    def consumers(self) -> tuple[str, ...]:
        """Names of the nodes that read the group's channels through a weight."""
        return tuple(dict.fromkeys(m.node for m in self.members if m.role == CONSUMER))

    def to_dict(self) -> dict:
        """A JSON-ready summary (for ``onnxprune inspect --json`` and reports)."""
        return {"index": self.index, "size": self.size, "prunable": self.prunable, "reason": self.reason,
                "producers": list(self.producers), "consumers": list(self.consumers),
                "members": [{"role": m.role, "node": m.node, "op": m.op_type, "tensor": m.tensor,
                             "axis": m.axis, "offset": m.offset, "block": m.block} for m in self.members]}


@dataclass(frozen=True)
class ShapeFix:
    """A constant or attribute that encodes channel counts and must follow the pruning.

    ``kind``: 'entry' (element ``position`` of the initializer at input ``slot`` of ``node``, e.g. a
    Reshape target), 'group' (a depthwise Conv's ``group`` attribute) or 'split' (the sizes of a
    Split along channels, one value per output). Each value is ``sum(channels * block)`` over its
    ``terms`` ((group index or -1, channels before pruning, block) triples): a pruned group counts
    its kept channels.
    """

    kind: str
    node: str
    terms: tuple[tuple[tuple[int, int, int], ...], ...]
    slot: int = 0
    position: int = 0


@dataclass
class ChannelAnalysis:
    """Every channel group of a model and the shape constants that depend on them."""

    groups: list[ChannelGroup]
    fixes: list[ShapeFix] = field(default_factory=list)

    def prunable(self) -> list[ChannelGroup]:
        """The groups that can be pruned."""
        return [g for g in self.groups if g.prunable]
