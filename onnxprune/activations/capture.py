"""Stream chosen intermediate tensors out of ONNX Runtime: the graph declares them as extra outputs while
its session is made (the caller's model is left as it was) and calibration batches run through it."""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxprune.data import Dataset
from onnxprune.errors import ModelError, first_line
from onnxprune.graph.shapes import without_weights
from onnxprune.runtime.feeds import fixed_batch, session_inputs
from onnxprune.runtime.sessions import make_session

log = logging.getLogger(__name__)

def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph declares or shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(without_weights(model)).graph
    except Exception as exc:  # inference fails on some exporters' graphs; declared types still count
        log.debug("shape inference failed: %s", first_line(exc))
        inferred = model.graph
    types = {}
    for value in (*inferred.value_info, *model.graph.value_info, *model.graph.input, *model.graph.output):
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types


def session_with_outputs(model: onnx.ModelProto, tensors: dict[str, int], **options) -> ort.InferenceSession:
    """An ORT session (``make_session`` ``options``) on ``model`` that also outputs ``tensors`` (name →
    element type, declared without shape; graph inputs and existing outputs are not added again). The
    outputs are in ``model``'s graph only while the session is made: a copy would cost the weights again."""
    present = {v.name for v in (*model.graph.input, *model.graph.output)}
    added = [helper.make_tensor_value_info(name, elem_type, None) for name, elem_type in tensors.items()
             if name not in present]
    model.graph.output.extend(added)
    try:
        return make_session(model, **options)
    finally:
        del model.graph.output[len(model.graph.output) - len(added):]


class Capture:
    """One ORT session on ``model`` that also outputs ``tensors`` (name → element type)."""

    def __init__(self, model: onnx.ModelProto, tensors: dict[str, int]) -> None:
        self.tensors = dict(tensors)
        self.session = session_with_outputs(model, self.tensors, device="cpu", spinning=False, lean=True)
        self.names = [o.name for o in self.session.get_outputs()]
        self.fixed_batch = fixed_batch(session_inputs(self.session))

    def run(self, data: Dataset, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """The captured tensors for every batch of ``data`` (a fixed model batch wins over ``batch_size``);
        batches are consecutive slices of ``batch_step(batch_size)`` samples."""
        step = self.batch_step(batch_size)
        for start in range(0, len(data), step):
            feed = {name: array[start:start + step] for name, array in data.inputs.items()}
            try:
                values = dict(zip(self.names, self.session.run(None, feed)))
            except Exception as exc:  # ORT raises its own types
                raise ModelError(f"ONNX Runtime failed while capturing layer inputs: {first_line(exc)}") from None
            values.update({n: feed[n] for n in self.tensors if n in feed})
            batch = {n: values[n] for n in self.tensors}
            del values  # the caller drops the batch before asking for the next: one batch is held at a time
            yield batch
            del batch

    def batch_step(self, batch_size: int) -> int:
        """Samples per ORT call for a requested ``batch_size``."""
        return self.fixed_batch or batch_size
