"""Benchmark the layer-wise methods against magnitude and CHITA's model engine on the bundled MLP and
CNN: ONNX Runtime test accuracy (all 10,000 images), prune time and peak RSS at 0.5, 0.7, 0.9 and 2:4.

One fresh process per (model, method, unstructured|2:4), so each peak RSS is that run's own; inside it one
``Pruner`` serves every sparsity, so the first row of a method includes the capture (or gradients) and
later rows re-use them (see ``time_s``). Run: ``OMP_WAIT_POLICY=PASSIVE .venv/bin/python
tools/bench_layerwise.py`` (``--models mlp`` / ``--calib-samples 256`` for a quicker run).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

MODELS = Path(__file__).resolve().parents[1] / "models"
SPARSITIES = (0.5, 0.7, 0.9)
METHODS = {"magnitude": {}, "wanda": {}, "sparsegpt": {}, "chita-layer": {"engine": "layer"},
           "chita-model": {"engine": "model"}}


def magnitude_nm(model: "onnx.ModelProto", n: int, m: int) -> "onnx.ModelProto":
    """Keep the N largest |w| of every M consecutive inputs of each output (magnitude has no pattern option)."""
    import numpy as np

    from onnxprune.activations.layers import layer_sources
    from onnxprune.graph.edit import replace_initializers
    from onnxprune.graph.prunable import find_prunable, read_weights
    from onnxprune.methods.solvers.layer_solver import LayerProblem, LayerTarget, solve_wanda

    sources, _ = layer_sources(model, [w.name for w in find_prunable(model)])
    weights = read_weights(model)
    pruned = {}
    for s in sources:
        if s.d_in % m == 0:  # |w|·1: Wanda's scores with unit input norms
            target = LayerTarget(1 - n / m, (n, m))
            groups = np.stack([solve_wanda(LayerProblem(w, np.eye(s.d_in), 0.0), target) for w in s.to_groups(weights[s.name])])
            pruned[s.name] = s.from_groups(groups).astype(weights[s.name].dtype)
    return replace_initializers(model, pruned)


def run(model: str, method: str, pattern: str, samples: int, threads: int) -> list[dict[str, Any]]:
    """Prune ``model`` at every sparsity (or the pattern) in this process and evaluate each in ORT."""
    import torch

    from onnxprune.data import load_data
    from onnxprune.graph.io import load_model
    from onnxprune.pipeline import Pruner
    from onnxprune.validate.evaluation import evaluate

    torch.set_num_threads(threads)
    name = method.split("-")[0]
    if name == "magnitude" and pattern:
        return [magnitude_pattern(model, pattern, threads)]
    options = dict(METHODS[method], **({"pattern": pattern} if pattern else {}))
    calib = load_data(MODELS / f"{model}_calib.npz", load_model(MODELS / f"{model}.onnx"))
    calib = calib.take(min(samples, len(calib))) if samples else calib
    pruner = Pruner(MODELS / f"{model}.onnx", name, calib=None if name == "magnitude" else calib, **options)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for sparsity in ([0.5] if pattern else SPARSITIES):
            out = Path(folder) / f"{sparsity}.onnx"
            began = time.perf_counter()
            outcome = pruner.write(out, sparsity)
            seconds = time.perf_counter() - began
            accuracy = 100 * evaluate(out, MODELS / f"{model}_test.npz", threads=threads, device="cpu").accuracy
            rows.append({"model": model, "method": method, "setting": pattern or f"{sparsity:.1f}",
                         "accuracy": accuracy, "time_s": seconds, "engine": outcome.details.get("engine", ""),
                         "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return rows


def magnitude_pattern(model: str, pattern: str, threads: int) -> dict[str, Any]:
    """Magnitude at an N:M pattern, written and evaluated like the other runs."""
    from onnxprune.graph.canonical import canonicalize
    from onnxprune.graph.io import save_model
    from onnxprune.graph.io import load_model
    from onnxprune.validate.evaluation import evaluate

    n, m = (int(v) for v in pattern.split(":"))
    began = time.perf_counter()
    pruned = magnitude_nm(canonicalize(load_model(MODELS / f"{model}.onnx")).model, n, m)
    seconds = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as folder:
        out = save_model(pruned, Path(folder) / "nm.onnx")
        accuracy = 100 * evaluate(out, MODELS / f"{model}_test.npz", threads=threads, device="cpu").accuracy
    return {"model": model, "method": "magnitude", "setting": pattern, "accuracy": accuracy, "time_s": seconds,
            "engine": "", "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--calib-samples", type=int, default=0, help="first N calibration images (0: all 1000)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    results = []
    for model in args.models.split(","):
        for method in args.methods.split(","):
            for pattern in ("", "2:4"):
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                    rows = pool.submit(run, model, method, pattern, args.calib_samples, args.threads).result()
                for row in rows:
                    print(f"{row['model']:4} {row['method']:12} {row['setting']:4} acc {row['accuracy']:6.2f}  "
                          f"{row['time_s']:7.1f}s  {row['peak_mib']:6.0f} MiB", flush=True)
                results += rows
    print("\n| model | method | " + " | ".join(("0.5", "0.7", "0.9", "2:4")) + " | prune s (first) | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for method in args.methods.split(","):
            mine = [r for r in results if r["model"] == model and r["method"] == method]
            acc = {r["setting"]: f"{r['accuracy']:.2f}" for r in mine}
            first = " / ".join(f"{r['time_s']:.1f}" for r in mine if r["setting"] in ("0.5", "2:4"))
            print(f"| {model} | {method} | " + " | ".join(acc.get(s, "-") for s in ("0.5", "0.7", "0.9", "2:4"))
                  + f" | {first} | {max(r['peak_mib'] for r in mine):.0f} |")


if __name__ == "__main__":
    main()
