"""Calibration/eval data files: every mismatch with the model is one DataError line."""

from __future__ import annotations

import numpy as np
import pytest

from graphs import mlp_data, tiny_mlp
from onnxprune.data import load_data
from onnxprune.errors import DataError


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def test_valid_npz_and_npy(tmp_path):
    data = mlp_data(10)
    ds = load_data(_npz(tmp_path, **data), tiny_mlp())
    assert len(ds) == 10 and ds.labels.tolist() == data["labels"].tolist()
    npy = tmp_path / "x.npy"
    np.save(npy, data["x"])
    assert load_data(npy, tiny_mlp()).inputs["x"].shape == (10, 8)


@pytest.mark.parametrize("arrays, words", [
    ({"y": np.zeros((4, 8), np.float32)}, "not a model input"),
    ({"x": np.zeros((4, 8), np.float64)}, "dtype float64"),
    ({"x": np.zeros((4, 9), np.float32)}, "axis 1 differs"),
    ({"x": np.zeros((4, 8, 1), np.float32)}, "rank 2"),
    ({"x": np.full((4, 8), np.nan, np.float32)}, "NaN/Inf"),
    ({"x": np.full((4, 8), np.inf, np.float32)}, "NaN/Inf"),
    ({"x": np.zeros((0, 8), np.float32)}, "zero samples"),
    ({"x": np.zeros((4, 8), np.float32), "labels": np.zeros(3, np.int64)}, "3 labels for 4 samples"),
    ({"x": np.zeros((4, 8), np.float32), "labels": np.zeros(4, np.float32)}, "integer"),
    ({}, "no array for model input"),
])
def test_mismatches_are_one_clear_error(tmp_path, arrays, words):
    with pytest.raises(DataError, match=words) as info:
        load_data(_npz(tmp_path, **arrays), tiny_mlp())
    assert "\n" not in str(info.value)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="pickled"):
        load_data(path, tiny_mlp())


@pytest.mark.parametrize("name, content", [("d.txt", b"1,2,3"), ("d.npz", b"PK\x03\x04broken"), ("d.npy", b"nope")])
def test_unreadable_or_foreign_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError):
        load_data(path, tiny_mlp())


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "none.npz", tiny_mlp())
