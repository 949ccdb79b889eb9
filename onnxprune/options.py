"""The vocabulary of options shared by the command line, the Python API and every method: one name, type
and meaning per concept (see ``onnxprune methods``)."""

from __future__ import annotations

# Where work runs: 'auto' is CUDA when one is usable, else the CPU (torch and ONNX Runtime alike).
DEVICES = ("auto", "cpu", "cuda")
# How an unstructured method spreads the sparsity: one budget over all prunable weights, or the same per tensor.
ALLOCATIONS = ("global", "uniform")
# Sequential capture: 'auto' is the method's default (on for channel methods with calibration data, off for
# the layer-wise unstructured methods), 'on' captures wave by wave from the partly pruned model, 'off' once.
SEQUENTIAL = ("auto", "on", "off")
# Option values of an earlier release, still accepted with a warning: option → {old value: new value}.
OLD_VALUES = {"sequential": {"true": "on", "false": "off", "yes": "on", "no": "off", "1": "on", "0": "off"}}

# What every option means, once for every method that takes it (``onnxprune methods`` prints this; a test
# checks that every config field has an entry). Method-specific defaults and notes are in the config classes.
GLOSSARY = {
    "sparsity": "fraction to remove, in [0, 1): of the prunable weights (unstructured) or of each group's channels "
                "(structured); a pattern sets its own",
    "seed": "makes every random choice repeatable (row subsets, sampled targets, random importance)",
    "allocation": "'global': one budget over all prunable weights (from each layer's error where the method has "
                  "one); 'uniform': the same sparsity in every tensor",
    "skip_first": "leave the first prunable layer dense",
    "skip_last": "leave the last prunable layer dense",
    "pattern": "'N:M' keeps N of every M consecutive input weights of each output (what sparse tensor cores run); "
               "the sparsity is then 1 - N/M and tensors whose input size is not a multiple of M stay dense",
    "engine": "CHITA's engine: 'model' (the whole-model Fisher from per-sample gradients through the torch view), "
              "'layer' (each layer's reconstruction loss on ONNX Runtime activations) or 'auto'",
    "rows": "rows of the second-order matrix: gradient rows of CHITA's Fisher (0: up to 1000 from the data), or "
            "calibration rows each consumer's Gram matrix is summed over in a channel refit (a seeded subset)",
    "samples": "use the first this many calibration samples (0: all of them)",
    "samples_per_row": "calibration samples averaged into one gradient row (0: all samples spread over the rows)",
    "targets": "what CHITA's per-sample gradients are of: 'auto' (labels when the data has them, else predictions), "
               "'labels', 'predicted', 'sampled' (labels drawn from the model: the true Fisher) or 'logits' "
               "(random projections of the output Jacobian: output distortion)",
    "ridge": "λ of the ridge that keeps weights near their dense values, relative to the mean diagonal of the "
             "curvature matrix (the Fisher, or the Gram matrix H = XᵀX of a layer's inputs); CHITA's None is 0.3 "
             "for the model engine and 0.01 for the layer engine",
    "first_order": "add the gradient term to CHITA's local model (a Newton step on the calibration loss)",
    "block_size": "weights per block of CHITA's block-diagonal Fisher, each block with its own rows (0: one Fisher "
                  "over all weights, with the exact swap search)",
    "max_memory": "memory budget ('3G', '500M'), checked before the work it bounds: the method's matrices (CHITA's "
                  "gradient matrix), or for the layer-wise methods the whole process (capture in passes, Gram "
                  "matrices on disk); larger work is split into passes or refused with the figures",
    "active_ratio": "IHT works on about this many times the kept weights, chosen by diagonal saliency (0: all)",
    "max_iter": "IHT iteration cap",
    "tol": "relative objective change that stops IHT",
    "patience": "IHT also stops once its support has not changed for this many iterations (0: off)",
    "sequential": "'on': capture wave by wave from the partly pruned model, so later layers see earlier pruning; "
                  "'off': one capture of the dense model; 'auto': on for channel methods with calibration data, "
                  "off for the layer-wise unstructured methods",
    "batch_size": "calibration samples per ONNX Runtime batch while capturing activations",
    "swap_rounds": "rounds of the layer engine's exact swap search after IHT (0: none; default 1 with a pattern, else 0)",
    "reuse_gradients": "a later CHITA++ stage reuses an earlier stage's gradients while the weights are within this "
                       "relative L2 distance of those they were computed at (0: recompute every stage)",
    "device": "where torch work runs: 'auto' (CUDA when torch sees a GPU), 'cpu' or 'cuda'",
    "stages": "CHITA++: number of CHITA solves of rising sparsity; the last one reaches the sparsity",
    "schedule": "CHITA++: how the stages' sparsities rise: 'exp' (density shrinks geometrically), 'poly' (cubic, "
                "fast early) or 'linear'",
    "base_sparsity": "CHITA++: the level the schedule starts from (the first stage prunes beyond it)",
    "early_rows": "CHITA++: the stages in the first half of the way (in log density) use this fraction of the "
                  "gradient rows (1: all rows in every stage)",
    "sweep_block": "SparseGPT: columns per lazy-update block of the OBS sweep",
    "scope": "Wanda: what the scores are compared within: 'row' (each output row, as published) or 'layer'",
    "group": "prune only this channel group (as onnxprune inspect numbers them; none: every prunable group)",
    "round_to": "keep channel counts multiples of this (8 gives widths that run faster in ORT's kernels)",
    "importance": "channel score: 'l1' / 'l2' norm of the BatchNorm-folded weights, 'taylor' (|w·∂L/∂w|, needs "
                  "calibration data) or 'random'",
    "reconstruct": "refit each pruned group's consumers by ridge least squares to the dense model's outputs on the "
                   "calibration data: 'auto' (with calibration data), 'on' or 'off'",
    "swaps": "chita-channel: at most this many swaps of a removed channel for a kept one after the greedy elimination",
    "normalization": "Intra-Fusion: 'published' (each source channel's mass sums to 1 on both sides) or "
                     "'preserving' (producers average, consumers sum: exact for duplicated channels)",
    "marginals": "Intra-Fusion: optimal-transport mass per channel, 'uniform' or by 'importance'",
}
