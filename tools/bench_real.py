"""Prune every model of the real-model corpus (tools/real_corpus.py) with several methods and print one
table: the task metric of each written file in ONNX Runtime, relative to the dense model, with the
prune's wall time and peak memory (each prune runs as its own ``onnxprune prune`` process).

    python tools/bench_real.py DIR [--methods magnitude,chita,sparsegpt,wanda] [--settings 0.5,2:4]
                               [--select GLOB] [--markdown]
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import real_corpus  # noqa: E402

ONNXPRUNE = [sys.executable, "-m", "onnxprune.cli"]


def run_prune(model: real_corpus.RealModel, method: str, setting: str, out: Path,
              extra: list[str]) -> tuple[float, float, str | None]:
    """(wall seconds, peak RSS in MB, error line or None) of one ``onnxprune prune`` process."""
    target = ["--pattern", setting] if ":" in setting else ["--sparsity", setting]
    command = [*ONNXPRUNE, "prune", str(model.path), "-o", str(out), "--method", method, "--calib",
               str(model.calib), *target, *extra]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log, tempfile.NamedTemporaryFile("r") as peak_file:
        # /usr/bin/time starts the prune from a small process: a child forked from this (large) one would
        # count this process's memory in its peak
        process = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak_file.name, *command],
                                 stdout=subprocess.DEVNULL, stderr=log, text=True, cwd=ROOT)
        log.seek(0)
        stderr = log.read()
        peak = int(peak_file.read().split()[-1]) / 1024
    seconds = time.perf_counter() - start
    if process.returncode:
        lines = [line for line in stderr.splitlines() if line.startswith(("error", "internal error"))]
        return seconds, peak, (lines[-1] if lines else stderr.strip().splitlines()[-1])[:160]
    return seconds, peak, None


def fidelity(model: real_corpus.RealModel, pruned: Path) -> str:
    """How the first output follows the dense model's on the test inputs, measured by onnxprune's own
    evaluation: top-1 agreement for class scores, IoU at 0.3 for maps in [0, 1], cosine otherwise."""
    import numpy as np

    from onnxprune.data import Dataset
    from onnxprune.validate.evaluation import evaluate

    with np.load(model.test, allow_pickle=False) as arrays:  # the inputs only: the metric's extras stay out
        data = Dataset({name: arrays[name] for name in real_corpus.info(model)["inputs"]})
    first = evaluate(pruned, data, reference=model.path, device="cpu", iou_threshold=0.3).outputs[0]
    if first.agreement is not None:
        return f"agree {first.agreement:.1%}"
    if first.iou is not None:
        return f"IoU {first.iou:.3f}"
    return f"cos {first.cosine:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--methods", default="magnitude,chita,sparsegpt,wanda")
    parser.add_argument("--settings", default="0.5,2:4", help="sparsities and N:M patterns")
    parser.add_argument("--select", default="*")
    parser.add_argument("--extra", default="", help="extra arguments for every prune, e.g. '-O engine=layer'")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    models = [m for m in real_corpus.build(args.folder) if fnmatch.fnmatch(m.name, args.select)]
    out_dir = args.folder / "pruned"
    out_dir.mkdir(exist_ok=True)
    rows = []
    for model in models:
        dense = real_corpus.task_metric(model, model.path)
        facts = real_corpus.info(model)
        rows.append([model.name, facts["exporter"][:24], f"{facts['float_weights']:,}", "dense", "-",
                     f"{dense:.4f}", "100.0", "-", "-", "-", ""])
        for setting in args.settings.split(","):
            for method in args.methods.split(","):
                out = out_dir / f"{model.name}_{method}_{setting.replace(':', 'of')}.onnx"
                seconds, peak, error = run_prune(model, method, setting, out, args.extra.split())
                if error:
                    rows.append([model.name, "", "", method, setting, "-", "-", "-", f"{seconds:.1f}",
                                 f"{peak:.0f}", error])
                    continue
                metric = real_corpus.task_metric(model, out)
                cosine = real_corpus.embedding_cosine(model, out, model.path)
                if cosine is None:
                    cosine = fidelity(model, out)
                rows.append([model.name, "", "", method, setting, f"{metric:.4f}",
                             f"{100 * metric / dense:.1f}" if dense else "-",
                             cosine if isinstance(cosine, str) else f"emb. cos {cosine:.4f}", f"{seconds:.1f}", f"{peak:.0f}", ""])
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    head = ["model", "exporter", "weights", "method", "setting", "metric", "% of dense", "fidelity to dense",
            "prune s", "peak MB", "error"]
    if args.markdown:
        print(real_corpus.markdown_table(head, rows))
    else:
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        for row in [head] + rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
