"""Benchmark magnitude, CHITA and CHITA++ on the bundled MLP and CNN: one table of method × sparsity →
ONNX Runtime test accuracy, time per phase (gradients, solve, write-back) and peak memory, then the
speed figures of the CNN (gradients for n rows, one CHITA solve).

Run: ``.venv/bin/python tools/bench_chita.py`` (about 20-40 minutes on 2 cores; ``--quick`` for a
subset). Every run is a fresh process, so each peak-memory figure is that run's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

MODELS = Path(__file__).resolve().parents[1] / "models"
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
METHODS = ("magnitude", "chita", "chita++")


def run_one(model: str, method: str, sparsity: float, options: dict[str, Any], threads: int,
            compress: bool) -> dict[str, Any]:
    """Prune one model in this (fresh) process, evaluate the written file in ORT, report figures."""
    import torch

    from onnxprune.validate.evaluation import evaluate
    from onnxprune.pipeline import prune

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / f"{model}_{method}_{sparsity}.onnx"
        started = time.perf_counter()
        outcome = prune(MODELS / f"{model}.onnx", out, method, calib=MODELS / f"{model}_calib.npz",
                        compress=compress, sparsity=sparsity, **options)
        total = time.perf_counter() - started
        accuracy = 100 * evaluate(out, MODELS / f"{model}_test.npz", threads=threads, device="cpu").accuracy
        size = out.stat().st_size
    details = outcome.details
    method_s = outcome.timings.get("method", 0.0)
    gradients = details.get("gradients_s", 0.0)
    solve = details.get("solve_s", method_s)
    return {"model": model, "method": method, "sparsity": sparsity, "accuracy": accuracy,
            "gradients_s": gradients, "solve_s": solve, "write_s": outcome.timings.get("write", 0.0),
            "total_s": total, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bytes": size, "stages": len(details.get("stages", [])) or None,
            "stage_solve_s": [s["solve_s"] for s in details.get("stages", [])],
            "stage_gradients_s": [s["gradients_s"] for s in details.get("stages", [])]}


def dense_accuracy(model: str, threads: int) -> float:
    """Test accuracy of the unpruned model in ONNX Runtime."""
    from onnxprune.validate.evaluation import evaluate

    return 100 * evaluate(MODELS / f"{model}.onnx", MODELS / f"{model}_test.npz", threads=threads, device="cpu").accuracy


def table(rows: list[dict[str, Any]], dense: dict[str, float]) -> str:
    """The results as one fixed-width table."""
    head = (f"{'model':5} {'method':9} {'sparsity':>8} {'acc %':>7} {'Δdense':>7} {'grad s':>7} {'solve s':>8} "
            f"{'write s':>7} {'peak MiB':>8} {'file KB':>8}")
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row['model']:5} {row['method']:9} {row['sparsity']:>8.2f} {row['accuracy']:>7.2f} "
                     f"{row['accuracy'] - dense[row['model']]:>+7.2f} {row['gradients_s']:>7.1f} "
                     f"{row['solve_s']:>8.1f} {row['write_s']:>7.2f} {row['peak_mib']:>8.0f} "
                     f"{row['bytes'] / 1024:>8.0f}")
    return "\n".join(lines)


def speed(rows: list[dict[str, Any]]) -> str:
    """Gradient and single-solve times of one-shot CHITA on the CNN."""
    cnn = [r for r in rows if r["model"] == "cnn" and r["method"] == "chita"]
    if not cnn:
        return "speed: no CNN CHITA runs"
    lines = ["speed, CNN one-shot CHITA (n = rows of A):"]
    for row in cnn:
        lines.append(f"  sparsity {row['sparsity']:.2f}: gradients {row['gradients_s']:.1f} s, one solve "
                     f"{row['solve_s']:.1f} s, peak {row['peak_mib']:.0f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", type=int, default=None, help="CHITA++ stages (default: the method's)")
    parser.add_argument("--compress", action="store_true", help="write sparse initializers (file sizes)")
    parser.add_argument("--quick", action="store_true", help="sparsities 0.8 and 0.9 only")
    parser.add_argument("-O", dest="options", action="append", default=[], metavar="NAME=VALUE",
                        help="extra CHITA option for chita and chita++ (repeatable)")
    parser.add_argument("--json", type=Path, help="also write every row as JSON here")
    args = parser.parse_args(argv)
    sparsities = (0.8, 0.9) if args.quick else tuple(float(s) for s in args.sparsities.split(","))
    extra = dict(option.split("=", 1) for option in args.options)
    jobs = []
    for model in args.models.split(","):
        for method in args.methods.split(","):
            options = {} if method == "magnitude" else dict(extra)
            if method == "chita++" and args.stages:
                options["stages"] = args.stages
            jobs += [(model, method, s, options) for s in sparsities]
    rows = []
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        dense = {m: pool.submit(dense_accuracy, m, args.threads).result() for m in args.models.split(",")}
        print("dense accuracy:", ", ".join(f"{m} {a:.2f}%" for m, a in dense.items()), flush=True)
        for model, method, sparsity, options in jobs:
            row = pool.submit(run_one, model, method, sparsity, options, args.threads, args.compress).result()
            rows.append(row)
            print(f"  {model} {method} {sparsity}: {row['accuracy']:.2f}% in {row['total_s']:.1f} s", flush=True)
    print()
    print(table(rows, dense))
    print()
    print(speed(rows))
    if args.json:
        args.json.write_text(json.dumps({"dense": dense, "rows": rows}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
