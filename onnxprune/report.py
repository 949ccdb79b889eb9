"""What reports are made of: plain-text tables and JSON written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def fmt(value: Any, digits: int = 2) -> str:
    """A compact cell: floats with ``digits`` decimals, big ints with thousands separators, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def percent(fraction: float | None) -> float | None:
    """A fraction (how onnxprune reports accuracy, agreement and sparsity) as percent, for tables."""
    return None if fraction is None else fraction * 100.0


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """Left-aligned text columns, numbers right-aligned, with a rule under the header."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in rows) and rows for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or value is None


def write_json(data: dict[str, Any], path: str | os.PathLike, inputs: list[str | os.PathLike] = ()) -> Path:
    """Write a JSON report atomically, refusing to overwrite any of ``inputs``."""
    from onnxprune.graph.io import atomic_write, check_output_path

    target = check_output_path(path, inputs)

    def write(tmp: Path) -> None:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2, default=json_default)
            handle.write("\n")

    atomic_write(target, write)
    return target


def json_default(value: Any) -> Any:
    """JSON for numpy scalars/arrays, paths and tuples in reports."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
