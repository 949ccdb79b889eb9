"""Layer solver variants on a model's largest layers: CHITA's layer solve with 0 and 1 swap rounds (a
layer-wide budget), and with ``--full`` the solve without H's factor where a layer has one; each layer's
relative error and solve time. The Gram matrices come from the model's calibration data through ONNX
Runtime once; every variant solves the same problems, each from a fresh LayerProblem.

    python tools/bench_layer_solver.py MODEL.onnx CALIB.npz [--layers 3] [--sparsity 0.5] [--threads 2] [--full]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxprune  # noqa: E402,F401  (before torch: sets how idle OpenMP threads wait)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("calib", type=Path)
    parser.add_argument("--layers", type=int, default=3, help="the largest layers by weights × inputs")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also solve without H's factor (0 rounds)")
    args = parser.parse_args()

    import onnx
    import torch

    from onnxprune.activations.gram import capture_grams
    from onnxprune.activations.layers import layer_sources
    from onnxprune.data import Source, load_data
    from onnxprune.graph.canonical import canonicalize
    from onnxprune.graph.prunable import read_weights, select_prunable
    from onnxprune.methods.solvers.layer_solver import LayerProblem, LayerTarget, layer_ridge, solve_chita

    torch.set_num_threads(args.threads)
    model = canonicalize(onnx.load(args.model)).model
    data = load_data(Source(str(args.calib)), model)
    sources, _ = layer_sources(model, [w.name for w in select_prunable(model, False, False)])
    weights = read_weights(model, [s.name for s in sources])
    sources = sorted(sources, key=lambda s: -s.d_in * weights[s.name].size)[:args.layers]
    grams = capture_grams(model, data, sources)
    target = LayerTarget(args.sparsity)
    variants = [(0, True), (1, True)] + ([(0, False)] if args.full else [])
    print("| layer | shape | rows | factor | " + " | ".join(
        f"error, {rounds} round(s){'' if factor else ', no factor'} | s" for rounds, factor in variants) + " |")
    print("|---" * (4 + 2 * len(variants)) + "|")
    for s in sources:
        W, H, rows = s.to_groups(weights[s.name])[0], grams[s.name].H[0], grams[s.name].n_rows
        cells, factored = [], LayerProblem(W, H, 1.0, rows).low_rank is not None
        for rounds, factor in variants:
            if not factor and not factored:
                cells += ["", ""]
                continue
            problem = LayerProblem(W, H, layer_ridge(H, 0.01), rows if factor else None)
            began = time.perf_counter()
            solved = solve_chita(problem, target, swap_rounds=rounds)
            cells += [f"{problem.error(solved) / problem.dense_energy:.6g}", f"{time.perf_counter() - began:.1f}"]
        print(f"| {s.name} | {W.shape[0]}×{W.shape[1]} | {rows} | {'yes' if factored else 'no'} | "
              f"{' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
