"""A PyTorch view of an ONNX model (via onnx2torch), used only to compute gradients and activations.

Every prunable ONNX initializer maps to one ``nn.Parameter`` in ONNX layout: Conv weights are the
converted ``nn.Conv`` parameters (same layout), Gemm/MatMul weights are lifted to extra inputs of the
converted graph and fed from parameters held here, so the map is exact whatever onnx2torch does
with them (it would otherwise transpose Gemm weights or keep MatMul weights as buffers).

Only those parameters are functional inputs of ``torch.func`` (see ``view.fisher``); every other
initializer is a frozen parameter or buffer of the converted graph, and converters read constant
(shape, index, bound) inputs when converting, never at run time. The view computes in float32:
float16, bfloat16 and double models are converted to float32 and their inputs upcast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from onnxprune.compute import from_numpy
from onnxprune.view import onnx2torch_compat as compat
from onnxprune.data import Dataset
from onnxprune.graph.protos import names_in_use, unique_name
from onnxprune.errors import ConversionError
from onnxprune.graph.prunable import find_prunable
from onnxprune.runtime.feeds import run_batched
from onnxprune.runtime.sessions import make_session

log = logging.getLogger(__name__)


class TorchView(nn.Module):
    """Callable as ``view(*inputs) -> tuple of outputs``; ``params`` maps ONNX names to parameters."""

    def __init__(self, graph_module: nn.Module, input_names: list[str], output_names: list[str],
                 lifted: dict[str, torch.Tensor], conv_params: dict[str, nn.Parameter],
                 module_of: dict[str, str] | None = None):
        super().__init__()
        self.graph_module = graph_module
        self.module_of = dict(module_of or {})  # ONNX node name → the path of its module in graph_module
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.lifted = nn.ParameterList([nn.Parameter(t) for t in lifted.values()])
        self._lifted_names = list(lifted)
        self.params: dict[str, nn.Parameter] = dict(zip(self._lifted_names, self.lifted))
        self.params.update(conv_params)
        path_of = {id(p): name for name, p in self.named_parameters()}
        self.param_paths: dict[str, str] = {onnx_name: path_of[id(p)] for onnx_name, p in self.params.items()}

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = tuple(x.float() if x.is_floating_point() else x for x in inputs)  # the view is float32
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


_OTHER_FLOATS = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def _float32_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """``tensor`` in float32 when it holds another float type, else itself."""
    if tensor.data_type not in _OTHER_FLOATS:
        return tensor
    return onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def _to_float32(model: onnx.ModelProto) -> None:
    """Make ``model`` compute in float32, in place: float16, bfloat16 and double initializers, constant
    values, Cast targets and declared types become float32 (gradients in low precision are noise)."""
    graph = model.graph
    for tensor in graph.initializer:
        tensor.CopyFrom(_float32_tensor(tensor))
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type in _OTHER_FLOATS:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                attribute.t.CopyFrom(_float32_tensor(attribute.t))
            elif node.op_type == "Cast" and attribute.name == "to" and attribute.i in _OTHER_FLOATS:
                attribute.i = onnx.TensorProto.FLOAT


def _separate_outputs(model: onnx.ModelProto) -> None:
    """Give every graph output taken from a multi-output node its own Identity node, in place.

    onnx2torch returns a node's whole output tuple for any graph output it produces (and one entry
    for several such outputs), so without this the view's outputs would not match the graph's."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    taken = names_in_use(graph)
    for output in graph.output:
        node = producer.get(output.name)
        if node is None or len(node.output) < 2:
            continue
        inner = unique_name(taken, output.name + "__node_output")
        node.output[list(node.output).index(output.name)] = inner
        for reader in graph.node:
            reader.input[:] = [inner if name == output.name else name for name in reader.input]
        graph.node.append(onnx.helper.make_node("Identity", [inner], [output.name], name=inner + "_identity"))


def build_torch_view(model: onnx.ModelProto, weights: list[str] | None = None) -> TorchView:
    """Convert a canonical model to a TorchView in eval mode whose ``params`` hold ``weights``
    (default: every prunable weight); everything else is frozen."""
    prunable = {w.name: w for w in find_prunable(model)}
    names = list(prunable) if weights is None else list(weights)
    for name in names:
        if name not in prunable:
            raise ConversionError(f"{name!r} is not a prunable weight of this model")
    lifted_names = [n for n in names if prunable[n].op_type != "Conv"]
    conv_names = [n for n in names if prunable[n].op_type == "Conv"]
    lifted_model = _lift_weights(model, lifted_names)
    _to_float32(lifted_model)
    _separate_outputs(lifted_model)
    try:
        graph_module, module_of = compat.convert(lifted_model)
    except ConversionError:
        raise
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ... on unusual graphs
        refused = compat.refused_nodes(lifted_model)  # name the nodes when converters refuse them
        if refused:
            first = refused[0]
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            raise ConversionError(f"op {first.op_type}-{first.version} in node {first.node!r}: no torch view{more} "
                                  f"({first.reason})") from None
        raise ConversionError(f"onnx2torch could not convert the model: {type(exc).__name__}: {exc}") from None
    graph_module.eval()
    for parameter in graph_module.parameters():
        parameter.requires_grad_(False)
    for buffer in graph_module.buffers():
        buffer.requires_grad_(False)

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
    lifted = {n: torch.from_numpy(onnx.numpy_helper.to_array(_float32_tensor(tensors[n])).copy())
              for n in lifted_names}
    inputs = [i.name for i in model.graph.input if i.name not in tensors]
    outputs = [o.name for o in model.graph.output]
    view = TorchView(graph_module, inputs, outputs, lifted, conv_params, module_of)
    view.eval()
    return view


