"""Models past protobuf's 2 GB are sized, run, fingerprinted, checked and written in parts, never serialized
whole. The route is taken here by a small real model with the limit lowered below its size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune.graph.io as io
import onnxprune.graph.protos as protos
from onnxprune.graph.io import load_model, model_fingerprint, save_model, stage_model
from onnxprune.graph.protos import over_protobuf_limit, serialized_bytes
from onnxprune.pipeline import prune
from onnxprune.runtime.sessions import make_session

CNN, CALIB, TEST = "models/cnn.onnx", "models/cnn_calib.npz", "models/cnn_test.npz"


@pytest.fixture
def limit_lowered(monkeypatch):
    """Treat anything over 100 KB as past protobuf's limit, and write it with external data."""
    monkeypatch.setattr(protos, "_PROTOBUF_LIMIT", 100_000)
    monkeypatch.setattr(io, "_EXTERNAL_DATA_THRESHOLD", 100_000)


def test_serialized_size_is_exact_without_serializing():
    for path in (CNN, "models/mlp.onnx"):
        model = onnx.load(path)
        assert serialized_bytes(model) == model.ByteSize() == len(model.SerializeToString())


def test_session_of_a_model_past_the_limit_matches_the_file(limit_lowered):
    model = load_model(CNN)
    assert over_protobuf_limit(model)
    x = np.load(TEST)["input"][:16]
    name = model.graph.input[0].name
    ours = make_session(model, device="cpu").run(None, {name: x})[0]
    reference = make_session(CNN, device="cpu").run(None, {name: x})[0]
    np.testing.assert_array_equal(ours, reference)


def test_fingerprint_in_parts_tells_weights_apart(limit_lowered):
    model = load_model(CNN)
    first = model_fingerprint(model)
    tensor = max(model.graph.initializer, key=lambda t: t.ByteSize())
    array = numpy_helper.to_array(tensor).copy()
    array.flat[0] += 1.0
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    assert model_fingerprint(model) != first and len(first) == 64


def test_written_in_parts_with_aligned_external_data(limit_lowered, tmp_path):
    model = load_model(CNN)
    before = model.SerializeToString()
    out = save_model(model, tmp_path / "out.onnx")
    assert model.SerializeToString() == before  # the model in memory keeps its weights
    stored = onnx.load(str(out), load_external_data=False)
    offsets = [int(e.value) for t in stored.graph.initializer for e in t.external_data if e.key == "offset"]
    locations = {e.value for t in stored.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"out.onnx.data"} and len(offsets) >= 4
    assert all(offset % 65536 == 0 for offset in offsets)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    onnx.checker.check_model(str(out))
    reloaded = onnx.load(str(out))
    for ours, theirs in zip(model.graph.initializer, reloaded.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(ours), numpy_helper.to_array(theirs))


def test_prune_takes_the_large_model_route_end_to_end(monkeypatch, tmp_path):
    """Load, reference run, layer-wise capture and solve, check, write: the same weights as the ordinary route."""
    small = prune("models/mlp.onnx", tmp_path / "small.onnx", "sparsegpt", sparsity=0.5, calib="models/mlp_calib.npz")
    monkeypatch.setattr(protos, "_PROTOBUF_LIMIT", 50_000)
    monkeypatch.setattr(io, "_EXTERNAL_DATA_THRESHOLD", 50_000)
    large = prune("models/mlp.onnx", tmp_path / "large.onnx", "sparsegpt", sparsity=0.5, calib="models/mlp_calib.npz")
    assert (tmp_path / "large.onnx.data").stat().st_size > 100_000 and not (tmp_path / "small.onnx.data").exists()
    assert large.after.sparsity == pytest.approx(small.after.sparsity) and large.after.sparsity > 0.4
    ours, theirs = onnx.load(large.output), onnx.load(small.output)
    for a, b in zip(ours.graph.initializer, theirs.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_capture_outputs_are_in_the_graph_only_while_the_session_is_made():
    from onnxprune.activations.capture import session_with_outputs

    model = load_model(CNN)
    before = model.SerializeToString()
    inner = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    session = session_with_outputs(model, {inner: onnx.TensorProto.FLOAT}, device="cpu")
    assert model.SerializeToString() == before
    x = np.load(TEST)["input"][:4]
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {model.graph.input[0].name: x})))
    assert values[inner].shape[0] == 4 and (values[inner] >= 0).all() and values[inner].max() > 0


def test_a_staged_model_takes_its_name_only_when_committed(limit_lowered, tmp_path):
    model = load_model(CNN)
    dropped = stage_model(model, tmp_path / "dropped.onnx")
    assert dropped.data.stat().st_size > 100_000 and not (tmp_path / "dropped.onnx").exists()
    onnx.checker.check_model(str(dropped.path))  # the pair as written, under its temporary names
    dropped.discard()
    assert list(tmp_path.iterdir()) == []
    kept = stage_model(model, tmp_path / "kept.onnx").commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.onnx", "kept.onnx.data"]
    for ours, theirs in zip(model.graph.initializer, load_model(kept).graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(ours), numpy_helper.to_array(theirs))


def test_files_are_timed_one_after_the_other_when_two_sessions_do_not_fit(tmp_path):
    """A budget below what the process holds already: the input and output files are timed alone, in turn."""
    roomy = prune("models/mlp.onnx", tmp_path / "a.onnx", "sparsegpt", sparsity=0.5, calib="models/mlp_calib.npz")
    tight = prune("models/mlp.onnx", tmp_path / "b.onnx", "sparsegpt", sparsity=0.5, calib="models/mlp_calib.npz",
                  max_memory="200M")
    assert roomy.speed["timed"] == "in turns" and tight.speed["timed"].startswith("one after the other")
    for speed in (roomy.speed, tight.speed):
        assert 0 < speed["output_ms"] < 50 and 0.3 < speed["speedup"] < 3  # unstructured: about dense speed
