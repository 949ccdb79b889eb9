"""INT8 as a last stage: ONNX Runtime's static quantization of a (pruned) float model, QDQ format, weights
int8 per channel and activations uint8, calibrated on the same data the method saw."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.data import Dataset
from onnxprune.errors import ConfigError, ModelError, first_line

log = logging.getLogger(__name__)

MODES = ("int8", "auto")
CALIBRATIONS = ("minmax", "entropy", "percentile")
PER_CHANNEL_OPSET = 13  # DequantizeLinear takes an axis (per-channel scales) from opset 13


@dataclass(frozen=True)
class Quantization:
    """``mode``: 'int8' always writes the INT8 model; 'auto' keeps it only when ONNX Runtime runs it faster
    than the float one and its outputs lose at most ``max_drop`` (of top-1 agreement for class scores, else of
    cosine) to the float model's. ``calibration``: how activation ranges are set; ``exclude``: op types or node
    names left in float; ``samples``: calibration samples it runs."""

    mode: str = "int8"
    calibration: str = "minmax"
    exclude: tuple[str, ...] = ()
    samples: int = 64
    max_drop: float = 0.01

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--quantize must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"--quantize-calibration must be one of {', '.join(CALIBRATIONS)}, not "
                              f"{self.calibration!r}")
        if self.samples < 1 or not 0 <= self.max_drop < 1:
            raise ConfigError("quantization samples must be >= 1 and max_drop in [0, 1)")


class _Advice(logging.Filter):
    """Drops ONNX Runtime's advice to pre-process a model before quantizing it (onnxprune's canonical form already
    has inferred shapes) and its note, once per BatchNormalization, that a rank-1 weight has no per-channel axis
    (such a weight is quantized per tensor, as it should be)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "pre-processing" not in message and "is out-of-range for weight" not in message


def excluded_nodes(model: onnx.ModelProto, exclude: tuple[str, ...]) -> list[str]:
    """The names of the nodes ``exclude`` names (by op type or node name); ConfigError for a name that is
    neither."""
    types = {n.op_type for n in model.graph.node}
    names = {n.name for n in model.graph.node}
    unknown = [e for e in exclude if e not in types and e not in names]
    if unknown:
        raise ConfigError(f"--quantize-exclude {unknown[0]!r} is neither an op type nor a node name of the model")
    return [n.name for n in model.graph.node if n.op_type in exclude or n.name in exclude]


def per_channel_ready(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` at opset 13 or later, where per-channel weights can be dequantized (an older model is converted
    by onnx's version converter; ModelError when it cannot be)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), PER_CHANNEL_OPSET)
    if opset >= PER_CHANNEL_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
    except Exception as exc:  # the converter raises its own C++ error types
        raise ModelError(f"the opset {opset} model needs opset {PER_CHANNEL_OPSET} for per-channel INT8 weights and "
                         f"onnx's version converter could not convert it: {first_line(exc)}") from None
    log.info("opset %d converted to %d for per-channel INT8 weights", opset, PER_CHANNEL_OPSET)
    return converted


def quantize_int8(model: onnx.ModelProto, calib: Dataset, settings: Quantization, batch: int = 8) -> onnx.ModelProto:
    """``model`` statically quantized to INT8 (QDQ; opset 13 or later) with activation ranges from the first
    ``settings.samples`` calibration samples; ModelError with ONNX Runtime's reason when it cannot be quantized."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    data = calib.take(min(settings.samples, len(calib)))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(data), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.starts, None)
            if start is None:
                return None
            return {name: np.ascontiguousarray(array[start:start + batch]) for name, array in data.inputs.items()}

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.calibration]
    with tempfile.TemporaryDirectory(prefix="onnxprune-int8-") as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        onnx.save(per_channel_ready(model), str(source))
        quiet = _Advice()
        logging.getLogger().addFilter(quiet)  # ORT's quantizer advises pre-processing on every call, at WARNING
        try:
            quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded_nodes(model, settings.exclude), calibrate_method=method,
                            extra_options={"CalibTensorRangeSymmetric": False})
        except ConfigError:
            raise
        except Exception as exc:  # ONNX Runtime's quantizer raises its own and onnx's exception types
            raise ModelError(f"ONNX Runtime could not quantize the pruned model to INT8: {first_line(exc)}") from None
        finally:
            logging.getLogger().removeFilter(quiet)
        quantized = onnx.load(str(target))
    log.info("quantized to INT8 (QDQ, per-channel weights, %s calibration on %d samples)", settings.calibration,
             len(data))
    return quantized
