"""Benchmark of structured pruning with calibration data on the bundled CNN: l1-channel, intrafusion
(reconstruction off, from one capture, and sequential) and chita-channel (one capture, sequential), whole
network; and chita-channel to a speed-up target.

Run: ``.venv/bin/python tools/bench_structured.py`` (about 15 minutes on 2 busy CPU cores). For every
sparsity and variant it prints the test accuracy in ONNX Runtime on all test images, the ORT CPU
speed-up at batch 32 against the dense model (interleaved runs), the MACs ratio and the prune time
(a fresh session each: BatchNorm folding, capture, selection, refit, surgery). Then, per sparsity and
selector, whether reconstruction and the sequential capture helped, and the verdict on the target at 0.5 (>= 97.5 % accuracy,
>= 2x speed-up at batch 32, prune time <= 2 minutes). ``--target-speedup 2`` adds a chita-channel row per
target, each group's width allocated to that speed-up timed at batch 32 (``prune --target-speedup``; prune
time = latency table + error curves + allocation, about a minute each); ``--sparsities`` with no value leaves
only those rows.

Every pruned model goes through the real pipeline (``onnxprune.pipeline.Pruner``): canonicalize, method,
onnx.checker, ORT smoke run, atomic write.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx

from onnxprune.data import load_data
from onnxprune.graph.io import load_model
from onnxprune.graph.stats import model_stats
from onnxprune.pipeline import Pruner, PruneOutcome
from onnxprune.report import table
from onnxprune.threads import set_threads
from onnxprune.validate.bench import benchmark
from onnxprune.validate.evaluation import evaluate
from onnxprune.workflows.target import Target, prune_to_target

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = (0.3, 0.5, 0.7)
TARGET_ACCURACY, TARGET_SPEEDUP, TARGET_SECONDS = 97.5, 2.0, 120.0
HELPS = 0.5  # accuracy points reconstruction must add to count as helping
# (label, method, options); reconstruction pairs share the label before '+'.
# '+refit': every group refitted from one capture of the dense model; '+seq': sequential (the default with
# calibration data), each wave captured on the model with the earlier waves pruned.
VARIANTS = (("l1", "l1-channel", {"reconstruct": "off"}),
            ("l1+refit", "l1-channel", {"reconstruct": "on", "sequential": "off"}),
            ("l1+seq", "l1-channel", {"reconstruct": "on", "sequential": "on"}),
            ("intrafusion", "intrafusion", {"reconstruct": "off"}),
            ("intrafusion+refit", "intrafusion", {"reconstruct": "on", "sequential": "off"}),
            ("intrafusion+seq", "intrafusion", {"reconstruct": "on", "sequential": "on"}),
            ("chita-channel+refit", "chita-channel", {"sequential": "off"}),
            ("chita-channel+seq", "chita-channel", {"sequential": "on"}))


def _measure(model: Path, out: Path, data, outcome: PruneOutcome, label: str, setting: str | float, seconds: float,
             runs: int, dense_macs: int) -> list:
    """Accuracy, speed-up at batch 32 and MACs ratio of a written model."""
    accuracy = 100 * float(evaluate(out, data, threads=2, device="cpu").accuracy)
    b32 = benchmark(out, vs=model, batch=32, threads=2, runs=runs, device="cpu")
    return [label, setting, accuracy, b32.ratio, dense_macs / outcome.after.macs, seconds]


def _row(model: Path, calib: Path, data, workdir: Path, label: str, method: str, options: dict, sparsity: float,
         runs: int, dense_macs: int) -> list:
    """Prune with a fresh session, then measure accuracy, speed-up and MACs."""
    out = workdir / f"{label}_{sparsity}.onnx"
    pruner = Pruner(model, method, calib=calib, sparsity=sparsity, **options)
    outcome = pruner.write(out)
    return _measure(model, out, data, outcome, label, sparsity, outcome.timings["method"], runs, dense_macs)


def _target_row(model: Path, calib: Path, data, workdir: Path, speedup: float, round_to: int, runs: int,
                dense_macs: int) -> list:
    """chita-channel with each group's width allocated to ``speedup`` at batch 32 (a fresh session)."""
    out = workdir / f"target_{speedup}.onnx"
    pruner = Pruner(model, "chita-channel", calib=calib, round_to=round_to)
    outcome = prune_to_target(pruner, out, None, Target(speedup=speedup, batch=32))
    found = outcome.details["target"]
    print(f"target {speedup}x: widths {[(g['before'], g['after']) for g in found['groups']]}, measured in the "
          f"allocation {1 / found['measured']:.2f}x ({len(found['tries'])} tries)", flush=True)
    return _measure(model, out, data, outcome, "chita-channel+seq", f"{speedup}x target",
                    outcome.timings["table"] + outcome.timings["method"], runs, dense_macs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cnn.onnx")
    parser.add_argument("--calib", type=Path, default=ROOT / "models" / "cnn_calib.npz")
    parser.add_argument("--data", type=Path, default=ROOT / "models" / "cnn_test.npz")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per latency measurement (>= 50)")
    parser.add_argument("--round-to", type=int, default=1, help="round kept channel counts to multiples of this")
    parser.add_argument("--sparsities", type=float, nargs="*", default=list(SPARSITIES))
    parser.add_argument("--target-speedup", type=float, nargs="*", default=[],
                        help="also prune chita-channel to these speed-ups at batch 32 (per-group widths)")
    args = parser.parse_args()
    set_threads(2)  # the target's latency table and checks run with the threads of the batch-32 figures
    data = load_data(args.data, onnx.load(str(args.model)))
    dense_macs = model_stats(load_model(args.model), args.model).macs
    dense = 100 * float(evaluate(args.model, data, threads=2, device="cpu").accuracy)
    rows = [["dense", "-", dense, 1.0, 1.0, 0.0]]
    with tempfile.TemporaryDirectory(prefix="bench_structured_") as tmp:
        for sparsity in args.sparsities:
            for label, method, options in VARIANTS:
                rows.append(_row(args.model, args.calib, data, Path(tmp), label, method,
                                 {**options, "round_to": args.round_to}, sparsity, args.runs, dense_macs))
                print(rows[-1], flush=True)
        for speedup in args.target_speedup:
            rows.append(_target_row(args.model, args.calib, data, Path(tmp), speedup, args.round_to, args.runs,
                                    dense_macs))
            print(rows[-1], flush=True)
    print(table(["variant", "sparsity", "acc %", "b32 speed-up", "MACs ratio", "prune s"], rows,
                title=f"Whole network with --calib, round_to={args.round_to}: test accuracy on {len(data)} images, "
                      "ORT CPU (2 threads) speed-up vs dense at batch 32"))
    found = {(r[0], r[1]): r for r in rows[1:]}
    for sparsity in args.sparsities:
        for base, what, more in (("l1", "reconstruction", "l1+refit"), ("intrafusion", "reconstruction",
                                                                         "intrafusion+refit"),
                                 ("l1+refit", "sequential capture", "l1+seq"),
                                 ("intrafusion+refit", "sequential capture", "intrafusion+seq"),
                                 ("chita-channel+refit", "sequential capture", "chita-channel+seq")):
            off, on = found[(base, sparsity)][2], found[(more, sparsity)][2]
            verdict = "helps" if on - off >= HELPS else f"does NOT help (under {HELPS} point)"
            print(f"{base} at {sparsity}: {what} {verdict} ({off:.2f} -> {on:.2f} %)")
    for label in ("l1+seq", "intrafusion+seq", "chita-channel+seq"):
        if (label, 0.5) in found:
            _, _, accuracy, speedup, _, seconds = found[(label, 0.5)]
            met = accuracy >= TARGET_ACCURACY and speedup >= TARGET_SPEEDUP and seconds <= TARGET_SECONDS
            print(f"{label} at 0.5: {accuracy:.2f} %, {speedup:.2f}x at batch 32, {seconds:.0f} s "
                  f"({'meets' if met else 'MISSES'} the target: >= {TARGET_ACCURACY} %, >= {TARGET_SPEEDUP:.0f}x, "
                  f"<= {TARGET_SECONDS:.0f} s)")


if __name__ == "__main__":
    main()
