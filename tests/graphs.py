"""Small ONNX graphs built directly with onnx.helper, for tests that need exact control of the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8  # what onnxruntime of every supported version loads


def tiny_mlp(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """x[N,8] → Gemm(8→16) → Relu → MatMul(16→4) → Add → logits[N,4], with metadata and a doc string."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "fc1.weight"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "fc1.bias"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "fc2.weight"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc2.bias")]
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "fc2.weight"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", "fc2.bias"], ["logits"], name="fc2_bias")]
    graph = helper.make_graph(nodes, "tiny_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
                              producer_name="onnxprune-tests")
    helper.set_model_props(model, {"author": "tests", "licence": "none"})
    return model


def tiny_conv(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] → Conv(3→6, 3x3, pad 1) → Relu → Conv(6→4, 1x1) → y[N,4,8,8]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "c1.w"),
             numpy_helper.from_array(rng.standard_normal((4, 6, 1, 1)).astype(np.float32), "c2.w")]
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"], name="r1"),
             helper.make_node("Conv", ["b", "c2.w"], ["y"], name="c2")]
    graph = helper.make_graph(nodes, "tiny_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Write a model and return its path."""
    onnx.save(model, str(path))
    return path


def mlp_data(count: int = 32, seed: int = 1, labels: bool = True) -> dict[str, np.ndarray]:
    """Random inputs (and labels) for ``tiny_mlp``."""
    rng = np.random.default_rng(seed)
    data = {"x": rng.standard_normal((count, 8)).astype(np.float32)}
    if labels:
        data["labels"] = rng.integers(0, 4, count).astype(np.int64)
    return data


def save_external(model: onnx.ModelProto, path: Path, data_name: str = "weights.bin",
                  point_to: str | None = None) -> Path:
    """Save ``model`` with every initializer in one external file ``data_name`` beside it; with
    ``point_to``, rewrite the recorded location afterwards (for escaping or missing data files)."""
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=0)
    if point_to is not None:
        stored = onnx.load(str(path), load_external_data=False)
        for tensor in stored.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = point_to
        path.write_bytes(stored.SerializeToString())
    return path
