"""A PyTorch view of an ONNX model (via onnx2torch), used only to compute gradients and activations.

Every prunable ONNX initializer maps to one ``nn.Parameter`` in ONNX layout: Conv weights are the
converted ``nn.Conv`` parameters (same layout), Gemm/MatMul weights are lifted to extra inputs of the
converted graph and fed from parameters held here, so the map is exact whatever onnx2torch does
with them (it would otherwise transpose Gemm weights or keep MatMul weights as buffers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from onnxprune.view import onnx2torch_compat as compat
from onnxprune.data import Dataset
from onnxprune.errors import ConversionError
from onnxprune.graph.prunable import find_prunable
from onnxprune.validate.runtime import make_session, run_batched

log = logging.getLogger(__name__)


class TorchView(nn.Module):
    """Callable as ``view(*inputs) -> tuple of outputs``; ``params`` maps ONNX names to parameters."""

    def __init__(self, graph_module: nn.Module, input_names: list[str], output_names: list[str],
                 lifted: dict[str, torch.Tensor], conv_params: dict[str, nn.Parameter]):
        super().__init__()
        self.graph_module = graph_module
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.lifted = nn.ParameterList([nn.Parameter(t) for t in lifted.values()])
        self._lifted_names = list(lifted)
        self.params: dict[str, nn.Parameter] = dict(zip(self._lifted_names, self.lifted))
        self.params.update(conv_params)
        path_of = {id(p): name for name, p in self.named_parameters()}
        self.param_paths: dict[str, str] = {onnx_name: path_of[id(p)] for onnx_name, p in self.params.items()}

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.graph_module(*inputs, *self.lifted)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _lift_weights(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` where the named initializers are graph inputs instead (appended in order)."""
    lifted = onnx.ModelProto()
    lifted.CopyFrom(model)
    by_name = {t.name: t for t in lifted.graph.initializer}
    for name in names:
        tensor = by_name[name]
        lifted.graph.initializer.remove(tensor)
        lifted.graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
    return lifted


def _separate_outputs(model: onnx.ModelProto) -> None:
    """Give every graph output taken from a multi-output node its own Identity node, in place.

    onnx2torch returns a node's whole output tuple for any graph output it produces (and one entry
    for several such outputs), so without this the view's outputs would not match the graph's."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | \
        {t.name for t in graph.initializer}
    for output in graph.output:
        node = producer.get(output.name)
        if node is None or len(node.output) < 2:
            continue
        inner = output.name + "__node_output"
        while inner in taken:
            inner += "_"
        taken.add(inner)
        node.output[list(node.output).index(output.name)] = inner
        for reader in graph.node:
            reader.input[:] = [inner if name == output.name else name for name in reader.input]
        graph.node.append(onnx.helper.make_node("Identity", [inner], [output.name], name=inner + "_identity"))


def build_torch_view(model: onnx.ModelProto, weights: list[str] | None = None) -> TorchView:
    """Convert a canonical model to a TorchView in eval mode whose ``params`` hold ``weights``
    (default: every prunable weight); everything else is frozen."""
    compat.register()
    prunable = {w.name: w for w in find_prunable(model)}
    names = list(prunable) if weights is None else list(weights)
    for name in names:
        if name not in prunable:
            raise ConversionError(f"{name!r} is not a prunable weight of this model")
    lifted_names = [n for n in names if prunable[n].op_type != "Conv"]
    conv_names = [n for n in names if prunable[n].op_type == "Conv"]
    lifted_model = _lift_weights(model, lifted_names)
    _separate_outputs(lifted_model)
    from onnx2torch import convert
    from onnx2torch.onnx_graph import OnnxGraph

    try:
        graph_module = convert(lifted_model)
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ... on unusual graphs
        unsupported = compat.unsupported_nodes(model)  # name the nodes when converters refuse them
        if unsupported:
            node, op, version = unsupported[0]
            more = f" (and {len(unsupported) - 1} more)" if len(unsupported) > 1 else ""
            raise ConversionError(f"op {op}-{version} in node {node!r}: no torch view{more}") from None
        raise ConversionError(f"onnx2torch could not convert the model: {type(exc).__name__}: {exc}") from None
    graph_module.eval()
    for parameter in graph_module.parameters():
        parameter.requires_grad_(False)
    for buffer in graph_module.buffers():
        buffer.requires_grad_(False)

    module_of = {node.proto.name: unique for unique, node in OnnxGraph(lifted_model.graph).nodes.items()}
    conv_params: dict[str, nn.Parameter] = {}
    for name in conv_names:
        shared = None
        for node_name in prunable[name].nodes:
            conv = graph_module.get_submodule(module_of[node_name])
            if shared is None:
                shared = conv.weight
            else:
                conv.weight = shared  # one initializer read by several Conv nodes stays one parameter
        shared.requires_grad_(True)
        conv_params[name] = shared
    tensors = {t.name: t for t in model.graph.initializer}
    lifted = {n: torch.from_numpy(onnx.numpy_helper.to_array(tensors[n]).copy()) for n in lifted_names}
    inputs = [i.name for i in model.graph.input if i.name not in tensors]
    outputs = [o.name for o in model.graph.output]
    view = TorchView(graph_module, inputs, outputs, lifted, conv_params)
    view.eval()
    return view


@dataclass
class ParityResult:
    """Largest |torch − ORT| over the compared samples, overall and per output."""

    max_abs_diff: float
    per_output: dict[str, float]
    samples: int


def run_view(view: TorchView, data: Dataset, batch_size: int = 256) -> list[np.ndarray]:
    """Run the torch view on every sample (no gradients), outputs concatenated on axis 0."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.take(batch_size, start)
            outs = view(*[torch.from_numpy(np.ascontiguousarray(batch.inputs[n])) for n in view.input_names])
            chunks.append([o.detach().cpu().numpy() for o in outs])
    return [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(chunks[0]))]


def check_parity(view: TorchView, model: onnx.ModelProto, data: Dataset, *, samples: int = 64,
                 tolerance: float = 1e-4) -> ParityResult:
    """Compare the torch view with ONNX Runtime (CPU) on the first ``samples`` samples.

    The tolerance is relative to the largest |output| (floor 1); above it a ConversionError names
    the worst output.
    """
    subset = data.take(min(samples, len(data)))
    reference = run_batched(make_session(model, device="cpu"), subset)
    ours = run_view(view, subset)
    per_output = {}
    for name, ref, got in zip(view.output_names, reference, ours):
        if ref.shape != got.shape:
            raise ConversionError(f"torch view output {name!r} has shape {got.shape}, ONNX Runtime gives {ref.shape}")
        per_output[name] = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))) if ref.size else 0.0
    worst = max(per_output, key=per_output.get)
    result = ParityResult(per_output[worst], per_output, len(subset))
    scale = max(1.0, max(float(np.max(np.abs(r))) if r.size else 0.0 for r in reference))
    if result.max_abs_diff > tolerance * scale:
        raise ConversionError(f"torch view disagrees with ONNX Runtime on output {worst!r}: max abs diff "
                              f"{result.max_abs_diff:.3g} > {tolerance * scale:.3g}")
    log.info("torch view parity: max abs diff %.3g over %d samples", result.max_abs_diff, result.samples)
    return result
