"""Channel spaces and where tensors keep them.

A *space* is a run of channels created by one producer (a Conv, Gemm or MatMul output). Residual
adds and shared weights unify spaces; Split and unequal concats cut them into consecutive pieces.
A reshape into [.., heads, d] regroups a run into a space of heads, d channels each: the run's
slabs become the heads' slabs at the end (attention heads are pruned whole). A tensor's
:class:`Layout` says which axis holds its channels and which spaces lie along it.
"""

from __future__ import annotations

from dataclasses import dataclass


class Spaces:
    """Union-find over channel runs; a run may be cut into consecutive pieces (Split, Concat)."""

    def __init__(self) -> None:
        self.size: list[int] = []
        self.parent: list[int] = []
        self.pieces: list[tuple[int, ...]] = []
        self.reasons: list[list[str]] = []
        self.heads: dict[int, tuple[int, int]] = {}  # run (a leaf when linked) -> (space of heads, channels per head)

    def new(self, size: int, reasons: list[str] | None = None) -> int:
        """A fresh space of ``size`` channels, unprunable for ``reasons`` if any."""
        self.size.append(size)
        self.parent.append(len(self.parent))
        self.pieces.append(())
        self.reasons.append(list(reasons or []))
        return len(self.size) - 1

    def find(self, space: int) -> int:
        """The root standing for every space unified with ``space``."""
        root = space
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[space] != root:
            self.parent[space], space = root, self.parent[space]
        return root

    def leaves(self, spaces: tuple[int, ...] | list[int]) -> list[int]:
        """The uncut roots that currently make up ``spaces``, in channel order."""
        out: list[int] = []
        for space in spaces:
            root = self.find(space)
            out.extend(self.leaves(self.pieces[root]) if self.pieces[root] else [root])
        return out

    def total(self, spaces: tuple[int, ...] | list[int]) -> int:
        """How many channels ``spaces`` hold together."""
        return sum(self.size[s] for s in spaces)

    def _cut(self, leaf: int, at: int) -> None:
        """Split an uncut root in two at channel ``at``; the pieces inherit its reasons."""
        inherited = self.reasons[leaf]
        self.pieces[leaf] = (self.new(at, inherited), self.new(self.size[leaf] - at, inherited))

    def _boundaries(self, spaces: tuple[int, ...] | list[int]) -> set[int]:
        cuts, pos = {0}, 0
        for leaf in self.leaves(spaces):
            pos += self.size[leaf]
            cuts.add(pos)
        return cuts

    def refine(self, spaces: tuple[int, ...] | list[int], cuts: set[int]) -> None:
        """Cut leaves until every channel offset in ``cuts`` falls on a leaf boundary."""
        while True:
            pos, cut_one = 0, False
            for leaf in self.leaves(spaces):
                inside = [c for c in cuts if pos < c < pos + self.size[leaf]]
                if inside:
                    self._cut(leaf, min(inside) - pos)
                    cut_one = True
                    break
                pos += self.size[leaf]
            if not cut_one:
                return

    def take(self, spaces: tuple[int, ...], start: int, stop: int) -> tuple[int, ...]:
        """The leaves covering channels ``start`` to ``stop`` of ``spaces``."""
        self.refine(spaces, {start, stop})
        out, pos = [], 0
        for leaf in self.leaves(spaces):
            if start <= pos and pos + self.size[leaf] <= stop:
                out.append(leaf)
            pos += self.size[leaf]
        return tuple(out)

    def unify(self, xs: tuple[int, ...], ys: tuple[int, ...]) -> bool:
        """Make channel ``c`` of ``xs`` and of ``ys`` one channel; False when their sizes differ."""
        if self.total(xs) != self.total(ys):
            return False
        while True:
            bx, by = self._boundaries(xs), self._boundaries(ys)
            if bx == by:
                break
            self.refine(xs, bx | by)
            self.refine(ys, bx | by)
        for a, b in zip(self.leaves(xs), self.leaves(ys)):
            a, b = self.find(a), self.find(b)
            if a != b:
                self.parent[b] = a
                self.reasons[a].extend(r for r in self.reasons[b] if r not in self.reasons[a])
        return True

    def split_heads(self, spaces: tuple[int, ...], per_head: int) -> tuple[int, ...] | None:
        """A space of heads for each leaf of ``spaces``, ``per_head`` consecutive channels each; None
        when a leaf is not a whole number of heads or is already split into heads of another size."""
        heads = []
        for leaf in self.leaves(spaces):
            if self.size[leaf] % per_head or self.heads.get(leaf, (0, per_head))[1] != per_head:
                return None
            if leaf not in self.heads:
                self.heads[leaf] = (self.new(self.size[leaf] // per_head), per_head)
            heads.append(self.heads[leaf][0])
        return tuple(heads)

    def settle_heads(self) -> None:
        """Carry every run's unifications and reasons over to its heads, once all are known.

        A run unified with another maps that one to its heads too (runs split into the same heads'
        size unify their heads); a run cut inside (e.g. a Split along it) cannot be pruned by heads.
        """
        settled: dict[int, tuple[int, int]] = {}
        for run, (head, per_head) in self.heads.items():
            root = self.find(run)
            if self.pieces[root]:
                reason = "channels split into heads are also cut into runs that are not whole heads"
                self.block((root,), reason)
                self.block((head,), reason)
                continue
            for reason in self.reasons[root]:
                self.block((head,), reason)
            seen = settled.setdefault(root, (head, per_head))
            if seen[1] != per_head or not self.unify((seen[0],), (head,)):
                self.block([seen[0], head], "the same channels are split into heads of different sizes")
        self.heads = settled

    def expand(self, spaces: tuple[int, ...], block: int) -> list[tuple[int, int]]:
        """The final leaves of ``spaces`` (laid ``block`` entries per channel) with their entries per
        channel: a run split into heads stands for its heads, ``per_head`` times the block (after
        :meth:`settle_heads`)."""
        out: list[tuple[int, int]] = []
        for leaf in self.leaves(spaces):
            head = self.heads.get(leaf)
            out.extend(self.expand((head[0],), block * head[1]) if head else [(leaf, block)])
        return out

    def block(self, spaces: tuple[int, ...] | list[int], reason: str) -> None:
        """Make every channel of ``spaces`` unprunable because of ``reason``."""
        for leaf in self.leaves(spaces):
            if reason not in self.reasons[leaf]:
                self.reasons[leaf].append(reason)


@dataclass(frozen=True)
class Layout:
    """Where a tensor keeps its channels: ``axis`` (of ``rank``), the spaces along it, entries per channel."""

    axis: int
    rank: int
    spaces: tuple[int, ...]
    block: int = 1


@dataclass(frozen=True)
class Span:
    """The channels of ``spaces`` laid end to end, ``block`` entries each: one count a shape fix spells."""

    spaces: tuple[int, ...]
    block: int
