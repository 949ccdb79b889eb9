"""Compatibility matrix: every corpus model through inspect → prune → ORT run → comparison with dense.

One row per model and method. A row ends in ``ok`` with figures, or in ``refused`` with the one-line
reason onnxprune gave (an expected, named refusal). Any other exception is a bug in onnxprune: the row
says ``BUG`` and the exit status is 1. Each row runs in a child process; one that runs past
``--timeout`` says ``timeout``. Methods: magnitude at sparsity 0.5, and the registered structured
methods l1-channel and intrafusion at 0.3 (``--method`` picks others; methods that need calibration
get random samples).

    python tools/compat_matrix.py [--corpus DIR] [--select PATTERN] [--method NAME] [--timeout S]
                                    [--markdown FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Iterator

import corpus
from onnxprune.runtime.feeds import make_feed
from onnxprune.data import Dataset, input_specs
from onnxprune.errors import OnnxPruneError
from onnxprune.validate.evaluation import evaluate
from onnxprune.inspection import ModelInfo, inspect_model
from onnxprune.graph.io import load_model
from onnxprune.methods import METHODS, MethodSpec
from onnxprune.pipeline import prune

DEFAULT_METHODS = ("magnitude", "l1-channel", "intrafusion")
UNSTRUCTURED_SPARSITY = 0.5
STRUCTURED_SPARSITY = 0.3
SAMPLES = 8  # sample inputs per model (a fixed batch size wins)


@dataclass
class Row:
    """One model × method outcome: ``status`` is ok, skipped (a structured method found no
    prunable group), refused, failed (export), timeout or BUG."""

    model: str
    source: str
    opset: int | None
    torch_view: str
    method: str
    sparsity: float | None
    status: str
    detail: str
    seconds: float

    def cells(self) -> list[str]:
        """The Markdown cells: model, source, opset, torch view, method, result."""
        method = f"{self.method} {self.sparsity}" if self.sparsity is not None else self.method
        return [self.model, self.source, str(self.opset or "-"), self.torch_view, method,
                f"{self.status}: {self.detail}" if self.detail else self.status]


def chosen_methods(names: list[str] | None) -> list[MethodSpec]:
    """The registered methods to run: the given names (all registered for 'all'), else the defaults."""
    if names and "all" in names:
        return list(METHODS.values())
    wanted = names or [n for n in DEFAULT_METHODS if n in METHODS]
    unknown = [n for n in wanted if n not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r}; registered: {', '.join(METHODS)}")
    return [METHODS[n] for n in wanted]


def sample_data(path: Path) -> Dataset:
    """Seeded random inputs for the model at ``path``: ``SAMPLES`` of them, or its fixed batch."""
    specs = input_specs(load_model(path, check=False))
    fixed = next((s.shape[0] for s in specs if s.shape and s.shape[0] is not None), None)
    return Dataset(make_feed(specs, fixed or SAMPLES, None, seed=0))


def torch_view_cell(info: ModelInfo) -> str:
    """'yes', or the first op the torch view cannot convert (methods using gradients need the view)."""
    if not info.unsupported:
        return "yes"
    first = info.unsupported[0]
    more = f" (+{len(info.unsupported) - 1})" if len(info.unsupported) > 1 else ""
    return f"no: {first['op']}-{first['version']} in {first['node']}{more}"


def figures(sparsity: float, params: tuple[int, int], fidelity: dict[str, float | None]) -> str:
    """The ok-row summary: achieved sparsity (or, when channels were removed, the parameter counts) and
    the pruned model's fidelity to the dense one."""
    before, after = params
    text = (f"prunable sparsity {sparsity:.1%}, params {before:,}" if after == before
            else f"params {before:,} → {after:,} ({1 - after / before:.0%} fewer)")
    text += f", max abs diff {fidelity['max_abs_diff']:.3g}, cosine {fidelity['cosine']:.4f}"
    if fidelity.get("agreement") is not None:
        text += f", top-1 agreement {fidelity['agreement']:.0%}"
    return text


def sparsity_for(spec: MethodSpec) -> float:
    """The sparsity a method runs at in the matrix."""
    return STRUCTURED_SPARSITY if spec.structured else UNSTRUCTURED_SPARSITY


