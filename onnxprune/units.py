"""The one parser and formatter of byte sizes, for options (``--max-memory 2G``), reports and errors."""

from __future__ import annotations

import re

from onnxprune.errors import ConfigError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str | int, what: str = "max_memory") -> int:
    """'2G', '500M', '1.5GiB', '3.0 GB', '123456' → bytes (binary units); ConfigError naming ``what`` otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{what} must be a positive size such as '2G', '500M' or '1.5G', not {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(count: float | None) -> str:
    """Bytes as B/KB/MB/GB/TB with one decimal ('-' for None); ``parse_bytes`` reads it back."""
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
