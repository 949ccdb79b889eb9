"""Models with dynamic spatial dims: MACs at known shapes or "unknown" (never a count with dims as 1), and
sample runs at the shapes of --calib / --input-shape, refused with the option to give when none is known."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs import IR_VERSION
from onnxprune.data import parse_input_shapes
from onnxprune.errors import ConfigError, DataError
from onnxprune.graph.stats import model_stats
from onnxprune.inspection import inspect_model
from onnxprune.pipeline import prune


def _detector(path) -> str:
    """x[N,3,H,W] → Conv 3x3 (no padding: needs H, W >= 3) → Relu → Conv 1x1 → Sigmoid → map[N,1,H-2,W-2]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "c1.w"),
             numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32), "c2.w")]
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["a"], name="c1"),
             helper.make_node("Relu", ["a"], ["b"], name="r"),
             helper.make_node("Conv", ["b", "c2.w"], ["c"], name="c2"),
             helper.make_node("Sigmoid", ["c"], ["map"], name="s")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("map", TensorProto.FLOAT, ["N", 1, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)
    onnx.save(model, str(path))
    return str(path)


def test_macs_are_unknown_without_shapes_and_exact_with_them(tmp_path):
    path = _detector(tmp_path / "det.onnx")
    assert inspect_model(path).stats.macs is None
    stats = inspect_model(path, {"x": (1, 3, 34, 18)}).stats
    assert stats.macs == 32 * 16 * (8 * 3 * 3 * 3) + 32 * 16 * 8
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 34, 18), np.float32))
    assert inspect_model(path, data=tmp_path / "d.npz").stats.macs == stats.macs
    with pytest.raises(DataError, match="does not fit the model's"):
        inspect_model(path, {"x": (1, 4, 34, 18)})
    with pytest.raises(DataError, match="not a model input"):
        inspect_model(path, {"image": (1, 3, 34, 18)})


def test_prune_needs_real_sizes_and_says_which_option(tmp_path):
    path = _detector(tmp_path / "det.onnx")
    out = tmp_path / "out.onnx"
    with pytest.raises(ConfigError, match=r"x \[N, 3, \?, \?\] need real sizes: pass --calib DATA.npz or "
                                          r"--input-shape x=D0,D1"):
        prune(path, out, "magnitude", sparsity=0.5)
    assert not out.exists()
    outcome = prune(path, out, "magnitude", sparsity=0.5, input_shapes={"x": (1, 3, 20, 20)})
    assert outcome.before.macs == outcome.after.macs == 18 * 18 * (8 * 27 + 8)
    assert outcome.after.sparse_macs < outcome.before.sparse_macs


def test_input_shape_parsing():
    assert parse_input_shapes(["x=1,3,736,736", "mask=1x64"]) == {"x": (1, 3, 736, 736), "mask": (1, 64)}
    for bad in ("x", "x=", "x=1,a", "=1,2", "x=0,3"):
        with pytest.raises(DataError, match="expected NAME=D0,D1"):
            parse_input_shapes([bad])


def test_static_models_keep_their_counts():
    from pathlib import Path

    cnn = onnx.load(str(Path(__file__).resolve().parents[1] / "models" / "cnn.onnx"))
    assert model_stats(cnn).macs == 37_156_608
