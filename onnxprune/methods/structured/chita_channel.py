"""Structured CHITA (``chita-channel``, after OSSCAR): choose each group's kept channels S to minimise
its consumers' reconstruction error after the optimal refit, then refit them (``reconstruction.py``).

For a consumer with design Z = [X_G, 1] (a channel is a block of columns: kh·kw for a Conv), Gram
``G = ZᵀZ + λ`` and target T = X_G W_G, the refit on S explains ``tr(V_Sᵀ G_SS⁻¹ V_S)`` of ``‖T‖²``
(V = ZᵀT), so the error is ``‖T‖² − tr(V_Sᵀ G_SS⁻¹ V_S)``, the Schur-complement form. With
B = G_SS⁻¹ V_S (the refit weights) and Q = G_SS⁻¹, removing channel j costs ``tr(B_jᵀ Q_jj⁻¹ B_j)`` and
adding r gains ``tr(g_rᵀ M_r⁻¹ g_r)`` (M_r = G_rr − G_rS Q G_Sr, g_r = V_r − G_rS B). Greedy backward
elimination removes the cheapest channel at a time with a block downdate of Q; a swap search then
trades a removed channel for a kept one while that lowers the error. Each consumer's error counts
relative to its ‖T‖², summed over the group's consumers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import numpy as np
import onnx
from tqdm import tqdm

from onnxprune.data import Dataset
from onnxprune.methods.base import Interval
from onnxprune.methods.structured.l1_channel import selection_plan
from onnxprune.methods.structured.reconstruction import ConsumerInput
from onnxprune.methods.structured.session import ChannelConfig, ChannelSession, GroupView, select_top

log = logging.getLogger(__name__)

CANDIDATES = 4  # removed channels tried per swap round, the ones whose return gains most


@dataclass
class ChitaChannelConfig(ChannelConfig):
    """Channel-pruning options plus the selection's. ``swaps`` (default 20): at most this many swaps of a
    removed channel for a kept one after the greedy elimination (0: greedy only). Reconstruction is on
    by default, since the method needs calibration data anyway."""

    swaps: int = 20

    checks = {"swaps": Interval(0, None, what="a swap count (an integer)")}


class ConsumerFit:
    """The optimal refit of one consumer on a set of channels, updated as channels leave and return."""

    def __init__(self, inp: ConsumerInput, values: dict[str, np.ndarray], ridge: float, size: int) -> None:
        gram, cross, target = inp.design(values)
        free = size * inp.block
        penalty = np.r_[np.ones(free), np.zeros(len(gram) - free)]
        lam = ridge * max(float(np.mean(np.diag(gram)[:free])), 1e-30) + 1e-12 * float(np.max(np.diag(gram)))
        self.gram, self.cross, self.block = gram + np.diag(lam * penalty), cross, inp.block
        self.target, self.scale = target, 1.0 / max(target, 1e-300)
        self.active = np.arange(len(gram))  # design positions in S (the constant, if any, stays)
        self.Q = np.linalg.inv(self.gram)
        self.B = self.Q @ cross

    def copy(self) -> "ConsumerFit":
        other = object.__new__(ConsumerFit)
        other.__dict__.update(self.__dict__)
        other.active, other.Q, other.B = self.active.copy(), self.Q.copy(), self.B.copy()
        return other

    def error(self) -> float:
        """Relative error of the refit on the current set."""
        return (self.target - float(np.sum(self.cross[self.active] * self.B))) * self.scale

    def _slots(self, channels: np.ndarray) -> np.ndarray:
        """``[len(channels), block]`` indices into ``active`` of each channel's columns."""
        where = np.full(len(self.gram), -1)
        where[self.active] = np.arange(len(self.active))
        return where[channels[:, None] * self.block + np.arange(self.block)]

    def removal_costs(self, channels: np.ndarray) -> np.ndarray:
        """Relative error added by removing each of ``channels`` (all in S) alone."""
        slots = self._slots(channels)
        blocks = self.Q[slots[:, :, None], slots[:, None, :]]
        rows = self.B[slots]
        return np.einsum("ckd,ckd->c", rows, np.linalg.solve(blocks, rows)) * self.scale

    def remove(self, channel: int) -> None:
        """Drop a channel from S: block downdate of Q and B."""
        slot = self._slots(np.array([channel]))[0]
        rest = np.setdiff1d(np.arange(len(self.active)), slot)
        link = self.Q[np.ix_(rest, slot)] @ np.linalg.inv(self.Q[np.ix_(slot, slot)])
        self.Q = self.Q[np.ix_(rest, rest)] - link @ self.Q[np.ix_(slot, rest)]
        self.B = self.B[rest] - link @ self.B[slot]
        self.active = self.active[rest]

    def _schur(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each channel r outside S: its design positions, M_r and g_r."""
        positions = channels[:, None] * self.block + np.arange(self.block)
        flat = positions.ravel()
        across = self.gram[np.ix_(flat, self.active)]  # G_rS
        link = across @ self.Q
        k = self.block
        inner = self.gram[flat[:, None], flat[None, :]].reshape(len(channels), k, len(channels), k)
        diag = inner[np.arange(len(channels)), :, np.arange(len(channels)), :]
        M = diag - np.einsum("rka,rla->rkl", link.reshape(len(channels), k, -1), across.reshape(len(channels), k, -1))
        g = (self.cross[flat] - across @ self.B).reshape(len(channels), k, -1)
        return positions, M, g

    def addition_gains(self, channels: np.ndarray) -> np.ndarray:
        """Relative error removed by returning each of ``channels`` (all outside S) alone."""
        _, M, g = self._schur(channels)
        return np.einsum("ckd,ckd->c", g, np.linalg.solve(M, g)) * self.scale

    def add(self, channel: int) -> None:
        """Return a channel to S: block update of Q and B."""
        positions, M, g = self._schur(np.array([channel]))
        inverse = np.linalg.inv(M[0])
        q = self.Q @ self.gram[np.ix_(self.active, positions[0])]
        size = len(self.active)
        Q = np.empty((size + self.block, size + self.block))
        Q[:size, :size] = self.Q + q @ inverse @ q.T
        Q[:size, size:] = -q @ inverse
        Q[size:, :size] = Q[:size, size:].T
        Q[size:, size:] = inverse
        step = inverse @ g[0]
        self.B = np.vstack([self.B - q @ step, step])
        self.Q, self.active = Q, np.r_[self.active, positions[0]]


def _total(fits: list[ConsumerFit], method: str, channels: np.ndarray) -> np.ndarray:
    """A per-channel quantity (removal costs or addition gains) summed over the group's consumers."""
    return np.sum([getattr(fit, method)(channels) for fit in fits], axis=0)


def _swap_round(fits: list[ConsumerFit], kept: list[int], removed: list[int]) -> tuple[list[ConsumerFit], int, int] | None:
    """The first swap (return r, remove s) among the most promising r that lowers the error, or None."""
    error = sum(fit.error() for fit in fits)
    gains = _total(fits, "addition_gains", np.array(removed))
    for r in np.array(removed)[np.argsort(-gains)[:CANDIDATES]]:
        trial = [fit.copy() for fit in fits]
        for fit in trial:
            fit.add(int(r))
        costs = _total(trial, "removal_costs", np.array(kept))
        s = kept[int(np.argmin(costs))]
        for fit in trial:
            fit.remove(s)
        if sum(fit.error() for fit in trial) < error * (1 - 1e-9):
            return trial, int(r), s
    return None


def _eliminate(fits: list[ConsumerFit], view: GroupView, count: int) -> tuple[list[int], list[int], list[float]]:
    """Greedy backward elimination down to ``count`` channels: the channels kept, those removed (in
    order), and the summed relative error of the refit after each step (``errors[i]``: ``i`` removed)."""
    kept, removed, errors = list(range(view.group.size)), [], [sum(fit.error() for fit in fits)]
    for _ in tqdm(range(view.group.size - count), desc=f"group {view.group.index}: eliminate", leave=False,
                  disable=None):
        channel = kept[int(np.argmin(_total(fits, "removal_costs", np.array(kept))))]
        for fit in fits:
            fit.remove(channel)
        kept.remove(channel)
        removed.append(channel)
        errors.append(sum(fit.error() for fit in fits))
    return kept, removed, errors


def select_channels(view: GroupView, count: int, ridge: float, swaps: int) -> tuple[np.ndarray, float]:
    """The ``count`` channels of the group whose optimal refit reconstructs its consumers best, and the
    summed relative error of that refit."""
    fits = [ConsumerFit(inp, view.values, ridge, view.group.size) for inp in view.inputs]
    kept, removed, _ = _eliminate(fits, view, count)
    for _ in range(swaps if removed else 0):
        found = _swap_round(fits, kept, removed)
        if found is None:
            break
        fits, returned, dropped = found
        kept = [c for c in kept if c != dropped] + [returned]
        removed = [c for c in removed if c != returned] + [dropped]
    return np.sort(np.array(kept)), sum(fit.error() for fit in fits)


def path_errors(config: ChitaChannelConfig, view: GroupView, counts: Sequence[int]) -> list[float]:
    """The group's summed relative refit error at each keep count, read off one greedy elimination down
    to the smallest count (the swaps that follow a selection can only lower it)."""
    fits = [ConsumerFit(inp, view.values, config.ridge, view.group.size) for inp in view.inputs]
    errors = _eliminate(fits, view, min(counts))[2]
    return [errors[view.group.size - count] for count in counts]


def _chita_select(config: ChitaChannelConfig, view: GroupView, count: int) -> np.ndarray:
    """Combinatorial selection on the consumers' Grams; by score when no consumer could be captured."""
    if not view.inputs:
        log.info("group %d: no captured consumer, channels chosen by %s importance", view.group.index,
                 config.importance)
        return select_top(view, count)
    keep, error = select_channels(view, count, config.ridge, config.swaps)
    log.info("group %d: keep %d of %d channels, relative reconstruction error %.4g", view.group.index, count,
             view.group.size, error)
    return keep


def chita_channel_session(model: onnx.ModelProto, config: ChitaChannelConfig,
                          calib: Dataset | None = None) -> ChannelSession:
    """A session that picks channels by their consumers' reconstruction error and refits them."""
    return ChannelSession(model, config, calib, selection_plan, select=partial(_chita_select, config),
                          needs_inputs=True, extra={"swaps": config.swaps}, errors=partial(path_errors, config))
