"""Benchmark of structured pruning on the bundled CNN: ``l1-channel`` against ``intrafusion``.

Run: ``.venv/bin/python tools/bench_intrafusion.py`` (about 5 minutes on 2 CPU cores). Prints:

1. Single-group, data-free: every prunable channel group pruned alone at sparsity 0.3/0.5/0.7,
   test accuracy in ONNX Runtime of l1-channel and of Intra-Fusion with both normalisations;
   the mean gain over groups at 0.5–0.7 is checked against the >= 10 point target.
2. Whole network at 0.3/0.5: accuracy, parameters, MACs and ORT CPU latency at batch 1 and 32
   against the dense model (interleaved runs), the MACs ratio beside the speed-up.

Every pruned model goes through the real pipeline (``onnxprune.pipeline.prune``): canonicalize,
method, onnx.checker, ORT smoke run, atomic write.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from onnxprune.validate.bench import benchmark
from onnxprune.graph.canonical import canonicalize
from onnxprune.channels.analysis import find_groups
from onnxprune.channels.batchnorm import fold_batchnorms
from onnxprune.data import load_data
from onnxprune.validate.evaluation import evaluate
from onnxprune.graph.io import load_model
from onnxprune.pipeline import prune
from onnxprune.graph.stats import model_stats
from onnxprune.report import table

ROOT = Path(__file__).resolve().parents[1]
SINGLE_SPARSITIES = (0.3, 0.5, 0.7)
NETWORK_SPARSITIES = (0.3, 0.5)
TARGET_GAIN = 10.0
TARGET_SPEEDUP = 2.0
# (label, method, extra options) of the variants compared in the single-group table.
VARIANTS = (("l1", "l1-channel", {}),
            ("IF-pub", "intrafusion", {"normalization": "published"}),
            ("IF-pres", "intrafusion", {"normalization": "preserving"}))


def _accuracy(model: Path, data) -> float:
    result = evaluate(model, data, threads=2, device="cpu")
    return 100 * float(result.accuracy)


def single_group_table(model: Path, data, workdir: Path) -> str:
    """Accuracy of every variant for every prunable group and sparsity, plus the summary lines."""
    groups = [g for g in find_groups(fold_batchnorms(canonicalize(load_model(model)).model)[0]) if g.prunable]
    rows, gains = [], {label: [] for label, _, _ in VARIANTS[1:]}
    means = {(label, s): [] for label, _, _ in VARIANTS for s in SINGLE_SPARSITIES}
    for group in groups:
        row: list = [group.index, group.size, len(group.producers)]
        for sparsity in SINGLE_SPARSITIES:
            accuracies = {}
            for label, method, options in VARIANTS:
                out = workdir / f"g{group.index}_{sparsity}_{label}.onnx"
                prune(model, out, method, sparsity=sparsity, group=group.index, **options)
                accuracies[label] = _accuracy(out, data)
                means[(label, sparsity)].append(accuracies[label])
                row.append(accuracies[label])
            if sparsity >= 0.5:
                for label in gains:
                    gains[label].append(accuracies[label] - accuracies["l1"])
        rows.append(row)
    rows.append(["mean", "", ""] + [float(np.mean(means[(label, s)])) for s in SINGLE_SPARSITIES
                                    for label, _, _ in VARIANTS])
    headers = ["group", "channels", "producers"] + [f"{label}@{s}" for s in SINGLE_SPARSITIES
                                                     for label, _, _ in VARIANTS]
    text = table(headers, rows, title="Single group, data-free: test accuracy (%) in ONNX Runtime")
    for label, values in gains.items():
        mean = float(np.mean(values))
        verdict = "meets" if mean >= TARGET_GAIN else "MISSES"
        text += (f"\n{label} vs l1-channel at 0.5-0.7, mean over {len(groups)} groups: {mean:+.2f} points "
                 f"({verdict} the >= {TARGET_GAIN:.0f} point target); worst group {min(values):+.2f}")
    return text


def network_table(model: Path, data, workdir: Path, runs: int) -> str:
    """Whole-network pruning: accuracy, size, MACs and latency against the dense model."""
    dense_stats = model_stats(load_model(model), model)
    dense_acc = _accuracy(model, data)
    rows = [["dense", "-", dense_acc, dense_stats.params, dense_stats.macs, 1.0,
             benchmark(model, batch=1, threads=2, runs=runs, device="cpu").median_ms, None,
             benchmark(model, batch=32, threads=2, runs=runs, device="cpu").median_ms, None]]
    for sparsity in NETWORK_SPARSITIES:
        for label, method, options in (("l1-channel", "l1-channel", {}), ("intrafusion", "intrafusion", {}),
                                       ("intrafusion r8", "intrafusion", {"round_to": 8})):
            out = workdir / f"net_{sparsity}_{label.replace(' ', '_')}.onnx"
            outcome = prune(model, out, method, sparsity=sparsity, **options)
            b1 = benchmark(out, vs=model, batch=1, threads=2, runs=runs, device="cpu")
            b32 = benchmark(out, vs=model, batch=32, threads=2, runs=runs, device="cpu")
            rows.append([label, sparsity, _accuracy(out, data), outcome.after.params, outcome.after.macs,
                         dense_stats.macs / outcome.after.macs, b1.median_ms, b1.ratio, b32.median_ms, b32.ratio])
    text = table(["model", "sparsity", "acc %", "params", "MACs", "MACs ratio", "b1 ms", "b1 speed-up",
                  "b32 ms", "b32 speed-up"], rows,
                 title="Whole network, data-free: ORT CPU (2 threads), median latency; speed-up vs dense, interleaved")
    at_half = [r for r in rows if r[1] == 0.5 and r[0] == "intrafusion"][0]
    verdict = "meets" if at_half[9] >= TARGET_SPEEDUP else "MISSES"
    return text + (f"\nintrafusion at 0.5: {at_half[9]:.2f}x at batch 32 with {at_half[5]:.2f}x fewer MACs "
                   f"({verdict} the >= {TARGET_SPEEDUP:.0f}x target)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cnn.onnx")
    parser.add_argument("--data", type=Path, default=ROOT / "models" / "cnn_test.npz")
    parser.add_argument("--samples", type=int, default=None, help="evaluate on the first N test samples only")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per latency measurement (>= 50)")
    args = parser.parse_args()
    data = load_data(args.data, onnx.load(str(args.model)))
    if args.samples:
        data = data.take(args.samples)
    with tempfile.TemporaryDirectory(prefix="bench_intrafusion_") as tmp:
        print(single_group_table(args.model, data, Path(tmp)), flush=True)
        print()
        print(network_table(args.model, data, Path(tmp), args.runs), flush=True)


if __name__ == "__main__":
    main()
