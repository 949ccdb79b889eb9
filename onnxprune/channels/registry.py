"""Which rule gives an op its channel semantics: one rule per op type, domain and opset range.

The built-in rules (``channels/rules.py``) register themselves with :func:`rule`; users declare
ops the analysis does not know, such as custom-domain ops, with :func:`register_op`. An op with
no rule for the model's opset makes the channel groups it touches unprunable.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import onnx

from onnxprune.errors import ConfigError
from onnxprune.graph.protos import domain_key

if TYPE_CHECKING:
    from onnxprune.channels.walker import Walker

# A rule reads a node's inputs' layouts from the walker and sets its outputs' layouts, registers
# the weight slabs and shape constants that hold channels, or blocks the channels it cannot follow.
Rule = Callable[["Walker", onnx.NodeProto], None]


@dataclass(frozen=True)
class Entry:
    """A rule for opset versions ``since`` to ``until`` (None: every later one).

    ``producer``: the op creates channels, so its rule runs even when no input carries any.
    """

    since: int
    until: int | None
    rule: Rule
    producer: bool = False

    def covers(self, version: int) -> bool:
        """Whether the rule applies at opset ``version``."""
        return self.since <= version and (self.until is None or version <= self.until)

    def overlaps(self, other: "Entry") -> bool:
        """Whether some opset version is in both ranges."""
        return (self.until is None or other.since <= self.until) and (other.until is None or self.since <= other.until)

    def versions(self) -> str:
        """The range in words, for error messages."""
        return f"opset {self.since} and later" if self.until is None else f"opsets {self.since} to {self.until}"


_RULES: dict[tuple[str, str], list[Entry]] = {}


def _op_name(domain: str, op_type: str) -> str:
    return f"{domain}.{op_type}" if domain else op_type


def _add(domain: str, op_type: str, entry: Entry) -> None:
    """Register ``entry``; ConfigError for an empty range or one that overlaps an existing rule."""
    name = _op_name(domain, op_type)
    if not callable(entry.rule):
        raise ConfigError(f"the rule for {name} must be a function (walker, node) -> None, got {entry.rule!r}")
    if entry.since < 1 or (entry.until is not None and entry.until < entry.since):
        raise ConfigError(f"opset range {entry.since} to {entry.until} for {name} is empty")
    entries = _RULES.setdefault((domain, op_type), [])
    clash = next((e for e in entries if e.overlaps(entry)), None)
    if clash is not None:
        raise ConfigError(f"{name} already has a rule for {clash.versions()}; "
                          f"call unregister_op({op_type!r}, domain={domain!r}) first to replace it")
    entries.append(entry)


def rule(*op_types: str, domain: str = "", since: int = 1, until: int | None = None,
         producer: bool = False) -> Callable[[Rule], Rule]:
    """Decorator registering a function as the rule of ``op_types`` for opsets ``since`` to ``until``."""
    def decorate(function: Rule) -> Rule:
        for op_type in op_types:
            _add(domain_key(domain), op_type, Entry(since, until, function, producer))
        return function
    return decorate


def lookup(domain: str, op_type: str, version: int) -> Entry | None:
    """The rule registered for ``op_type`` of ``domain`` at opset ``version``; None when there is none."""
    entries = _RULES.get((domain_key(domain), op_type), [])
    return next((e for e in entries if e.covers(version)), None)


def register_op(op_type: str, rule: Rule, *, domain: str = "", since: int = 1, until: int | None = None) -> None:
    """Declare the channel semantics of ``op_type`` in ``domain`` for opsets ``since`` to ``until``.

    ``rule`` is one of the ready-made behaviours ``onnxprune.channels.unary`` (channels pass through
    from the first input), ``elementwise`` (broadcasting operands share channels) or
    ``blocking(reason)``, or a function ``(walker, node) -> None`` of the same form.
    """
    _add(domain_key(domain), op_type, Entry(since, until, rule))


def unregister_op(op_type: str, *, domain: str = "", since: int | None = None) -> None:
    """Forget the rule of ``op_type`` in ``domain`` starting at opset ``since`` (None: every range)."""
    key = (domain_key(domain), op_type)
    entries = _RULES.get(key, [])
    kept = [] if since is None else [e for e in entries if e.since != since]
    if len(kept) == len(entries):
        raise ConfigError(f"no rule registered for {_op_name(*key)}" + (f" from opset {since}" if since else ""))
    _RULES[key] = kept


@contextmanager
def registered_op(op_type: str, rule: Rule, *, domain: str = "", since: int = 1,
                  until: int | None = None) -> Iterator[None]:
    """:func:`register_op` for the duration of a ``with`` block, unregistered afterwards."""
    register_op(op_type, rule, domain=domain, since=since, until=until)
    try:
        yield
    finally:
        unregister_op(op_type, domain=domain, since=since)
