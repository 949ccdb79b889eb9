"""A session's Gram matrices, resident while the process stays within its memory budget and on disk beyond
it: a big model's Grams (BERT-base: 1.2 GB in float64) need not all be held, and a spilled one is read back
only when its layer is solved. What is resident never changes a result (a spilled Gram reads back exactly)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from tqdm.auto import tqdm

from onnxprune.activations.gram import GramStats, capture_grams, resident_bytes
from onnxprune.activations.layers import LayerSource
from onnxprune.data import Dataset
from onnxprune.units import format_bytes

log = logging.getLogger(__name__)


class GramStore(Mapping[str, GramStats]):
    """Gram statistics by layer name. ``add`` keeps one resident while the process's resident memory plus
    ``reserve`` (the work that must still fit beside it, e.g. the largest layer's solve) stays within
    ``limit``, else writes it to a private temporary folder (removed with the store)."""

    def __init__(self, limit: int, reserve: int = 0) -> None:
        self.limit, self.reserve = limit, reserve
        self._held: dict[str, GramStats] = {}
        self._spilled: dict[str, tuple[Path, int, bool]] = {}
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def add(self, name: str, stats: GramStats, ahead: int = 0) -> None:
        """Keep ``stats`` resident, or on disk when the process is over its budget with ``ahead`` bytes (work
        that comes before the reserve's, e.g. the next capture pass) or the reserve left beside it."""
        if self._over(max(self.reserve, ahead)):
            self._spill(name, stats)
        else:
            self._held[name] = stats

    def trim(self, extra: int) -> None:
        """Move resident Grams to disk, largest first, until the process has ``extra`` bytes left within its
        limit (after a prune: a later one may still need them, the checks of the written model need the memory)."""
        for name in sorted(self._held, key=lambda n: -self._held[n].nbytes):
            if not self._over(extra):
                return
            self._spill(name, self._held.pop(name))

    def _over(self, extra: int | None = None) -> bool:
        held = resident_bytes()
        return held is not None and held + (self.reserve if extra is None else extra) > self.limit

    def _spill(self, name: str, stats: GramStats) -> None:
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="onnxprune-grams-")
            log.info("process at %s with --max-memory %s: Gram matrices beyond it go to %s",
                     format_bytes(resident_bytes()), format_bytes(self.limit), self._folder.name)
        path = Path(self._folder.name) / f"{len(self._spilled):05d}.npz"
        np.savez(path, H=stats.H, mean=stats.mean)
        self._spilled[name] = (path, stats.n_rows, stats.paired)

    @property
    def spilled(self) -> int:
        """How many Grams are on disk."""
        return len(self._spilled)

    def __getitem__(self, name: str) -> GramStats:
        if name in self._held:
            return self._held[name]
        path, n_rows, paired = self._spilled[name]
        with np.load(path) as found:
            return GramStats(found["H"], n_rows, found["mean"], paired)

    def __iter__(self) -> Iterator[str]:
        return iter([*self._held, *self._spilled])

    def __len__(self) -> int:
        return len(self._held) + len(self._spilled)


# Share of the budget a capture pass sizes its batch within: ONNX Runtime's arena grows past what the probe
# measured (BERT-base's capture by about 150 MB at 4 GB).
CAPTURE_SHARE = 15 / 16


def gram_bytes(source: LayerSource) -> int:
    """Bytes of one source's float64 Gram statistics (H and the row mean of every group)."""
    return source.groups * (source.d_in ** 2 + source.d_in) * 8


def capture_passes(sources: Sequence[LayerSource], room: int) -> list[list[LayerSource]]:
    """The sources split, in order, into capture passes whose Grams take at most half of ``room`` (the other
    half is for a batch of activations), one source per pass at least; one pass when all fit."""
    limit = max(room // 2, max((gram_bytes(s) for s in sources), default=0))
    passes: list[list[LayerSource]] = [[]]
    total = 0
    for source in sources:
        size = gram_bytes(source)
        if passes[-1] and total + size > limit:
            passes.append([])
            total = 0
        passes[-1].append(source)
        total += size
    return passes


def capture_to_store(model: onnx.ModelProto, data: Dataset, sources: Sequence[LayerSource], store: GramStore, *,
                     batch_size: int, max_memory: int, model_bytes: int) -> int:
    """Every source's Gram statistics into ``store``, in as few ORT passes over ``data`` as keep the process
    within ``max_memory`` (what it holds now, ONNX Runtime's session, about twice ``model_bytes``, the model's
    serialized size, each pass's Grams and one batch, sized within ``CAPTURE_SHARE`` of the budget); returns the
    number of passes. The Grams do not depend on how the sources are split."""
    session = 2 * model_bytes  # what a pass's ORT session holds: 840 MB for BERT-base's 440
    room = max_memory - (resident_bytes() or 0) - session
    passes = capture_passes(sources, room)
    if len(passes) > 1:
        log.info("capturing %d layer inputs in %d passes to stay within --max-memory %s", len(sources),
                 len(passes), format_bytes(max_memory))
    bar = tqdm(passes, desc="capture passes", unit="pass", leave=False, disable=True if len(passes) < 2 else None)
    for index, part in enumerate(bar):
        grams = capture_grams(model, data, part, batch_size=batch_size, max_memory=int(max_memory * CAPTURE_SHARE),
                              count_resident=True)
        # the next pass's session and Grams come beside what is kept (a 1.1 B decoder's fourth of seven passes
        # reached 17.1 GB with --max-memory 16G while earlier passes' Grams stayed resident)
        later = passes[index + 1] if index + 1 < len(passes) else []
        ahead = session + sum(gram_bytes(s) for s in later) if later else 0
        for source in part:
            store.add(source.name, grams.pop(source.name), ahead=ahead)
    return len(passes)
