"""What recovery by distillation (``prune --recover``) buys on the real-model corpus, measured on data unlike the
calibration set, each prune its own ``onnxprune prune`` process.

Sentence embedders (minilm_*) are calibrated on real sentences of the Python documentation and judged by the mean
cosine of their pooled embeddings to the dense model's on real sentences of other sources
(tools/real_sentences.py); the other models are calibrated on their corpus ``calib.npz`` and judged by their task
metric on ``test.npz`` (as a share of dense). Every setting runs without and with ``--recover SECONDS``.

    python tools/bench_recovery.py DIR [--select GLOB] [--settings "sparsegpt:-s 0.5;chita-channel:--target-speedup 2"]
                                   [--recover 120]
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import real_corpus  # noqa: E402
import real_sentences  # noqa: E402

ONNXPRUNE = [sys.executable, "-m", "onnxprune.cli"]
MAX_LENGTH = 64


def pooled(model: Path, data) -> np.ndarray:
    """Unit-norm mean-pooled embeddings (attention-masked) of the model's first output."""
    from onnxprune.runtime.feeds import run_batched
    from onnxprune.runtime.sessions import make_session

    hidden = run_batched(make_session(model, device="cpu"), data)[0]
    mask = data.inputs["attention_mask"][..., None].astype(np.float64)
    vectors = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def embedder_score(model: real_corpus.RealModel, pruned: Path, test: Path) -> float:
    import onnx

    from onnxprune.data import Source, load_data

    data = load_data(Source(str(test), tokenizer=str(model.path.parent / "tokenizer.json"), max_length=MAX_LENGTH),
                     onnx.load(str(model.path)))
    return float(np.mean(np.sum(pooled(pruned, data) * pooled(model.path, data), axis=1)))


def prune(model: real_corpus.RealModel, out: Path, flags: list[str], calib: list[str]) -> tuple[float, str | None]:
    start = time.perf_counter()
    done = subprocess.run([*ONNXPRUNE, "prune", str(model.path), "-o", str(out), *calib, *flags], capture_output=True,
                          text=True, cwd=ROOT)
    error = None
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        error = lines[-1][:160] if lines else f"exit {done.returncode}"
    return time.perf_counter() - start, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--select", default="*")
    parser.add_argument("--settings", default="sparsegpt:-s 0.5;chita:-s 0.5;chita-channel:--target-speedup 2 --round-to 8")
    parser.add_argument("--recover", type=float, default=120.0)
    args = parser.parse_args(argv)
    sentences = Path(tempfile.mkdtemp(prefix="real-sentences-"))
    facts = real_sentences.write(sentences, 640, 512)
    print(f"real sentences: {facts['sources']}", file=sys.stderr, flush=True)
    rows = []
    for model in real_corpus.build(args.folder):
        if not fnmatch.fnmatch(model.name, args.select):
            continue
        embedder = model.name.startswith("minilm")
        if embedder:
            calib = ["--calib", str(sentences / "real_calib.txt"), "--tokenizer",
                     str(model.path.parent / "tokenizer.json"), "--max-length", str(MAX_LENGTH)]
            score = lambda out: embedder_score(model, out, sentences / "real_test.txt")  # noqa: E731
        else:
            dense = real_corpus.task_metric(model, model.path)
            calib = ["--calib", str(model.calib)]
            score = lambda out: real_corpus.task_metric(model, out) / dense  # noqa: E731
        for setting in args.settings.split(";"):
            method, _, flags = setting.partition(":")
            if method.startswith("chita-channel") and model.name == "magika":
                continue
            for recover in (None, args.recover):
                out = args.folder / "recovery" / f"{model.name}_{method}_{'r' if recover else 'p'}.onnx"
                out.parent.mkdir(exist_ok=True)
                extra = ["-m", method, *flags.split()] + (["--recover", str(recover)] if recover else [])
                seconds, error = prune(model, out, extra, calib)
                figure = error or f"{score(out):.4f}"
                rows.append([model.name, f"{method} {flags}", f"{recover:.0f} s" if recover else "-", figure,
                             f"{seconds:.0f}"])
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    head = ["model", "setting", "recovery", "cosine to dense (embedders) / share of dense metric", "prune s"]
    print(real_corpus.markdown_table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
