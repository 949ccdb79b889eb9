"""Memory-bounded layer-wise work: Gram matrices on disk beyond the budget, capture in passes, weightless shape
inference; what is resident never changes a result."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.activations.gram import GramStats, capture_grams, resident_bytes
from onnxprune.activations.gram_store import GramStore, capture_passes, capture_to_store, gram_bytes
from onnxprune.activations.layers import layer_sources
from onnxprune.data import load_data
from onnxprune.graph.canonical import canonicalize, infer_shapes
from onnxprune.graph.io import load_model
from onnxprune.graph.prunable import read_weights, select_prunable
from onnxprune.graph.shapes import without_weights
from onnxprune.methods import prune_model
from onnxprune.methods.unstructured.sparsegpt import SparsegptConfig
from onnxprune.units import format_bytes

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def cnn():
    model = canonicalize(load_model(MODELS / "cnn.onnx")).model
    calib = load_data(MODELS / "cnn_calib.npz", model).take(24)
    sources, _ = layer_sources(model, [w.name for w in select_prunable(model, False, False)])
    return model, calib, sources


def test_a_store_over_its_limit_keeps_grams_on_disk_and_reads_them_back_exactly():
    rng = np.random.default_rng(0)
    stats = {f"layer{i}": GramStats(rng.standard_normal((1, 5, 5)), 40 + i, rng.standard_normal((1, 5))) for i in range(3)}
    roomy, tight = GramStore(limit=1 << 50), GramStore(limit=1)  # any process is over one byte
    for name, found in stats.items():
        roomy.add(name, found)
        tight.add(name, found)
    assert (roomy.spilled, tight.spilled) == (0, 3)
    assert list(tight) == list(stats) and len(tight) == 3
    for name, found in stats.items():
        back = tight[name]
        np.testing.assert_array_equal(back.H, found.H)
        np.testing.assert_array_equal(back.mean, found.mean)
        assert back.n_rows == found.n_rows and back.H is not found.H
    folder = Path(tight._folder.name)
    assert len(os.listdir(folder)) == 3
    roomy.trim(extra=1 << 60)  # nothing leaves room that large: all of it goes to disk
    assert roomy.spilled == 3
    del tight
    gc.collect()
    assert not folder.exists()  # the store's folder goes with it


def test_a_store_spills_what_would_not_leave_room_for_the_work_ahead():
    from onnxprune.activations.gram import resident_bytes

    stats = GramStats(np.ones((1, 4, 4)), 10, np.ones((1, 4)))
    store = GramStore(limit=resident_bytes() + (1 << 30), reserve=1 << 20)  # a GiB beyond this process
    store.add("kept", stats)
    store.add("beside the next pass", stats, ahead=1 << 20)
    store.add("spilled", stats, ahead=2 << 30)  # the next pass needs two GiB: no room to keep it
    assert store.spilled == 1 and set(store._held) == {"kept", "beside the next pass"}
    np.testing.assert_array_equal(store["spilled"].H, stats.H)


def test_capture_passes_split_by_half_the_room_and_take_one_layer_at_least(cnn):
    _model, _calib, sources = cnn
    sizes = [gram_bytes(s) for s in sources]
    assert capture_passes(sources, 4 * sum(sizes)) == [sources]
    for room in (0, sum(sizes)):  # no room: passes of at most the largest Gram
        split = capture_passes(sources, room)
        assert [s for p in split for s in p] == sources and len(split) >= 2
        assert all(sum(gram_bytes(s) for s in p) <= max(room // 2, max(sizes)) for p in split)
        assert all(sum(gram_bytes(s) for s in a + b[:1]) > max(room // 2, max(sizes)) for a, b in zip(split, split[1:]))


def test_grams_captured_in_passes_equal_one_capture(cnn):
    model, calib, sources = cnn
    whole = capture_grams(model, calib, sources, batch_size=16)
    store = GramStore(limit=1)
    largest = max(gram_bytes(s) for s in sources)
    passes = capture_to_store(model, calib, sources, store, batch_size=16, max_memory=4 * largest,
                              model_bytes=model.ByteSize())
    assert passes == len(capture_passes(sources, 0)) > 1 and store.spilled == len(sources)
    for name, found in whole.items():
        np.testing.assert_array_equal(store[name].H, found.H)
        assert store[name].n_rows == found.n_rows


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_a_budget_below_the_process_gives_the_same_model(cnn, allocation):
    """A budget far below what the process holds: one layer per capture pass, every Gram on disk, one layer's
    factors kept at a time, the capture batch at one chunk: the same weights to the bit."""
    model, calib, sources = cnn
    largest = max(gram_bytes(s) for s in sources)
    assert (resident_bytes() or 0) > 6 * largest
    roomy = prune_model("sparsegpt", model, SparsegptConfig(sparsity=0.6, allocation=allocation,
                                                             max_memory="64G"), calib)
    tight = prune_model("sparsegpt", model, SparsegptConfig(sparsity=0.6, allocation=allocation,
                                                             max_memory=str(6 * largest)), calib)
    assert (roomy.details["passes"], tight.details["passes"]) == (1, len(capture_passes(sources, 0)))
    first, second = read_weights(roomy.model), read_weights(tight.model)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_a_budget_below_one_layers_solve_is_refused_with_the_figure(cnn):
    model, calib, sources = cnn
    largest = max(sources, key=gram_bytes)
    with pytest.raises(Exception, match=rf"layer {largest.name} .* needs about {format_bytes(5 * gram_bytes(largest))}"):
        prune_model("sparsegpt", model, SparsegptConfig(max_memory=str(4 * gram_bytes(largest))), calib)


def test_shapes_are_inferred_without_copying_the_weights(cnn):
    model = load_model(MODELS / "cnn.onnx")
    light = without_weights(model)
    big = [t.name for t in model.graph.initializer if np.prod(t.dims) > 1024]
    assert big and not {t.name for t in light.graph.initializer} & set(big)
    assert set(big) <= {v.name for v in light.graph.input}
    assert len(model.graph.initializer) == 47  # the model itself is untouched
    bare = canonicalize(model).model
    del bare.graph.value_info[:]
    full = onnx.shape_inference.infer_shapes(bare, strict_mode=False, data_prop=True)
    inferred = infer_shapes(bare, [])
    assert len(inferred.graph.value_info) > 10
    assert [v.SerializeToString() for v in inferred.graph.value_info] == \
        [v.SerializeToString() for v in full.graph.value_info]
    assert list(inferred.graph.output) == list(full.graph.output)
