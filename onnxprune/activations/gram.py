"""Gram matrices ``H = XᵀX`` of layer inputs, accumulated in float64 batch by batch from ONNX Runtime,
after a memory estimate (all H plus one batch of activations) checked against a budget."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import onnx
from tqdm.auto import tqdm

from onnxprune.activations.capture import Capture, tensor_types
from onnxprune.data import Dataset
from onnxprune.errors import ResourceError
from onnxprune.units import format_bytes

log = logging.getLogger(__name__)

BatchHook = Callable[[dict[str, np.ndarray]], None]
# Samples per accumulation step: every Gram is summed over consecutive chunks of this many samples, in sample
# order, and the rows a chunk keeps are drawn from its own seeded generator, so that batches of any multiple of
# it (a batch lowered to fit the memory budget, which depends on what the process holds) give the same bits.
ACCUMULATE = 8


class RowSource(Protocol):
    """What ``capture_grams`` needs of a layer or tensor: its name, the tensors it reads and their rows."""

    name: str
    elem_type: int

    @property
    def tensors(self) -> tuple[str, ...]: ...

    def rows(self, index: int, activation: np.ndarray) -> np.ndarray:
        """``[groups, rows, d]`` rows of input ``index`` on one batch."""


@dataclass
class GramStats:
    """``H[g] = Σ x xᵀ`` over the ``n_rows`` rows x of group g (float64 ``[groups, d, d]``) and their mean.
    ``paired``: every row is ``[x, x_ref]``, the input in the model and in a reference model on the same
    sample, so H holds both Grams and their cross product (see ``blocks``)."""

    H: np.ndarray
    n_rows: int
    mean: np.ndarray
    paired: bool = False

    @property
    def nbytes(self) -> int:
        return self.H.nbytes + self.mean.nbytes

    def blocks(self, group: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(Σ x xᵀ, Σ x x_refᵀ, Σ x_ref x_refᵀ, mean of x, mean of x_ref)`` of ``group`` (x_ref = x when not
        paired)."""
        H, mean = self.H[group], self.mean[group]
        if not self.paired:
            return H, H, H, mean, mean
        d = H.shape[0] // 2
        return H[:d, :d], H[:d, d:], H[d:, d:], mean[:d], mean[d:]

    def unpaired(self) -> "GramStats":
        """The statistics of the model's own rows (without the reference's)."""
        if not self.paired:
            return self
        d = self.H.shape[-1] // 2
        return GramStats(self.H[:, :d, :d].copy(), self.n_rows, self.mean[:, :d].copy())


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc``), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _direct_gram(source: RowSource, index: int, activation: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The source's Gram, row sums and row count on a batch (or a chunk of one), summed without its rows where
    the source offers that (``LayerSource.gram``: a depthwise Conv); None otherwise."""
    direct = getattr(source, "gram", None)
    return None if direct is None else direct(index, activation)


def _add_gram(H: np.ndarray, rows: np.ndarray) -> None:
    """``H += rowsᵀ·rows``, exact on H's lower triangle (the caller mirrors it at the end). Fewer rows than
    inputs: in place by BLAS syrk on that triangle, one pass over H where a product and a sum take three (15x
    faster at 8 rows × 4,608 inputs); more: numpy's product, faster there."""
    if len(rows) >= len(H):
        H += rows.T @ rows
        return
    from scipy.linalg.blas import dsyrk

    out = dsyrk(1.0, np.ascontiguousarray(rows).T, beta=1.0, c=H.T, trans=0, lower=0, overwrite_c=1)
    if out.ctypes.data != H.ctypes.data:  # BLAS worked on a copy: take its result
        H[...] = np.triu(out).T


def _mirror_lower(H: np.ndarray, block: int = 512) -> None:
    """Copy H's lower triangle onto its upper one in place, a block of rows at a time (no d × d temporary)."""
    for start in range(0, len(H), block):
        stop = min(start + block, len(H))
        H[start:stop, stop:] = H[stop:, start:stop].T
        corner = H[start:stop, start:stop]
        corner[...] = np.tril(corner) + np.tril(corner, -1).T


def _probe(capture: Capture, sources: Sequence[RowSource], data: Dataset) -> tuple[dict[str, int], int, int]:
    """Run the smallest batch once: (d of every source, bytes of one batch's activations and rows, its samples).
    The bytes include what ONNX Runtime itself keeps per sample (its arena of intermediate tensors): the
    growth of resident memory from a run of twice as many samples, after the first run's one-time costs, and
    as much again as the captured tensors (the intermediates they keep from being reused: BERT-base at 32
    samples grew by 1.2 GB beside 528 MB of captured tensors)."""
    count = capture.fixed_batch or 1
    batch = next(capture.run(data.take(count), count))
    captured = sum(a.nbytes for a in batch.values())
    runtime = 0
    if not capture.fixed_batch and len(data) >= 2 * count:
        before = resident_bytes()
        pair = next(capture.run(data.take(2 * count), 2 * count))
        after = resident_bytes()
        if before is not None and after is not None:
            runtime = max(0, after - before - sum(a.nbytes for a in pair.values()))
        del pair
    widths, rows_bytes = {}, 0
    for source in sources:
        for index, tensor in enumerate(source.tensors):
            found = _direct_gram(source, index, batch[tensor])
            if found is not None:  # summed without its rows (a depthwise Conv): bounded, see depthwise_gram
                widths[source.name] = found[0].shape[-1]
                continue
            rows = source.rows(index, batch[tensor])
            widths[source.name] = rows.shape[-1]
            rows_bytes = max(rows_bytes, rows.size * (rows.itemsize + 8))  # the rows and their float64 copy
    return widths, 2 * captured + runtime + rows_bytes, count


def _refuse(needed: int, gram: int, batch: int, samples: int, budget: int) -> None:
    """ResourceError with the numbers when ``needed`` exceeds ``budget``."""
    if needed <= budget:
        return
    fitting = samples * (budget - gram) // max(batch, 1)
    advice = "raise --max-memory" if fitting < 1 else f"raise --max-memory or lower batch_size to at most {fitting}"
    raise ResourceError(f"capturing layer inputs needs about {format_bytes(needed)} (Gram matrices "
                        f"{format_bytes(gram)}, one batch of {samples} samples {format_bytes(batch)}) and "
                        f"--max-memory is {format_bytes(budget)}: {advice}")


def _thin(rows: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A seeded random ``share`` of the rows (all of them when ``share`` ≥ 1)."""
    if share >= 1:
        return rows
    count = max(1, int(round(rows.shape[1] * share)))
    return rows[:, np.sort(rng.choice(rows.shape[1], count, replace=False))]


def capture_grams(model: onnx.ModelProto, data: Dataset, sources: Sequence[RowSource], *, batch_size: int = 64,
                  max_memory: int = 4 << 30, on_batch: BatchHook | None = None,
                  reference: onnx.ModelProto | None = None, max_rows: int | None = None,
                  seed: int = 0, count_resident: bool = False) -> dict[str, GramStats]:
    """``GramStats`` of every source's rows over all of ``data``, streamed through one ORT session.

    Lowers the batch when all H (``groups·d²·8`` bytes each) plus one batch of activations would exceed
    ``max_memory``, and refuses (ResourceError) before the run when even one sample does not fit;
    ``on_batch`` sees every batch's raw captured tensors. ``reference``: a model with the same inputs and
    tensor names (e.g. the model before pruning), run on the same batches; each row is paired with its
    reference row (``GramStats.paired``). ``max_rows``: keep a seeded random subset of about that many rows
    per source (a Gram costs rows·d², and a Conv gives one row per output position and sample).
    ``count_resident``: the batch is also lowered (not below one accumulation chunk, so the bits stay the
    same) for the process's resident memory once the session is made to fit beside the Grams within the budget.
    """
    copies = 1 if reference is None else 2
    known = sum(s.groups * (copies * s.d_in) ** 2 * 8 for s in sources if hasattr(s, "d_in"))
    _refuse(known, known, 0, 0, max_memory)
    types = tensor_types(model)
    tensors = {t: s.elem_type or types.get(t, onnx.TensorProto.FLOAT) for s in sources for t in s.tensors}
    captures = [Capture(model, tensors)] + ([Capture(reference, tensors)] if reference is not None else [])
    capture = captures[0]
    widths, probe_bytes, probe_samples = _probe(capture, sources, data)
    widths = {name: copies * width for name, width in widths.items()}
    probe_bytes *= copies
    gram = sum(s.groups * (widths[s.name] ** 2 + widths[s.name]) * 8 for s in sources)
    samples = capture.fixed_batch or min(batch_size, len(data))
    unit = capture.fixed_batch or ACCUMULATE
    held = (resident_bytes() or 0) if count_resident else 0
    if not capture.fixed_batch and held + gram + probe_bytes * samples // probe_samples > max_memory:
        def fitting(budget: int) -> int:  # the most samples a batch may have within budget (a multiple of unit)
            found = int((budget - gram) * probe_samples // max(probe_bytes, 1))
            return max(1, found // unit * unit or found)

        lowered = fitting(max_memory - held)
        if held:  # what the process holds never lowers the batch below a chunk (nor below what the budget allows)
            lowered = max(lowered, min(unit, samples, fitting(max_memory)))
        if lowered < samples:  # more ORT calls, the same result when a multiple of unit
            log.info("capture batch lowered from %d to %d samples to stay within --max-memory %s", samples,
                     lowered, format_bytes(max_memory))
            samples = batch_size = lowered
    batch = probe_bytes * samples // probe_samples
    _refuse(gram + batch, gram, batch, samples, max_memory)
    log.info("capturing %d layer input(s)%s: Gram matrices %s, one batch %s", len(sources),
             " paired with a reference model" if reference is not None else "", format_bytes(gram),
             format_bytes(batch))
    H = {s.name: np.zeros((s.groups, widths[s.name], widths[s.name])) for s in sources}
    sums = {s.name: np.zeros((s.groups, widths[s.name])) for s in sources}
    counts = dict.fromkeys(H, 0)
    step = capture.batch_step(batch_size)
    bar = tqdm(total=len(data), desc="capture", unit="sample", leave=False, disable=None)
    for number, batches in enumerate(zip(*(c.run(data, batch_size) for c in captures))):
        if on_batch is not None:
            on_batch(batches[0])
        in_batch = min(step, len(data) - number * step)
        bar.update(in_batch)
        chunks = [(start, min(in_batch, start + unit), (number * step + start) // unit)
                  for start in range(0, in_batch, unit)]
        for position, source in enumerate(sources):
            for index, tensor in enumerate(source.tensors):
                direct = max_rows is None and len(batches) == 1 and getattr(source, "gram", None) is not None
                found = [_direct_gram(source, index, batches[0][tensor][a:b]) for a, b, _ in chunks] if direct else None
                if found and found[0] is not None:  # the Gram without the rows (a depthwise Conv)
                    for part in found:
                        H[source.name] += part[0]
                        sums[source.name] += part[1]
                        counts[source.name] += part[2]
                    continue
                parts = [source.rows(index, b[tensor]) for b in batches]
                rows = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
                per_sample = rows.shape[1] // max(in_batch, 1)  # rows are sample-major
                for start, stop, chunk in chunks:
                    part = rows[:, start * per_sample:stop * per_sample]
                    if max_rows is not None:
                        share = max_rows / (per_sample * len(data) * len(source.tensors))
                        part = _thin(part, share, np.random.default_rng([seed, chunk, position, index]))
                    part = part.astype(np.float64)
                    for g in range(part.shape[0]):
                        _add_gram(H[source.name][g], part[g])
                    sums[source.name] += part.sum(axis=1)
                    counts[source.name] += part.shape[1]
        batches = parts = rows = part = found = None  # dropped before the next batch is captured
    bar.close()
    for matrices in H.values():
        for matrix in matrices:
            _mirror_lower(matrix)
    return {n: GramStats(H[n], counts[n], sums[n] / max(counts[n], 1), reference is not None) for n in H}
