"""The one error type onnxprune raises for input it cannot use; the CLI prints it as one line."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when there is none), so
    errors raised by onnx, ONNX Runtime or numpy become one-line onnxprune messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OnnxPruneError(Exception):
    """Base of every documented onnxprune error: a message a user can act on."""


class ModelError(OnnxPruneError):
    """The model file is missing, unreadable, invalid or uses something onnxprune cannot handle."""


class DataError(OnnxPruneError):
    """Calibration or evaluation data does not match the model or holds bad values."""


class ConfigError(OnnxPruneError):
    """An option value is out of range or contradicts another option."""


class ConversionError(OnnxPruneError):
    """The torch view of the model could not be built or disagrees with ONNX Runtime."""


class OutputError(OnnxPruneError):
    """The output path is unusable (equal to the input, missing folder) or the write failed."""


class QualityError(OnnxPruneError):
    """The result misses the quality budget asked for, so nothing was written."""


class ResourceError(OnnxPruneError):
    """The requested work does not fit the given memory budget."""
