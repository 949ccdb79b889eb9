"""What every pruning method shares: the option checks and config bases, the result, the one session
contract every workflow uses (``PruneSession``) and the registry entry (``MethodSpec``)."""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
import numbers
import sys
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import onnx

from onnxprune.data import Dataset
from onnxprune.errors import ConfigError
from onnxprune.methods.resume import ResumeStore, not_resumable
from onnxprune.options import ALLOCATIONS, OLD_VALUES

if typing.TYPE_CHECKING:
    from onnxprune.channels.model import ChannelGroup
    from onnxprune.cluster import Cluster

log = logging.getLogger(__name__)


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


OptionCheck = Interval | OneOf | Parses


@dataclass
class MethodConfig:
    """Options every method takes (meanings in ``onnxprune.options.GLOSSARY``).

    Each config class declares its own fields' ``checks`` (the classes above it add theirs), checked when
    the config is made, so every bad option is a ConfigError naming the option; integer fields take
    integers only. ``renamed`` maps an option's old name to its new one (still accepted, with a warning).
    """

    sparsity: float = 0.5
    seed: int = 0

    checks: ClassVar[dict[str, OptionCheck]] = {"sparsity": Interval(0.0, 1.0, "left"), "seed": Interval(0, None)}
    renamed: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _kinds(hints[f.name]) == {int} and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{f.name} must be an integer, not {value}")
        for cls in reversed(type(self).__mro__):
            for name, check in vars(cls).get("checks", {}).items():
                value = getattr(self, name)
                problem = None if value is None and type(None) in _kinds(hints[name]) else check.problem(value)
                if problem:
                    raise ConfigError(f"{name} {problem.removeprefix(name + ' ')}")

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """Every old option name this config still accepts, with the name that replaced it."""
        found: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            found.update(vars(klass).get("renamed", {}))
        return found


def _kinds(hint: Any) -> set[type]:
    """The types a field's hint admits (``X | None`` gives {X, NoneType})."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return set(typing.get_args(hint))
    return {hint}


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """(N, M) of an 'N:M' pattern (keep N of every M consecutive inputs), None for ''; ConfigError otherwise."""
    if not pattern:
        return None
    parts = pattern.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"pattern must look like N:M (e.g. 2:4), not {pattern!r}")
    n, m = int(parts[0]), int(parts[1])
    if not 0 < n < m:
        raise ConfigError(f"pattern {pattern!r}: need 0 < N < M")
    return n, m


@dataclass
class UnstructuredConfig(MethodConfig):
    """What every unstructured method takes: ``allocation``, ``skip_first``/``skip_last`` and ``pattern``
    (with an N:M pattern the sparsity is 1 − N/M; tensors whose input size is not a multiple of M stay dense)."""

    allocation: str = "global"
    skip_first: bool = False
    skip_last: bool = False
    pattern: str = ""

    checks = {"allocation": OneOf(ALLOCATIONS), "pattern": Parses(parse_pattern)}

    def nm(self) -> tuple[int, int] | None:
        """The (N, M) of ``pattern``, or None when unstructured."""
        return parse_pattern(self.pattern)


@dataclass
class MethodResult:
    """The pruned model and method-specific figures for the report (timings, per-layer details); the model is
    None once ``Pruner.write_result`` has written it (the file stands for it)."""

    model: onnx.ModelProto | None
    details: dict[str, Any] = field(default_factory=dict)


class PruneSession(abc.ABC):
    """The one contract between a method and every workflow (prune, sweep, budget search, target): a method
    bound to one model, config and calibration set that prunes at any sparsity, keeping what does not depend
    on the sparsity between calls (``MethodSpec.reuse`` says what). Per-group widths (targets) are for channel
    methods; every other session refuses them with a ConfigError naming the method."""

    method: str = "this method"

    @abc.abstractmethod
    def prune(self, sparsity: float) -> MethodResult:
        """The pruned model at ``sparsity`` (a fraction in [0, 1))."""

    def expect(self, sparsities: Sequence[float]) -> None:
        """Hint: these sparsities will be asked for next (a path-following method can pass through them)."""

    def resume_from(self, store: ResumeStore) -> None:
        """Keep finished work in ``store`` as it is done and take up what it already holds (``--resume``)."""
        raise not_resumable(self.method)

    def spread_over(self, cluster: Cluster) -> bool:
        """Run independent solves as tasks of ``cluster`` (``--ray``); False when the method has none to spread."""
        return False

    def _no_widths(self) -> ConfigError:
        return ConfigError(f"a target sets channel widths: use a channel method (l1-channel, intrafusion, "
                           f"chita-channel), not {self.method!r}")

    def target_groups(self) -> list[ChannelGroup]:
        """The channel groups a target may narrow."""
        raise self._no_widths()

    @property
    def round_to(self) -> int:
        """Channel counts are kept multiples of this."""
        raise self._no_widths()

    def reference_model(self) -> onnx.ModelProto:
        """The dense model widths are measured against (BatchNorms folded as in every pruned model)."""
        raise self._no_widths()

    def shape_model(self, widths: dict[int, int]) -> onnx.ModelProto:
        """A model of the shapes ``widths`` gives (no selection or refit): cheap to time."""
        raise self._no_widths()

    def prune_widths(self, widths: dict[int, int]) -> MethodResult:
        """The pruned model keeping ``widths[g]`` channels of each group g."""
        raise self._no_widths()

    def width_errors(self, index: int, widths: Sequence[int]) -> list[float]:
        """The method's error of group ``index`` kept at each of ``widths`` (lower is better)."""
        raise self._no_widths()


