"""Loading refuses bad files with one clear ModelError; external data stays inside the model's folder."""

from __future__ import annotations

import numpy as np
import pytest

from graphs import mlp_data, save, save_external, tiny_mlp
from onnxprune.errors import ModelError
from onnxprune.graph.io import load_model
from onnxprune.runtime.sessions import make_session


def _outputs(model_or_path, data):
    return make_session(model_or_path, device="cpu").run(None, {"x": data["x"]})[0]


def test_loads_a_valid_model_unchanged(tmp_path):
    path = save(tiny_mlp(), tmp_path / "m.onnx")
    model = load_model(path)
    assert [n.name for n in model.graph.node] == ["fc1", "relu", "fc2", "fc2_bias"]
    assert {p.key: p.value for p in model.metadata_props} == {"author": "tests", "licence": "none"}


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"),
    (b"this is a text file, not a protobuf", "not a readable ONNX model"),
])
def test_missing_or_foreign_file(tmp_path, content, words):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=words):
        load_model(path)


def test_truncated_file(tmp_path):
    full = tiny_mlp().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ModelError):
        load_model(path)


def test_checker_failure_is_reported(tmp_path):
    model = tiny_mlp()
    model.graph.node[1].input[0] = "no_such_value"
    path = save(model, tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match="onnx.checker"):
        load_model(path)


def test_external_data_loads_and_runs_identically(tmp_path):
    model = tiny_mlp()
    folder = tmp_path / "ext"
    folder.mkdir()
    path = save_external(tiny_mlp(), folder / "m.onnx")
    assert (folder / "weights.bin").stat().st_size > 600
    loaded = load_model(path)
    data = mlp_data()
    assert np.array_equal(_outputs(loaded, data), _outputs(model, data))


@pytest.mark.parametrize("location, words", [("../outside.bin", "escapes"), ("/etc/passwd", "absolute"),
                                             ("missing.bin", "missing")])
def test_external_data_outside_folder_or_missing_is_refused(tmp_path, location, words):
    folder = tmp_path / "ext"
    folder.mkdir()
    path = save_external(tiny_mlp(), folder / "m.onnx", point_to=location)
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    with pytest.raises(ModelError, match=words):
        load_model(path)
