"""A sweep pruned here and on a local Ray cluster (``onnxprune sweep --ray local``): wall time, the time spent
pruning, and whether every written file is byte for byte the one pruned here with the same thread count.

Each sweep is its own ``onnxprune`` process; ``--threads`` is the thread count of each prune (and of each Ray
task), so ``--ray local`` with one thread runs as many points at once as the machine has cores.

    python tools/bench_ray.py [--model models/cnn.onnx] [--methods sparsegpt,wanda,chita,l1-channel]
                              [--sparsities 0.5,0.7] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.report import table  # noqa: E402

ONNXPRUNE = [sys.executable, "-m", "onnxprune.cli"]


def run_sweep(args: argparse.Namespace, out: Path, threads: int, ray: bool) -> dict:
    """One sweep in its own process; its report with the process's wall time."""
    model = Path(args.model)
    data = model.with_name(model.stem + "_test.npz")
    calib = model.with_name(model.stem + "_calib.npz")
    command = [*ONNXPRUNE, "--threads", str(threads), "sweep", str(model), "-o", str(out), "--data", str(data),
               "--calib", str(calib), "--methods", args.methods, "--sparsities", args.sparsities, "--runs",
               str(args.runs), "--threads", str(os.cpu_count())] + (["--ray", "local"] if ray else [])
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    report["wall_s"] = time.perf_counter() - began
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "cnn.onnx"))
    parser.add_argument("--methods", default="sparsegpt,wanda,chita,l1-channel")
    parser.add_argument("--sparsities", default="0.5,0.7")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows, files = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, threads, ray in ((f"here, {cores} threads", cores, False), ("here, 1 thread", 1, False),
                                    (f"Ray local, {cores} tasks of 1 thread", 1, True)):
            out = Path(tmp) / label.replace(" ", "_").replace(",", "")
            report = run_sweep(args, out, threads, ray)
            files[label] = {p.name: p.read_bytes() for p in out.glob("*.onnx")}
            points = len(report["points"])
            same = "" if not ray else ("yes" if files[label] == files["here, 1 thread"] else "NO")
            rows.append([label, points, f"{report['wall_s']:.1f}", f"{report['prune_seconds']:.1f}",
                         f"{report['seconds'] - report['prune_seconds']:.1f}", same])
    base = float(rows[0][3])
    for row in rows:
        row.append(f"{float(row[3]) / base:.2f}x")
    print(table(["sweep", "points", "wall s", "pruning s", "measuring s", "files = here, 1 thread", "pruning / first"],
                rows, title=f"{Path(args.model).name}: {args.methods} at {args.sparsities}, {cores} cores"))


if __name__ == "__main__":
    main()
