"""The speed-accuracy frontier on the real-model corpus (tools/real_corpus.py), measured on written files.

For every model and batch it finds the highest ORT speed-up (``onnxprune bench`` on the written file against
the dense one, interleaved, on the test inputs) whose task metric stays within 1 % (and 2 %) of dense, for:

- ``target``: the channel method with ``--target-speedup S`` for S up a ladder (the latency table of the first
  step is reused by the next ones, ``--target-table``);
- ``target+recover``: the same with ``--recover SECONDS``;
- ``target+int8``: the same with ``--quantize int8`` (the table timed on INT8 shapes);
- ``dense+int8``: the dense model quantized alone.

Each prune is its own ``onnxprune prune`` process; a ladder stops after two steps below 98 % of dense. One table
(markdown) with the time each row took.

    python tools/bench_frontier.py DIR [--select GLOB] [--batches 8,1] [--ladder 1.25,1.5,2,2.5,3]
                                   [--method chita-channel] [--recover 120] [--configs target,target+recover,...]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import real_corpus  # noqa: E402

ONNXPRUNE = [sys.executable, "-m", "onnxprune.cli"]
CONFIGS = ("target", "target+recover", "target+int8", "dense+int8")


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT)


def bench(model: real_corpus.RealModel, pruned: Path, batch: int) -> float:
    """The speed-up of ``pruned`` over the dense model, interleaved, at ``batch`` on the test inputs."""
    done = run([*ONNXPRUNE, "bench", str(pruned), "--vs", str(model.path), "--batch", str(batch), "--runs", "100",
                "--data", str(model.test), "--json"])
    if done.returncode:
        raise SystemExit(f"bench {pruned}: {done.stderr.strip().splitlines()[-1]}")
    return float(json.loads(done.stdout)["ratio"])


def prune(model: real_corpus.RealModel, out: Path, flags: list[str]) -> str | None:
    """One prune process; its error line or None."""
    done = run([*ONNXPRUNE, "prune", str(model.path), "-o", str(out), "--calib", str(model.calib), *flags])
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return lines[-1][:160] if lines else f"exit {done.returncode}"
    return None


def frontier(model: real_corpus.RealModel, config: str, batch: int, args: argparse.Namespace, dense: float,
             folder: Path) -> dict:
    """The best speed-up within 1 % and 2 % of dense for one configuration, and what was tried."""
    began, tried, table = time.perf_counter(), [], None
    if config == "dense+int8":
        ladder = [None]
    else:
        ladder = [float(s) for s in args.ladder.split(",")]
    misses = 0
    for speedup in ladder:
        out = folder / f"{model.name}_{config.replace('+', '_')}_b{batch}_{speedup}.onnx"
        report = out.with_suffix(".json")
        if config == "dense+int8":
            flags = ["-m", "magnitude", "-s", "0", "--quantize", "int8"]
        else:
            flags = ["-m", args.method, "--round-to", str(args.round_to), "--target-speedup", str(speedup),
                     "--target-batch", str(batch), "--report", str(report)]
            if table is not None:
                flags += ["--target-table", str(table)]
            if config == "target+recover":
                flags += ["--recover", str(args.recover)]
            if config == "target+int8":
                flags += ["--quantize", "int8"]
        error = prune(model, out, flags)
        if error:
            tried.append({"target": speedup, "error": error})
            misses += 1
            if misses >= 2:
                break
            continue
        if table is None and report.exists():
            table = report
        metric = real_corpus.task_metric(model, out)
        share = metric / dense if dense else 0.0
        tried.append({"target": speedup, "speedup": bench(model, out, batch), "share": share})
        print(f"  {model.name} {config} b{batch} {speedup}: {tried[-1]}", file=sys.stderr, flush=True)
        misses = misses + 1 if share < 0.98 else 0
        if misses >= 2:
            break
    best = {level: max((t["speedup"] for t in tried if "speedup" in t and t["share"] >= 1 - level), default=None)
            for level in (0.01, 0.02)}
    return {"best_1": best[0.01], "best_2": best[0.02], "tried": tried, "seconds": time.perf_counter() - began}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--select", default="*")
    parser.add_argument("--batches", default="8,1")
    parser.add_argument("--ladder", default="1.25,1.5,2,2.5,3")
    parser.add_argument("--method", default="chita-channel")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--recover", type=float, default=120.0)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args(argv)
    folder = args.folder / "frontier"
    folder.mkdir(exist_ok=True)
    rows = []
    for model in real_corpus.build(args.folder):
        if not fnmatch.fnmatch(model.name, args.select):
            continue
        dense = real_corpus.task_metric(model, model.path)
        for batch in (int(b) for b in args.batches.split(",")):
            for config in args.configs.split(","):
                found = frontier(model, config, batch, args, dense, folder)
                cells = ["-" if found[k] is None else f"{found[k]:.2f}x" for k in ("best_1", "best_2")]
                rows.append([model.name, str(batch), config, *cells, f"{found['seconds']:.0f}"])
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    head = ["model", "batch", "configuration", "within 1 %", "within 2 %", "seconds"]
    print(real_corpus.markdown_table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
