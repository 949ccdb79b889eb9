"""Write-back changes only the given weights, writes atomically and never touches the input."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import pytest

from graphs import mlp_data, save, tiny_mlp
from onnxprune.graph.canonical import canonicalize
from onnxprune.errors import ModelError, OutputError
from onnxprune.graph.io import load_model
from onnxprune.graph.prunable import read_weights
from onnxprune.runtime.sessions import make_session
from onnxprune.graph.edit import compress_sparse, replace_initializers
from onnxprune.graph.stats import model_stats
from onnxprune.graph.io import save_model


def _run(model, x):
    return make_session(model, device="cpu").run(None, {"x": x})[0]


def test_identity_write_back_reproduces_outputs(tmp_path):
    source = save(tiny_mlp(), tmp_path / "in.onnx")
    canonical = canonicalize(load_model(source)).model
    same = replace_initializers(canonical, read_weights(canonical))
    out = save_model(same, tmp_path / "out.onnx", inputs=[source])
    x = mlp_data()["x"]
    assert np.max(np.abs(_run(str(out), x) - _run(str(source), x))) <= 1e-6
    written = onnx.load(str(out))
    assert [i.name for i in written.graph.input] == ["x"] and written.graph.output[0].name == "logits"
    assert written.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert {p.key for p in written.metadata_props} == {"author", "licence"}


def test_replace_checks_names_and_shapes():
    model = tiny_mlp()
    with pytest.raises(ModelError, match="shape"):
        replace_initializers(model, {"fc1.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ModelError, match="no initializer"):
        replace_initializers(model, {"nope": np.zeros(1, np.float32)})


def test_output_equal_to_input_is_refused(tmp_path):
    source = save(tiny_mlp(), tmp_path / "in.onnx")
    before = source.read_bytes()
    with pytest.raises(OutputError, match="never overwrites"):
        save_model(tiny_mlp(1), tmp_path / "sub" / ".." / "in.onnx", inputs=[source])
    assert source.read_bytes() == before


def test_missing_output_folder_is_refused(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        save_model(tiny_mlp(), tmp_path / "nowhere" / "out.onnx")


def test_interrupted_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = save(tiny_mlp(0), tmp_path / "out.onnx")
    old = target.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OutputError, match="No space left"):
        save_model(tiny_mlp(1), target)
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_compressed_file_is_smaller_and_runs_identically(tmp_path):
    model = tiny_mlp()
    weights = read_weights(model)
    sparse = {n: np.where(np.abs(w) > np.quantile(np.abs(w), 0.9), w, 0).astype(np.float32) for n, w in weights.items()}
    pruned = replace_initializers(model, sparse)
    compressed, names = compress_sparse(pruned)
    assert sorted(names) == ["fc1.weight", "fc2.weight"]
    assert compressed.ByteSize() < pruned.ByteSize()
    x = mlp_data()["x"]
    assert np.max(np.abs(_run(compressed, x) - _run(pruned, x))) == 0.0
    # A compressed model is read back densely by canonicalize, so it can be pruned again.
    again = canonicalize(compressed).model
    assert len(again.graph.sparse_initializer) == 0
    assert np.array_equal(read_weights(again)["fc1.weight"], sparse["fc1.weight"])


def test_compression_never_grows_a_file_and_stats_see_through_it():
    """Sparse storage costs 12 bytes per kept float32 weight (value and int64 index): at 50 % zeros it would
    grow the file, so those tensors stay dense; the figures of a compressed model are its dense model's."""
    model = tiny_mlp()
    weights = read_weights(model)
    half = {n: np.where(np.abs(w) > np.median(np.abs(w)), w, 0).astype(np.float32) for n, w in weights.items()}
    pruned = replace_initializers(model, half)
    compressed, names = compress_sparse(pruned)
    assert names == [] and compressed.ByteSize() == pruned.ByteSize()
    sparse = {n: np.where(np.abs(w) > np.quantile(np.abs(w), 0.8), w, 0).astype(np.float32) for n, w in weights.items()}
    pruned = replace_initializers(model, sparse)
    compressed, names = compress_sparse(pruned)
    assert sorted(names) == ["fc1.weight", "fc2.weight"] and compressed.ByteSize() < pruned.ByteSize()
    dense_stats, sparse_stats = model_stats(pruned), model_stats(compressed)
    assert sparse_stats.sparsity == dense_stats.sparsity > 0.75
    assert (sparse_stats.macs, sparse_stats.sparse_macs) == (dense_stats.macs, dense_stats.sparse_macs)


def test_written_files_get_ordinary_permissions(tmp_path):
    """A temporary file starts at 0600; the written model and report must get the umask's ordinary mode, so
    that a serving process under another user can read them."""
    from onnxprune.report import write_json

    old = os.umask(0o022)
    try:
        model = save_model(tiny_mlp(), tmp_path / "m.onnx")
        report = write_json({"a": 1}, tmp_path / "r.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(model.stat().st_mode) == 0o644
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