def run_method(entry: corpus.Entry, method: str, data: Dataset, folder: Path) -> tuple[str, str]:
    """Prune ``entry`` with ``method``, run the output in ORT on ``data`` and compare with the dense model."""
    spec = METHODS[method]
    sparsity = sparsity_for(spec)
    output = folder / f"{entry.name}.{spec.name}.onnx"
    try:
        outcome = prune(entry.path, output, spec.name, calib=data if spec.needs_calib else None, sparsity=sparsity)
        result = evaluate(output, data, reference=entry.path, device="cpu")
    except OnnxPruneError as exc:
        return "refused", str(exc)
    finally:
        output.unlink(missing_ok=True)
    if spec.structured and not outcome.details.get("groups"):
        reasons = sorted({part for s in outcome.details.get("skipped", []) for part in s["reason"].split("; ")})
        more = f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""
        return "skipped", f"no channel group can be pruned: {'; '.join(reasons[:3])}{more}"
    return "ok", figures(outcome.after.sparsity, (outcome.before.params, outcome.after.params), result.to_dict())


class Worker:
    """A child process that runs one row at a time, so a row that hangs (past ``timeout`` seconds) or
    crashes the interpreter becomes a row of the table instead of stopping the matrix."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._pool: Pool | None = None

    def run(self, entry: corpus.Entry, method: str, data: Dataset, folder: Path) -> tuple[str, str]:
        """``run_method`` in the child; ('timeout', ...) when it takes longer than allowed."""
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(1)
        job = self._pool.apply_async(run_method, (entry, method, data, folder))
        try:
            return job.get(self.timeout)
        except multiprocessing.TimeoutError:
            self.close()
            return "timeout", f"no result within {self.timeout:g} s"

    def close(self) -> None:
        """Stop the child process (a new one starts with the next row)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


def model_rows(entry: corpus.Entry, methods: list[MethodSpec], folder: Path, worker: Worker) -> Iterator[Row]:
    """The rows of one corpus model, one per method as it finishes; an onnxprune bug becomes a BUG row,
    never a traceback."""
    if entry.path is None:
        yield Row(entry.name, entry.source, None, "-", "-", None, "failed", f"export: {entry.error}", 0.0)
        return
    try:
        info = inspect_model(entry.path)
    except OnnxPruneError as exc:
        yield Row(entry.name, entry.source, None, "-", "inspect", None, "refused", str(exc), 0.0)
        return
    except Exception as exc:  # a bug in onnxprune: reported in the table
        yield Row(entry.name, entry.source, None, "-", "inspect", None, "BUG", _bug(exc), 0.0)
        return
    data = sample_data(entry.path)
    for spec in methods:
        start = time.perf_counter()
        try:
            status, detail = worker.run(entry, spec.name, data, folder)
        except Exception as exc:  # a bug in onnxprune: reported in the table
            status, detail = "BUG", _bug(exc)
        yield Row(entry.name, entry.source, info.opset, torch_view_cell(info), spec.name, sparsity_for(spec),
                  status, detail, round(time.perf_counter() - start, 2))


def _bug(exc: Exception) -> str:
    """One line naming an unexpected exception."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def markdown(rows: list[Row]) -> str:
    """The matrix as a Markdown table (pipes in messages escaped)."""
    header = ["model", "source", "opset", "torch view", "method", "result"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def run_matrix(corpus_dir: Path, patterns: list[str] | None, methods: list[MethodSpec], timeout: float) -> list[Row]:
    """Build the selected corpus into ``corpus_dir`` and compute every row, logging progress to stderr."""
    entries = corpus.build(corpus_dir, patterns)
    rows: list[Row] = []
    worker = Worker(timeout)
    with tempfile.TemporaryDirectory(prefix="onnxprune-matrix-") as scratch:
        for index, entry in enumerate(entries, 1):
            for row in model_rows(entry, methods, Path(scratch), worker):
                print(f"[{index}/{len(entries)}] {row.model} {row.method}: {row.status} {row.detail} "
                      f"({row.seconds:.1f}s)", file=sys.stderr, flush=True)
                rows.append(row)
    worker.close()
    return rows


def main() -> None:
    """Command line: build the corpus, run the matrix, print Markdown (or JSON), exit 1 on any BUG or timeout row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="build/reuse the corpus here (default: a temporary folder)")
    parser.add_argument("--select", action="append", metavar="PATTERN", help="shell pattern on model names")
    parser.add_argument("--method", action="append", metavar="NAME", help="method to run ('all': every one)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one row may take (default 600)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the Markdown table here")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    args = parser.parse_args()
    methods = chosen_methods(args.method)
    with tempfile.TemporaryDirectory(prefix="onnxprune-corpus-") as default_dir:
        rows = run_matrix(args.corpus or Path(default_dir), args.select, methods, args.timeout)
    table = markdown(rows)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    print(json.dumps({"rows": [asdict(r) for r in rows]}, indent=1) if args.json else table)
    sys.exit(1 if any(r.status in ("BUG", "timeout") for r in rows) else 0)


if __name__ == "__main__":
    main()
