"""What every pruning method shares: its config base, its result and its registry entry."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import onnx

from onnxprune.data import Dataset
from onnxprune.errors import ConfigError


@dataclass
class MethodConfig:
    """Options every method takes. ``sparsity``: fraction of weights (unstructured) or channels
    (structured) to remove, in [0, 1). ``seed`` makes any randomness repeatable."""

    sparsity: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")


@dataclass
class MethodResult:
    """The pruned model and method-specific figures for the report (timings, per-layer details)."""

    model: onnx.ModelProto
    details: dict[str, Any] = field(default_factory=dict)


PruneFn = Callable[[onnx.ModelProto, Any, "Dataset | None"], MethodResult]


class SparsitySession(Protocol):
    """A method bound to one model, config and calibration set that prunes at any sparsity, keeping what
    does not depend on the sparsity (gradients, channel groups, earlier stages) between calls."""

    def prune(self, sparsity: float) -> MethodResult: ...

    def expect(self, sparsities: Sequence[float]) -> None:
        """Hint: these sparsities will be asked for next (a path-following method can pass through them)."""


@dataclass
class Rerun:
    """The session of a method with nothing worth keeping between sparsities: prunes afresh each call."""

    run: PruneFn
    model: onnx.ModelProto
    config: MethodConfig
    calib: Dataset | None

    def prune(self, sparsity: float) -> MethodResult:
        return self.run(self.model, dataclasses.replace(self.config, sparsity=sparsity), self.calib)

    def expect(self, sparsities: Sequence[float]) -> None:
        pass


SessionFactory = Callable[[onnx.ModelProto, Any, "Dataset | None"], SparsitySession]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: how to run it, what it needs, and (``session``) how to run it at many
    sparsities re-using work; without one, every sparsity is pruned afresh."""

    name: str
    run: PruneFn
    config_cls: type
    structured: bool
    needs_calib: bool
    summary: str
    session: SessionFactory | None = None

    def open(self, model: onnx.ModelProto, config: MethodConfig, calib: Dataset | None) -> SparsitySession:
        """A session of this method on ``model`` with ``config`` (its sparsity is replaced per call)."""
        if self.session is None:
            return Rerun(self.run, model, config, calib)
        return self.session(model, config, calib)


def make_config(spec: MethodSpec, **options: Any) -> Any:
    """Build ``spec``'s config from keyword options, converting CLI strings to the field types."""
    fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    values = {}
    for key, raw in options.items():
        if raw is None:
            continue
        key = key.replace("-", "_")
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"method {spec.name!r} has no option {key!r}; its options are: {known}")
        values[key] = _coerce(key, raw, fields[key].default)
    return spec.config_cls(**values)


def _coerce(key: str, raw: Any, default: Any) -> Any:
    """Convert a CLI string to the type of the field's default."""
    if not isinstance(raw, str) or isinstance(default, str) or default is None:
        return raw
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(s.strip() for s in raw.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"option {key!r}: {raw!r} is not a valid {type(default).__name__}") from None
    return raw
