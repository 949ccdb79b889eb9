"""What every pruning method shares: its config base, its result and its registry entry."""

from __future__ import annotations

import dataclasses
import importlib
import numbers
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, Sequence

import onnx

from onnxprune.data import Dataset
from onnxprune.errors import ConfigError


@dataclass(frozen=True)
class Interval:
    """A number between ``low`` and ``high`` (None: unbounded); ``closed`` says which ends are allowed."""

    low: float | None
    high: float | None
    closed: str = "both"  # both | left | right | neither
    what: str = "a number"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"must be {self.what}, not {value!r}"
        low_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        high_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        if low_ok and high_ok:
            return None
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        if self.high is None:
            return f"must be {'>=' if left == '[' else '>'} {self.low:g}, not {value}"
        if self.low is None:
            return f"must be {'<=' if right == ']' else '<'} {self.high:g}, not {value}"
        return f"must be in {left}{self.low:g}, {self.high:g}{right}, not {value}"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values."""

    choices: tuple[Any, ...]

    def problem(self, value: Any) -> str | None:
        if value in self.choices:
            return None
        return f"must be one of {', '.join(map(str, self.choices))}, not {value!r}"


@dataclass(frozen=True)
class Parses:
    """A value ``parse`` accepts (it raises ConfigError, naming the option, for one it does not)."""

    parse: Callable[[Any], Any]

    def problem(self, value: Any) -> str | None:
        try:
            self.parse(value)
        except ConfigError as exc:
            return str(exc)
        return None


Constraint = Interval | OneOf | Parses


@dataclass
class MethodConfig:
    """Options every method takes. ``sparsity``: fraction of weights (unstructured) or channels
    (structured) to remove, in [0, 1). ``seed`` makes any randomness repeatable.

    Each config class declares its own fields' ``constraints`` (the classes above it add theirs), checked
    when the config is made, so every bad option is a ConfigError naming the option.
    """

    sparsity: float = 0.5
    seed: int = 0

    constraints: ClassVar[dict[str, Constraint]] = {"sparsity": Interval(0.0, 1.0, "left"),
                                                    "seed": Interval(0, None)}

    def __post_init__(self) -> None:
        for cls in reversed(type(self).__mro__):
            for name, constraint in vars(cls).get("constraints", {}).items():
                value = getattr(self, name)
                problem = None if value is None and _optional(type(self), name) else constraint.problem(value)
                if problem:
                    raise ConfigError(f"{name} {problem.removeprefix(name + ' ')}")


def _optional(cls: type, name: str) -> bool:
    """True when the field's type admits None."""
    return type(None) in typing.get_args(typing.get_type_hints(cls)[name])


@dataclass
class MethodResult:
    """The pruned model and method-specific figures for the report (timings, per-layer details)."""

    model: onnx.ModelProto
    details: dict[str, Any] = field(default_factory=dict)


class SparsitySession(Protocol):
    """A method bound to one model, config and calibration set that prunes at any sparsity, keeping what
    does not depend on the sparsity (gradients, channel groups, earlier stages) between calls."""

    def prune(self, sparsity: float) -> MethodResult: ...

    def expect(self, sparsities: Sequence[float]) -> None:
        """Hint: these sparsities will be asked for next (a path-following method can pass through them)."""


PruneFn = Callable[[onnx.ModelProto, Any, "Dataset | None"], MethodResult]


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


@dataclass(frozen=True)
class MethodSpec:
    """A registered method. Its module (and so torch or POT, when the method needs them) is imported only
    when the method is used; ``config`` names its config class and ``session`` its session factory,
    ``(model, config, calib) -> SparsitySession``."""

    name: str
    module: str
    config: str
    session: str
    structured: bool
    needs_calib: bool
    summary: str

    @property
    def config_cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def open(self, model: onnx.ModelProto, config: MethodConfig, calib: Dataset | None) -> SparsitySession:
        """A session of this method on ``model`` with ``config`` (its sparsity is replaced per call)."""
        factory = getattr(importlib.import_module(self.module), self.session)
        if "torch" in sys.modules:  # the method loaded torch: give it onnxprune's thread count
            from onnxprune.threads import apply_to_torch

            apply_to_torch()
        return factory(model, config, calib)


def make_config(spec: MethodSpec, **options: Any) -> Any:
    """Build ``spec``'s config from keyword options, converting CLI strings to the fields' declared types."""
    cls = spec.config_cls
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in options.items():
        if raw is None:
            continue
        key = key.replace("-", "_")
        if key not in fields:
            raise ConfigError(f"method {spec.name!r} has no option {key!r}; its options are: {', '.join(sorted(fields))}")
        values[key] = coerce(key, raw, hints[key])
    return cls(**values)


def coerce(key: str, raw: Any, hint: Any) -> Any:
    """Convert a CLI string to the field type ``hint`` (int, float, bool, str, tuple[str, ...], X | None)."""
    if not isinstance(raw, str):
        return raw
    kinds = [k for k in (typing.get_args(hint) if isinstance(hint, types.UnionType) or
                         typing.get_origin(hint) is typing.Union else (hint,))]
    if type(None) in kinds and raw.strip().lower() in ("", "none"):
        return None
    kind = next(k for k in kinds if k is not type(None))
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, float):
            return kind(raw)
        if typing.get_origin(kind) is tuple:
            return tuple(s.strip() for s in raw.split(",") if s.strip())
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"option {key!r}: {raw!r} is not a valid {name}") from None
    return raw


def prune_model(method: str, model: onnx.ModelProto, config: MethodConfig,
                calib: Dataset | None = None) -> MethodResult:
    """Prune ``model`` once with the registered ``method`` at ``config.sparsity`` (a one-call session)."""
    from onnxprune.methods import get_method

    return get_method(method).open(model, config, calib).prune(config.sparsity)