@dataclass(frozen=True)
class Tolerance:
    """Parity holds for an output y when max|Δ| ≤ atol + rtol·max|y| and ‖Δ‖/‖y‖ ≤ rel_l2 (‖y‖ floored
    at atol·√size, so that an all-zero output asks for |Δ| ≤ atol): float noise grows with the output."""

    atol: float = 1e-4
    rtol: float = 1e-3
    rel_l2: float = 1e-3


FLOAT32_TOLERANCE = Tolerance()
# ONNX Runtime computes float16 models in float16 (3 decimal digits), the view in float32
FLOAT16_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-2, rel_l2=1e-2)


@dataclass(frozen=True)
class OutputParity:
    """How one output of the torch view differs from ONNX Runtime's."""

    max_abs_diff: float
    max_abs_output: float
    rel_l2: float

    def excess(self, tolerance: Tolerance) -> float:
        """The larger of the two figures relative to its limit: above 1 fails."""
        return max(self.max_abs_diff / (tolerance.atol + tolerance.rtol * self.max_abs_output),
                   self.rel_l2 / tolerance.rel_l2)


@dataclass
class ParityResult:
    """Torch view against ONNX Runtime over ``samples`` samples: every output's figures, and the output
    using most of its tolerance."""

    per_output: dict[str, OutputParity]
    worst_output: str
    samples: int

    @property
    def max_abs_diff(self) -> float:
        """Largest |torch − ORT| over every output."""
        return max(p.max_abs_diff for p in self.per_output.values())


def run_view(view: TorchView, data: Dataset, batch_size: int = 256) -> list[np.ndarray]:
    """Run the torch view on every sample (no gradients), outputs concatenated on axis 0."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.take(batch_size, start)
            outs = view(*[from_numpy(batch.inputs[n]) for n in view.input_names])
            chunks.append([o.detach().cpu().numpy() for o in outs])
    return [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(chunks[0]))]


def output_parity(reference: np.ndarray, got: np.ndarray, atol: float) -> OutputParity:
    """The figures of one output, computed in float64."""
    ref, delta = reference.astype(np.float64), got.astype(np.float64) - reference.astype(np.float64)
    if not ref.size:
        return OutputParity(0.0, 0.0, 0.0)
    floor = atol * np.sqrt(ref.size)
    return OutputParity(float(np.max(np.abs(delta))), float(np.max(np.abs(ref))),
                        float(np.linalg.norm(delta) / max(float(np.linalg.norm(ref)), floor)))


def default_tolerance(model: onnx.ModelProto) -> Tolerance:
    """FLOAT16_TOLERANCE when the model's outputs are float16 or bfloat16, else FLOAT32_TOLERANCE."""
    low = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return FLOAT16_TOLERANCE if any(o.type.tensor_type.elem_type in low for o in model.graph.output) \
        else FLOAT32_TOLERANCE


def check_parity(view: TorchView, model: onnx.ModelProto, data: Dataset, *, samples: int = 64,
                 tolerance: Tolerance | None = None) -> ParityResult:
    """Compare the torch view with ONNX Runtime (CPU) on the first ``samples`` samples; a ConversionError
    with the figures of the worst output when it is beyond ``tolerance`` (default: by output type)."""
    tolerance = tolerance or default_tolerance(model)
    subset = data.take(min(samples, len(data)))
    reference = run_batched(make_session(model, device="cpu"), subset)
    ours = run_view(view, subset)
    per_output = {}
    for name, ref, got in zip(view.output_names, reference, ours):
        if ref.shape != got.shape:
            raise ConversionError(f"torch view output {name!r} has shape {got.shape}, ONNX Runtime gives {ref.shape}")
        per_output[name] = output_parity(ref, got, tolerance.atol)
    worst = max(per_output, key=lambda n: per_output[n].excess(tolerance))
    result = ParityResult(per_output, worst, len(subset))
    figures = per_output[worst]
    if figures.excess(tolerance) > 1:
        raise ConversionError(
            f"torch view disagrees with ONNX Runtime on output {worst!r} over {result.samples} samples: max abs diff "
            f"{figures.max_abs_diff:.3g} (limit {tolerance.atol:g} + {tolerance.rtol:g} x max|y| "
            f"{figures.max_abs_output:.3g} = {tolerance.atol + tolerance.rtol * figures.max_abs_output:.3g}), "
            f"relative L2 {figures.rel_l2:.3g} (limit {tolerance.rel_l2:g}); its gradients would not be the model's")
    log.info("torch view parity over %d samples: worst output %r, max abs diff %.3g, max|y| %.3g, relative L2 %.3g",
             result.samples, worst, figures.max_abs_diff, figures.max_abs_output, figures.rel_l2)
    return result
