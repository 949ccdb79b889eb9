"""What goes into and comes out of an ONNX Runtime session: input specs of a loaded session, the model's
fixed batch, feeds made from data or at random, and every sample run through in batches."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnxruntime as ort

from onnxprune.data import Dataset, InputSpec
from onnxprune.errors import ConfigError, ModelError, first_line

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
              "tensor(bool)": np.bool_}


def session_inputs(session: ort.InferenceSession) -> list[InputSpec]:
    """The inputs of a loaded session as specs (dynamic dims None), so the file need not be parsed again."""
    specs = []
    for arg in session.get_inputs():
        dtype = np.dtype(_ORT_TYPES.get(arg.type, np.float32))
        specs.append(InputSpec(arg.name, dtype, tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)))
    return specs


def fixed_batch(specs: Sequence[InputSpec]) -> int | None:
    """The static batch size of the model's inputs (the first one that fixes it), None when dynamic."""
    return next((s.shape[0] for s in specs if s.shape and s.shape[0] is not None), None)


def make_feed(model_inputs: Sequence[InputSpec], batch: int, data: Dataset | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of ``batch`` samples: taken (repeated) from ``data`` or random, dynamic non-batch dims = 1."""
    fixed = fixed_batch(model_inputs)
    if fixed is not None and fixed != batch:
        raise ConfigError(f"the model has a fixed batch size {fixed}; use --batch {fixed}")
    if data is not None:
        index = np.arange(batch) % len(data)
        return {name: np.ascontiguousarray(array[index]) for name, array in data.inputs.items()}
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in model_inputs:
        shape = [batch if axis == 0 and dim is None else (dim or 1) for axis, dim in enumerate(spec.shape)]
        if np.issubdtype(spec.dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feed[spec.name] = np.ones(shape, np.bool_)
        else:
            feed[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
    return feed


def run_batched(session: ort.InferenceSession, data: Dataset, batch_size: int = 256) -> list[np.ndarray]:
    """Run every sample through the session, ``batch_size`` at a time (the model's fixed batch when it has
    one); outputs concatenated on axis 0."""
    step = fixed_batch(session_inputs(session)) or batch_size
    chunks: list[list[np.ndarray]] = []
    for start in range(0, len(data), step):
        feed = {name: array[start:start + step] for name, array in data.inputs.items()}
        try:
            chunks.append(session.run(None, feed))
        except Exception as exc:  # ORT raises its own types on bad shapes/values
            first = first_line(exc)
            raise ModelError(f"ONNX Runtime failed to run the model: {first}") from None
    return [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(chunks[0]))]
