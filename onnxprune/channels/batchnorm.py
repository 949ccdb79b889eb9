"""BatchNorm folding: an inference BatchNormalization right after a Conv or Gemm is merged into
that producer's weight and bias, so channel pruning sees one layer and the pruned model runs one
node less."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.graph.protos import attr, names_in_use, reader_counts, set_attr, unique_name

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _batchnorm_factors(bn: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) with BN(x) = scale * x + shift, per channel, in float64."""
    scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
    factor = scale / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
    return factor, bias - mean * factor


def _foldable(bn: onnx.NodeProto, producer: onnx.NodeProto | None, inits: dict[str, onnx.TensorProto],
              readers: dict[str, int]) -> bool:
    """True when ``bn`` is an inference BatchNorm right after a Conv/Gemm whose weights only it uses."""
    if producer is None or producer.op_type not in ("Conv", "Gemm") or producer.domain not in ("", "ai.onnx"):
        return False
    if int(attr(bn, "training_mode", 0)) or any(bn.output[1:]) or not int(attr(bn, "spatial", 1)):
        return False
    if len(bn.input) < 5 or any(n not in inits for n in bn.input[1:5]) or readers[bn.input[0]] != 1:
        return False
    params = [p for p in producer.input[1:] if p]
    if any(p not in inits or readers[p] != 1 for p in params) or producer.input[0] in inits:
        return False
    if inits[producer.input[1]].data_type not in _FLOATS:
        return False
    if producer.op_type == "Gemm" and len(params) > 1:
        n_axis = 0 if int(attr(producer, "transB", 0)) else 1
        channels = int(inits[producer.input[1]].dims[n_axis])
        return int(np.prod(inits[params[1]].dims, dtype=np.int64)) in (1, channels)
    return True


def fold_batchnorms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every foldable BatchNorm merged into the Conv/Gemm before it.

    The producer takes over the BatchNorm's output name, so graph outputs keep their names.
    Returns the new model and how many BatchNorms were folded.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    readers = reader_counts(graph)
    producer_of = {o: n for n in graph.node for o in n.output}
    taken = names_in_use(graph)
    folded: list[onnx.NodeProto] = []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        producer = producer_of.get(bn.input[0])
        if bn.input[0] in {o.name for o in graph.output} or not _foldable(bn, producer, inits, readers):
            continue
        _fold_into(producer, bn, inits, graph, taken)
        producer.output[0] = bn.output[0]
        folded.append(bn)
    if not folded:
        return out, 0
    for bn in folded:
        graph.node.remove(bn)
    still_read = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in still_read]:
        graph.initializer.remove(tensor)
    gone = {bn.input[0] for bn in folded}
    for value in [v for v in graph.value_info if v.name in gone]:
        graph.value_info.remove(value)
    return out, len(folded)


def _fold_into(producer: onnx.NodeProto, bn: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
               graph: onnx.GraphProto, taken: set[str]) -> None:
    """Rewrite the producer's weight and bias so that it computes BN(producer(x))."""
    factor, shift = _batchnorm_factors(bn, inits)
    weight_tensor = inits[producer.input[1]]
    dtype = helper.tensor_dtype_to_np_dtype(weight_tensor.data_type)
    weight = numpy_helper.to_array(weight_tensor).astype(np.float64)
    if producer.op_type == "Conv":
        axis, bias_scale = 0, 1.0
    else:
        axis = 0 if int(attr(producer, "transB", 0)) else 1
        bias_scale = float(attr(producer, "beta", 1.0))
        set_attr(producer, "beta", 1.0)
    shape = [1] * weight.ndim
    shape[axis] = -1
    weight = weight * factor.reshape(shape)
    has_bias = len(producer.input) > 2 and producer.input[2]
    bias = np.zeros_like(factor)
    if has_bias:
        bias = bias + bias_scale * numpy_helper.to_array(inits[producer.input[2]]).astype(np.float64).reshape(-1)
    bias = bias * factor + shift
    weight_tensor.CopyFrom(numpy_helper.from_array(weight.astype(dtype), weight_tensor.name))
    if has_bias:
        inits[producer.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(dtype), producer.input[2]))
        return
    name = unique_name(taken, f"{producer.input[1]}_folded_bias")
    tensor = numpy_helper.from_array(bias.astype(dtype), name)
    graph.initializer.append(tensor)
    inits[name] = tensor
    while len(producer.input) < 2:
        producer.input.append("")
    if len(producer.input) == 2:
        producer.input.append(name)
    else:
        producer.input[2] = name
