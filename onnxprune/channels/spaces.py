"""Channel spaces and where tensors keep them.

A *space* is a run of channels created by one producer (a Conv, Gemm or MatMul output). Residual
adds and shared weights unify spaces; Split and unequal concats cut them into consecutive pieces.
A tensor's :class:`Layout` says which axis holds its channels and which spaces lie along it.
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
