"""The gradient matrix A of second-order pruning: one row per calibration sample (or mean over a few),
one column per prunable weight, so that the empirical Fisher is ``AᵀA / n``.

Rows are computed vectorised with ``torch.func`` (vmap over grad through the TorchView), never one
backward pass per sample. A is stored transposed, ``at[p, n]`` in float32: a weight's gradients are
one contiguous row, which makes the solver's column gathers cheap. The memory planner sizes A (and the
solver's working copies) before anything is allocated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from onnxprune.compute import from_numpy, generator
from onnxprune.data import Dataset
from onnxprune.errors import ConfigError, DataError, ResourceError
from onnxprune.units import format_bytes
from onnxprune.view.torchview import TorchView

log = logging.getLogger(__name__)

TARGETS = ("auto", "labels", "predicted", "sampled", "logits")
# Bytes of per-sample gradients held at once while computing A (sets the vmap chunk size): a pass over the
# bundled CNN's 1,000 rows took 3.4 s with 48 MB (41 rows a call), 3.9 s with 96 MB and 4.5 s with 16 MB.
_CHUNK_BYTES = 48 << 20
_MAX_CHUNK = 64
# The solver's working memory relative to A: an active-set copy of at most a quarter of its rows (larger
# active sets are solved in place, see chita_solver.ACTIVE_COPY) plus bounded tiles and column chunks.
SOLVER_OVERHEAD = 0.25
# The solver's vectors over the weights (iterates, gradients, masks, ridge and scale in float64, top-k
# indices), in bytes per weight: a fifth of A at 128 rows.
VECTOR_BYTES = 96


@dataclass(frozen=True)
class Slot:
    """Where one weight tensor lives in the flat vector: ``axes`` is the permutation applied before
    flattening (so that groups of consecutive coordinates can follow a chosen tensor axis)."""

    name: str
    shape: tuple[int, ...]
    offset: int
    axes: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def flat(self, batched: torch.Tensor) -> torch.Tensor:
        """Batched values of this tensor, ``[B, *shape]``, in the flat order: ``[B, size]``."""
        return batched.permute(0, *(a + 1 for a in self.axes)).reshape(batched.shape[0], -1)


class FlatLayout:
    """A bijection between named weight tensors and one flat vector of length ``size``."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], last_axis: dict[str, int] | None = None):
        """``last_axis`` moves the named tensor's axis to the end before flattening (e.g. the input axis,
        so that N:M groups are consecutive input weights); other tensors flatten in C order."""
        slots, offset = [], 0
        for name, shape in shapes.items():
            axes = list(range(len(shape)))
            if last_axis and name in last_axis:
                axes.append(axes.pop(last_axis[name]))
            slots.append(Slot(name, tuple(shape), offset, tuple(axes)))
            offset += slots[-1].size
        self.slots: list[Slot] = slots
        self.size = offset

    def flatten(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        """The flat float32 vector of ``weights``."""
        return np.concatenate([np.transpose(weights[s.name], s.axes).reshape(-1).astype(np.float32)
                               for s in self.slots]) if self.slots else np.zeros(0, np.float32)

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """The named tensors of a flat vector, in their original layout."""
        out = {}
        for s in self.slots:
            permuted = flat[s.offset:s.offset + s.size].reshape([s.shape[a] for a in s.axes])
            out[s.name] = np.ascontiguousarray(np.transpose(permuted, np.argsort(s.axes)))
        return out

    def pieces(self, start: int, stop: int) -> list[tuple[Slot, int, int]]:
        """``(slot, lo, hi)``: the coordinates ``lo:hi`` of each tensor (in its flat order) that fall in
        the flat columns ``start:stop``, in order."""
        return [(s, max(start, s.offset) - s.offset, min(stop, s.offset + s.size) - s.offset)
                for s in self.slots if s.offset < stop and s.offset + s.size > start]

    def names_in(self, start: int, stop: int) -> list[str]:
        """The tensors that own at least one coordinate in ``start:stop``."""
        return [s.name for s in self.slots if s.offset < stop and s.offset + s.size > start]


def matrix_bytes(rows: int, columns: int) -> int:
    """Memory for A with ``rows`` gradient rows over ``columns`` weights, solver working set included."""
    return int(columns * (rows * 4 * (1 + SOLVER_OVERHEAD) + VECTOR_BYTES))


@dataclass(frozen=True)
class MemoryPlan:
    """How A is built within the budget: ``columns_per_pass`` weights per gradient pass."""

    rows: int
    columns: int
    columns_per_pass: int
    budget: int

    @property
    def passes(self) -> int:
        return -(-self.columns // self.columns_per_pass)


def plan_memory(rows: int, columns: int, budget: int, min_columns: int = 512) -> MemoryPlan:
    """All columns in one pass when A and the solver's working set fit ``budget``; otherwise the fewest
    passes that fit, of equal width (one gradient pass each); ResourceError with the numbers when not even
    ``min_columns`` fit."""
    whole = matrix_bytes(rows, columns)
    if whole <= budget:
        return MemoryPlan(rows, columns, columns, budget)
    width = budget // matrix_bytes(rows, 1)
    smallest = min(columns, min_columns)
    if width < smallest:
        fitting_rows = budget // matrix_bytes(1, smallest)
        raise ResourceError(
            f"the gradient matrix needs {format_bytes(whole)} for {rows} rows x {columns} weights (float32 "
            f"plus the solver's working copy) and --max-memory {format_bytes(budget)} cannot hold even "
            f"{smallest} weights' columns: raise --max-memory (about {format_bytes(whole * 1.1)} does it in one "
            f"pass) or lower --rows (at most {fitting_rows} fit in {smallest}-weight pieces)")
    width = -(-columns // -(-columns // width))
    log.info("gradient matrix %s exceeds --max-memory %s: %d weights per gradient pass",
             format_bytes(whole), format_bytes(budget), width)
    return MemoryPlan(rows, columns, width, budget)


def resolve_rows(requested: int, samples: int, samples_per_row: int, default: int) -> tuple[int, int]:
    """(rows n, samples per row m): ``requested`` rows or (0) ``default`` capped by the data, and
    ``samples_per_row`` or (0) as many as spread all samples over the rows; DataError when the
    calibration set holds fewer than n × m samples."""
    if samples_per_row < 0:
        raise ConfigError(f"samples_per_row must be >= 1 (or 0 for automatic), not {samples_per_row}")
    if requested < 0:
        raise ConfigError(f"rows must be >= 1 (or 0 for automatic), not {requested}")
    per_row = samples_per_row or 1
    available = samples // per_row
    if requested == 0:
        if available < 1:
            raise DataError(f"calibration data holds {samples} samples, fewer than samples_per_row={per_row}")
        rows = min(default, available)
    elif requested > available:
        raise DataError(f"{requested} gradient rows x {per_row} samples per row need "
                        f"{requested * per_row} calibration samples; the data holds {samples}. "
                        f"Lower --rows to at most {available} or give more calibration data")
    else:
        rows = requested
    return rows, samples_per_row or samples // rows


def _first_float(outputs: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    """The first floating-point model output: the one the loss is taken on (exports may put integer
    outputs, such as pass-through token ids, first)."""
    return next((o for o in outputs if torch.is_floating_point(o)), outputs[0])


def _logits(view: TorchView, params: dict[str, torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The first float model output as ``[positions, classes]`` logits."""
    out = _first_float(torch.func.functional_call(view, params, inputs))
    return out.reshape(-1, out.shape[-1])


def _class_scores(view: TorchView, params: dict[str, torch.Tensor], data: Dataset) -> bool:
    """Whether the first float output holds class scores (judged on a few samples as evaluation does)."""
    from onnxprune.validate.evaluation import CLASS_SCORES, output_kind

    sample = data.take(min(8, len(data)))
    with torch.no_grad():
        out = _first_float(torch.func.functional_call(view, params, tuple(
            from_numpy(sample.inputs[n]) for n in view.input_names)))
    return output_kind(out.float().cpu().numpy()) == CLASS_SCORES


def _output_shape(view: TorchView, params: dict[str, torch.Tensor], data: Dataset) -> torch.Size:
    """``[positions, classes]`` of one sample's first output."""
    first = data.take(1)
    with torch.no_grad():
        return _logits(view, params, tuple(from_numpy(first.inputs[n])
                                           for n in view.input_names)).shape


def choose_targets(view: TorchView, params: dict[str, torch.Tensor], data: Dataset, mode: str,
                   seed: int) -> torch.Tensor:
    """What each sample's loss is taken against: class indices ``[N, positions]`` (the labels, the model's
    argmax, or classes sampled from its softmax: the true Fisher), or for 'logits' a random zero-mean
    direction per sample ``[N, positions, classes]`` (rows of the output Jacobian, a Gauss-Newton model of
    output distortion that does not fade on confidently classified samples)."""
    if mode not in TARGETS:
        raise ConfigError(f"targets must be one of {', '.join(TARGETS)}, not {mode!r}")
    if mode == "auto":  # class scores without labels: the model's predictions; other outputs: their distortion
        mode = "labels" if data.labels is not None else "predicted" if _class_scores(view, params, data) else "logits"
    if mode == "labels":
        if data.labels is None:
            raise DataError("targets='labels' needs calibration data with a 'labels' array; "
                            "use targets=predicted to take the model's own predictions")
        positions = _output_shape(view, params, data)[0]
        if positions != 1:
            raise DataError(f"labels give one class per sample but the model's first output has {positions} "
                            "class vectors per sample; use targets=predicted")
        return from_numpy(data.labels.astype(np.int64)).reshape(-1, 1)
    random = generator(seed)
    if mode == "logits":
        directions = torch.randn((len(data), *_output_shape(view, params, data)), generator=random)
        return directions - directions.mean(dim=-1, keepdim=True)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(data), 256):
            batch = data.take(256, start)
            inputs = tuple(from_numpy(batch.inputs[n]) for n in view.input_names)
            logits = _logits(view, params, inputs)
            picked = (logits.argmax(1) if mode == "predicted" else
                      torch.multinomial(torch.softmax(logits.double(), 1), 1, generator=random)[:, 0])
            chunks.append(picked.reshape(len(batch), -1))
    return torch.cat(chunks)


def gradient_matrix(view: TorchView, layout: FlatLayout, weights: dict[str, np.ndarray], data: Dataset,
                    targets: torch.Tensor, *, rows: int, samples_per_row: int = 1,
                    columns: tuple[int, int] | None = None, index: torch.Tensor | None = None,
                    square_sum: torch.Tensor | None = None, progress: str = "gradients") -> torch.Tensor:
    """A transposed, ``[stop - start, rows]`` float32: row j of A is the gradient of the mean loss (cross-entropy,
    or the logit projection for 'logits' targets) over samples ``j*m .. j*m+m-1`` (m = samples_per_row) at
    ``weights``, restricted to flat columns ``columns`` (default all) and, when given, to their positions
    ``index`` (so only those columns are stored); ``square_sum`` (a float64 scalar), when given, accumulates
    ``‖A‖²_F`` over all the columns of the range, stored or not. ``targets`` comes from ``choose_targets``."""
    start, stop = columns or (0, layout.size)
    m = samples_per_row
    names = layout.names_in(start, stop)
    params = {view.param_paths[n]: from_numpy(w.astype(np.float32, copy=False))
              for n, w in weights.items()}
    trainable = {view.param_paths[n]: params[view.param_paths[n]] for n in names}
    frozen = {k: v for k, v in params.items() if k not in trainable}

    def row_loss(train: dict[str, torch.Tensor], target: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        logits = _logits(view, {**frozen, **train}, inputs)
        if target.is_floating_point():  # a random direction in logit space: rows of the output Jacobian
            return (target.reshape(logits.shape) * logits).sum() / inputs[0].shape[0]
        return F.cross_entropy(logits, target.reshape(-1))

    per_row = torch.func.vmap(torch.func.grad(row_loss), in_dims=(None, 0) + (0,) * len(view.input_names))
    at = torch.empty((stop - start if index is None else index.numel(), rows), dtype=torch.float32)
    chunk = max(1, min(_MAX_CHUNK, _CHUNK_BYTES // max(1, 4 * m * (stop - start))))
    # each tensor's gradients go straight to their rows of ``at`` (the stored positions of its coordinates)
    pieces = []
    for slot, lo, hi in layout.pieces(start, stop):
        first_column = slot.offset + lo - start
        if index is None:
            pieces.append((slot, lo, hi, slice(first_column, first_column + hi - lo), None))
        else:
            a, b = torch.searchsorted(index, torch.tensor([first_column, first_column + hi - lo],
                                                          device=index.device)).tolist()
            pieces.append((slot, lo, hi, slice(a, b), index[a:b] - first_column))
    with tqdm(total=rows, desc=progress, unit="row", disable=None, leave=False) as bar:
        for first in range(0, rows, chunk):
            count = min(chunk, rows - first)
            batch = data.take(count * m, first * m)
            inputs = [from_numpy(batch.inputs[n]) for n in view.input_names]
            inputs = [x.reshape(count, m, *x.shape[1:]) for x in inputs]
            target = targets[first * m:(first + count) * m].reshape(count, -1)
            grads = per_row(trainable, target, *inputs)
            for slot, lo, hi, stored, picked in pieces:
                flat = slot.flat(grads[view.param_paths[slot.name]])[:, lo:hi]
                if square_sum is not None:
                    square_sum += float(torch.linalg.vector_norm(flat)) ** 2
                at[stored, first:first + count] = (flat if picked is None else flat[:, picked]).T
            bar.update(count)
    return at