PruneFn = Callable[[onnx.ModelProto, Any, "Dataset | None"], MethodResult]


class Rerun(PruneSession):
    """The session of a method with nothing worth keeping between sparsities: prunes afresh each call."""

    def __init__(self, run: PruneFn, model: onnx.ModelProto, config: MethodConfig, calib: Dataset | None) -> None:
        self.run, self.model, self.config, self.calib = run, model, config, calib

    def prune(self, sparsity: float) -> MethodResult:
        return self.run(self.model, dataclasses.replace(self.config, sparsity=sparsity), self.calib)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method. Its module (and so torch or POT, when the method needs them) is imported only
    when the method is used; ``config`` names its config class and ``session`` its session factory,
    ``(model, config, calib) -> PruneSession``."""

    name: str
    module: str
    config: str
    session: str
    structured: bool
    needs_calib: bool
    summary: str
    reuse: str  # what its session keeps between sparsities (sweep, budget search, Pruner.write)
    resumable: bool = False  # its session keeps finished layers in a resume folder (--resume)
    shared_path: bool = False  # its sparsities follow one path (CHITA++'s stages): a point depends on the others

    @property
    def config_cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def open(self, model: onnx.ModelProto, config: MethodConfig, calib: Dataset | None) -> PruneSession:
        """A session of this method on ``model`` with ``config`` (its sparsity is replaced per call); a
        config's ``samples`` (when > 0) keeps the first that many calibration samples."""
        factory = getattr(importlib.import_module(self.module), self.session)
        if "torch" in sys.modules:  # the method loaded torch: give it onnxprune's thread count
            from onnxprune.threads import apply_to_torch

            apply_to_torch()
        samples = getattr(config, "samples", 0)
        if samples and calib is not None:
            calib = calib.take(min(samples, len(calib)))
        session = factory(model, config, calib)
        if not isinstance(session, PruneSession):
            raise TypeError(f"{self.module}.{self.session} returned {type(session).__name__}, not a PruneSession")
        session.method = self.name
        return session


def make_config(spec: MethodSpec, **options: Any) -> Any:
    """Build ``spec``'s config from keyword options, converting CLI strings to the fields' declared types;
    an old option name (``renamed``) still works, with a warning naming the new one."""
    cls = spec.config_cls
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    aliases = cls.aliases()
    values = {}
    for key, raw in options.items():
        if raw is None:
            continue
        key = key.replace("-", "_")
        if key in aliases and aliases[key] in fields:
            new = aliases[key]
            if new in options and options[new] is not None:
                raise ConfigError(f"option {key!r} is the old name of {new!r}: give only {new!r}")
            _deprecated(f"option {key!r} of {spec.name} is now called {new!r}; the old name goes in the next release")
            key = new
        if key not in fields:
            raise ConfigError(f"method {spec.name!r} has no option {key!r}; its options are: {', '.join(sorted(fields))}")
        old = OLD_VALUES.get(key, {}).get(str(raw).strip().lower())
        if old is not None:
            _deprecated(f"{key}={raw!r} is now written {key}={old!r}; the old value goes in the next release")
            raw = old
        values[key] = coerce(key, raw, hints[key])
    return cls(**values)


_warned: set[str] = set()


def _deprecated(message: str) -> None:
    """A FutureWarning, once per message and process (shown by default; the CLI prints it as one line)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, FutureWarning, stacklevel=3)


def coerce(key: str, raw: Any, hint: Any) -> Any:
    """Convert a CLI string to the field type ``hint`` (int, float, bool, str, tuple[str, ...], X | None)."""
    if not isinstance(raw, str):
        return raw
    kinds = _kinds(hint)
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
