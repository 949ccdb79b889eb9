"""The one adapter to ONNX Runtime's private symbolic shape inference (``SymbolicShapeInference``).

It follows the Shape→Gather→Concat→Reshape arithmetic that ONNX's own inference leaves unknown. Its public
entry point writes a temporary model into the working folder when inference is incomplete, so its steps are
driven directly here, the only place in the package that touches them. ``API`` names every private member
used; ``missing_api`` checks them, and ``tests/test_shapes.py`` fails loudly when an onnxruntime release
changes them (pyproject.toml pins onnxruntime below the first version not tested).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from pathlib import Path

import onnx

log = logging.getLogger(__name__)

# The private members of SymbolicShapeInference this adapter drives (methods; the flag its loop reads; the
# model it leaves), and its constructor's parameters.
API = ("_preprocess", "_infer_impl", "_update_output_from_vi")
LOOP_FLAG, RESULT = "run_", "out_mp_"
CONSTRUCTOR = ("int_max", "auto_merge", "guess_output_rank", "verbose")


MODULE = "tools/symbolic_shape_infer.py"  # inside the onnxruntime package
_loaded: list[type | None] = []


def _inference_class() -> type | None:
    """ORT's SymbolicShapeInference, its file loaded on its own: importing it as ``onnxruntime.tools...``
    runs that package's ``__init__``, which imports torch (seconds) wherever torch is installed."""
    if not _loaded:
        import onnxruntime

        path = Path(onnxruntime.__file__).parent / MODULE
        spec = importlib.util.spec_from_file_location("onnxprune_ort_symbolic_shape_infer", path)
        try:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _loaded.append(module.SymbolicShapeInference)
        except (OSError, ImportError, AttributeError) as exc:
            log.debug("cannot load %s: %s", path, exc)
            _loaded.append(None)
    return _loaded[0]


def missing_api() -> list[str]:
    """What this adapter needs and the installed onnxruntime lacks (empty when it fits)."""
    cls = _inference_class()
    if cls is None:
        return [f"SymbolicShapeInference in onnxruntime/{MODULE}"]
    missing = [name for name in API if not callable(getattr(cls, name, None))]
    parameters = list(inspect.signature(cls.__init__).parameters)[1:]
    if parameters[:len(CONSTRUCTOR)] != list(CONSTRUCTOR):
        missing.append(f"__init__({', '.join(CONSTRUCTOR)}) (found {', '.join(parameters)})")
    elif not hasattr(cls(2**31 - 1, True, False, 0), LOOP_FLAG):
        missing.append(LOOP_FLAG)
    return missing


class SymbolicInference:
    """Runs ONNX Runtime's symbolic shape inference on a model; ``infer`` returns the model with the shapes
    it found, or None when it cannot (an op it does not know, say), logging why once per run of onnxprune."""

    def __init__(self) -> None:
        self.changed: list[str] | None = None  # what the installed onnxruntime lacks, checked on first use
        self.warned = False

    def _warn(self, message: str, *args: object) -> None:
        if not self.warned:
            self.warned = True
            log.warning(message, *args)

    def _changed(self) -> None:
        import onnxruntime

        self._warn("onnxruntime %s changed its symbolic shape inference (missing: %s); using the shapes ONNX "
                   "inference gives, so sizes computed from Shape arithmetic may stay unknown and the channels "
                   "behind them unprunable", onnxruntime.__version__, ", ".join(self.changed))

    def infer(self, model: onnx.ModelProto) -> onnx.ModelProto | None:
        if self.changed is None:
            self.changed = missing_api()
        if self.changed:
            self._changed()
            return None
        inference = _inference_class()(2**31 - 1, True, False, 0)
        try:
            inference._preprocess(model)
            while inference.run_:
                inference._infer_impl()
            inference._update_output_from_vi()
        except Exception as exc:  # the inference itself raises what it meets on ops it does not support
            self._warn("ONNX Runtime's symbolic shape inference failed on this model (%s: %s); using the shapes "
                       "ONNX inference gives, so sizes computed from Shape arithmetic may stay unknown and the "
                       "channels behind them unprunable", type(exc).__name__, exc)
            return None
        if not hasattr(inference, RESULT):
            self.changed = [RESULT]
            self._changed()
            return None
        return getattr(inference, RESULT)


SYMBOLIC = SymbolicInference()
