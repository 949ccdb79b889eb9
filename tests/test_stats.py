"""Size report figures checked against hand counts."""

from __future__ import annotations

import numpy as np

from graphs import save, tiny_conv, tiny_mlp
from onnxprune.graph.prunable import read_weights
from onnxprune.graph.stats import model_stats
from onnxprune.graph.edit import replace_initializers


def test_macs_and_params_match_hand_counts(tmp_path):
    conv = model_stats(tiny_conv())
    assert conv.macs == 8 * 8 * (6 * 3 * 3 * 3) + 8 * 8 * (4 * 6)
    assert conv.params == 6 * 3 * 3 * 3 + 4 * 6
    path = save(tiny_mlp(), tmp_path / "m.onnx")
    mlp = model_stats(tiny_mlp(), path)
    assert mlp.macs == 8 * 16 + 16 * 4
    assert mlp.params == 16 * 8 + 16 + 16 * 4 + 4 and mlp.prunable_params == 16 * 8 + 16 * 4
    assert mlp.file_bytes == path.stat().st_size


def test_weights_in_constant_nodes_count_like_initializers():
    from onnx import helper

    model = tiny_conv()
    weights = list(model.graph.initializer)
    del model.graph.initializer[:]
    model.graph.node.insert(0, helper.make_node("Constant", [], [weights[0].name], value=weights[0]))
    model.graph.initializer.extend(weights[1:])
    stats, expected = model_stats(model), model_stats(tiny_conv())
    assert (stats.params, stats.macs, stats.sparse_macs) == (expected.params, expected.macs, expected.sparse_macs)
    assert stats.params == 6 * 3 * 3 * 3 + 4 * 6 and [n.op_type for n in model.graph.node][0] == "Constant"


def test_sparsity_and_sparse_macs_follow_zeros():
    model = tiny_conv()
    weights = read_weights(model)
    half = {n: np.where(np.arange(w.size).reshape(w.shape) % 2 == 0, w, 0).astype(np.float32)
            for n, w in weights.items()}
    stats = model_stats(replace_initializers(model, half))
    assert [t.nonzero for t in stats.tensors] == [81, 12]
    assert stats.sparsity == 1 - 93 / 186
    assert stats.sparse_macs == 64 * 81 + 64 * 12
