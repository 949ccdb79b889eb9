"""Every tensor's shape, as far as it can be known before running the model.

ONNX Runtime's symbolic shape inference follows the Shape→Gather→Concat→Reshape arithmetic that
ONNX's own inference leaves unknown. Its public entry point writes a temporary model into the
working folder when inference is incomplete, so its steps are called directly here, the only
place in the package that uses them; ``tests/test_shapes.py`` fails if they change.
"""

from __future__ import annotations

import logging
import math

import onnx
from onnx import TensorProto, helper

from onnxprune.graph.protos import Dims, dims

log = logging.getLogger(__name__)

_warned = False
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def _shapes_of(graph: onnx.GraphProto) -> dict[str, Dims | None]:
    """The dims recorded for every input, intermediate and output value of ``graph``."""
    return {v.name: dims(v) for v in list(graph.input) + list(graph.value_info) + list(graph.output)}


def _without_weights(model: onnx.ModelProto, limit: int = 1024) -> onnx.ModelProto:
    """A copy whose float initializers of more than ``limit`` elements are typed graph inputs instead:
    shapes never depend on their values, and symbolic inference copies every initializer it holds (a
    22 M-weight encoder took 6 s instead of 0.1 s)."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    keep = []
    for tensor in light.graph.initializer:
        if tensor.data_type in _FLOATS and math.prod(tensor.dims) > limit:
            light.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            keep.append(tensor)
    del light.graph.initializer[:]
    light.graph.initializer.extend(keep)
    return light


def _symbolic_inference(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ONNX Runtime's symbolic shape inference, keeping whatever it inferred; None when it fails."""
    global _warned
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(_without_weights(model))
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_
    except Exception as exc:  # unsupported or custom ops, or another onnxruntime version
        if not _warned:
            _warned = True
            log.warning("ONNX Runtime's symbolic shape inference failed (%s: %s); using the shapes ONNX "
                        "inference gives, so sizes computed from Shape arithmetic may stay unknown and "
                        "the channels behind them unprunable", type(exc).__name__, exc)
        return None


def tensor_shapes(model: onnx.ModelProto) -> dict[str, Dims | None]:
    """Every tensor's shape, dynamic dimensions as names: ONNX Runtime's symbolic shape inference,
    then the model's own inferred shapes for anything it could not do."""
    shapes = _shapes_of(model.graph)
    inferred = _symbolic_inference(model)
    if inferred is not None:
        for name, found in _shapes_of(inferred.graph).items():
            if found is not None and (shapes.get(name) is None or len(shapes[name]) == len(found)):
                shapes[name] = found
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    return shapes
