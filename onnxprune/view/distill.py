"""Recovery by distillation: a few Adam steps that bring a pruned model's outputs back towards the dense
model's on the calibration inputs (no labels), through the torch view of the pruned graph.

The targets are the dense model's ONNX Runtime outputs. The loss is, per output, the KL divergence of the
softmax for class scores and the mean squared error relative to the dense output's mean square otherwise
(``loss='auto'``), over the real tokens only for a model with an ``attention_mask`` input. Trained: every
prunable weight and the bias of each Conv that holds one; an unstructured result keeps its zeros (masks fixed).
Every ``check`` the weights are written into the ONNX graph and the held-out samples are run in ONNX Runtime:
the best weights so measured are returned, the pruned model's own among them, so recovery never returns a model
worse than the one it was given.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from onnxprune.compute import from_numpy
from onnxprune.data import Dataset
from onnxprune.errors import ConfigError
from onnxprune.graph.edit import replace_initializers
from onnxprune.graph.prunable import find_prunable, read_weights
from onnxprune.runtime.feeds import run_batched
from onnxprune.runtime.sessions import make_session
from onnxprune.view.torchview import TorchView, build_torch_view, check_parity

log = logging.getLogger(__name__)

LOSSES = ("auto", "mse", "kl")


@dataclass(frozen=True)
class Recovery:
    """How long and how to distil: ``seconds`` and/or ``steps`` bound the work (one of them is needed),
    ``lr`` is Adam's step, ``batch`` the samples per step, ``check`` the steps between two ORT measurements on
    the held-out samples, ``patience`` the measurements without improvement after which it stops."""

    seconds: float | None = None
    steps: int | None = None
    loss: str = "auto"
    lr: float = 1e-4
    batch: int = 16
    check: int = 25
    patience: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seconds is None and self.steps is None:
            raise ConfigError("recovery needs a budget: --recover SECONDS or --recover-steps N")
        if self.seconds is not None and self.seconds <= 0:
            raise ConfigError(f"--recover is a time budget in seconds, > 0; got {self.seconds}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--recover-steps must be >= 1; got {self.steps}")
        if self.loss not in LOSSES:
            raise ConfigError(f"--recover-loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if not self.lr > 0 or self.batch < 1 or self.check < 1 or self.patience < 1:
            raise ConfigError("recovery's lr must be > 0, and its batch, check and patience >= 1")


@dataclass
class RecoveryReport:
    """What recovery did: its steps and seconds, the held-out error (mean relative L2 of the outputs to the
    dense model's) before and after, each measurement, and why it ran as it did."""

    steps: int = 0
    seconds: float = 0.0
    error_before: float | None = None
    error_after: float | None = None
    best_step: int = 0
    measurements: list[tuple[int, float]] = field(default_factory=list)
    trained: int = 0
    note: str = ""


def holdout_error(model: onnx.ModelProto, data: Dataset, dense: list[np.ndarray]) -> float:
    """Mean over outputs of ‖y − y_dense‖ / ‖y_dense‖ on ``data``, in ONNX Runtime."""
    ours = run_batched(make_session(model, device="cpu"), data)
    return float(np.mean([np.linalg.norm(a.astype(np.float64) - b) / max(float(np.linalg.norm(b)), 1e-30)
                          for a, b in zip(ours, dense)]))


def _losses(kinds: list[str], outputs: tuple[torch.Tensor, ...], targets: list[torch.Tensor],
            scales: list[float], mask: torch.Tensor | None) -> torch.Tensor:
    """The summed loss of every output; ``mask`` [N, T] (a token model's attention mask) weighs the positions
    of [N, T, ...] outputs, so that padding does not count."""
    total = torch.zeros((), dtype=torch.float32)
    for kind, out, target, scale in zip(kinds, outputs, targets, scales):
        if kind == "kl":
            total = total + F.kl_div(F.log_softmax(out, -1), F.log_softmax(target, -1), log_target=True,
                                     reduction="batchmean")
        elif mask is not None and out.ndim >= 3 and out.shape[:2] == mask.shape:
            weights = mask.reshape(*mask.shape, *([1] * (out.ndim - 2))).to(out.dtype)
            squares = ((out - target) ** 2 * weights).sum() / (weights.sum() * out[0, 0].numel()).clamp_min(1.0)
            total = total + squares / scale
        else:
            total = total + F.mse_loss(out, target) / scale
    return total


def _trainable(view: TorchView, model: onnx.ModelProto) -> dict[str, torch.nn.Parameter]:
    """ONNX initializer name → its parameter in the view: prunable weights, and biases of Conv nodes whose
    module holds them (an initializer read only by that Conv)."""
    found = dict(view.params)
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    convs = {name for weight in find_prunable(model) if weight.op_type == "Conv" for name in weight.nodes}
    for node in model.graph.node:
        if node.name in convs and len(node.input) > 2 and readers.get(node.input[2]) == 1 \
                and node.name in view.module_of:
            conv = view.graph_module.get_submodule(view.module_of[node.name])
            if getattr(conv, "bias", None) is not None:
                conv.bias.requires_grad_(True)
                found[node.input[2]] = conv.bias
    return found


def distill(pruned: onnx.ModelProto, fit: Dataset, fit_dense: list[np.ndarray], holdout: Dataset,
            holdout_dense: list[np.ndarray], recovery: Recovery) -> tuple[onnx.ModelProto, RecoveryReport]:
    """The pruned model after distillation towards the dense outputs, never worse on ``holdout``, and what
    happened; the model unchanged (with the reason) when its torch view cannot be trusted."""
    from onnxprune.errors import ConversionError
    from onnxprune.validate.evaluation import CLASS_SCORES, output_kind

    report = RecoveryReport(error_before=holdout_error(pruned, holdout, holdout_dense))
    report.error_after = report.error_before
    try:
        view = build_torch_view(pruned)
        check_parity(view, pruned, fit)
    except ConversionError as exc:
        report.note = f"no recovery: the torch view of the pruned model is unusable ({exc})"
        log.warning("%s", report.note)
        return pruned, report
    params = _trainable(view, pruned)
    names = list(params)
    original = read_weights(pruned, [n for n in names if n in view.params])
    dtypes = {t.name: onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in pruned.graph.initializer}
    masks = {n: torch.from_numpy(original[n] != 0) for n in original if np.count_nonzero(original[n]) < original[n].size}
    report.trained = int(sum(p.numel() for p in params.values()))
    kinds = [("kl" if recovery.loss == "kl" or (recovery.loss == "auto" and output_kind(d) == CLASS_SCORES) else "mse")
             for d in fit_dense]
    scales = [max(float(np.mean(np.square(d.astype(np.float64)))), 1e-12) for d in fit_dense]
    targets = [torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32)) for d in fit_dense]
    generator = torch.Generator().manual_seed(recovery.seed)
    torch.manual_seed(recovery.seed)
    optimizer = torch.optim.Adam(list(params.values()), lr=recovery.lr)

    def current() -> onnx.ModelProto:
        return replace_initializers(pruned, {n: p.detach().cpu().numpy().astype(dtypes[n]) for n, p in params.items()})

    best, stale, start = (pruned, report.error_before), 0, time.perf_counter()
    limit = recovery.steps or 10**9
    view.train(False)  # dropout and batch statistics stay as exported: the model is evaluated as deployed
    tokens = view.input_names.index("attention_mask") if "attention_mask" in view.input_names else None
    with tqdm(total=recovery.steps, desc="recovery", unit="step", leave=False, disable=None) as bar:
        while report.steps < limit and (recovery.seconds is None or time.perf_counter() - start < recovery.seconds):
            index = torch.randint(len(fit), (min(recovery.batch, len(fit)),), generator=generator).numpy()
            inputs = [from_numpy(np.asarray(fit.inputs[n][index])) for n in view.input_names]
            loss = _losses(kinds, view(*inputs), [t[index] for t in targets], scales,
                           None if tokens is None else inputs[tokens])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
            report.steps += 1
            bar.update()
            if report.steps % recovery.check == 0 or report.steps == limit:
                candidate = current()
                error = holdout_error(candidate, holdout, holdout_dense)
                report.measurements.append((report.steps, error))
                log.info("recovery step %d: loss %.4g, held-out error %.4g (best %.4g)", report.steps, float(loss),
                         error, best[1])
                if error < best[1]:
                    best, stale, report.best_step = (candidate, error), 0, report.steps
                else:
                    stale += 1
                    if stale >= recovery.patience:
                        report.note = f"stopped: no held-out improvement in {stale} measurements"
                        break
    report.seconds = time.perf_counter() - start
    report.error_after = best[1]
    if not report.note:
        report.note = "budget spent"
    return best[0], report
