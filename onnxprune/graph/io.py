"""Read an ONNX file safely: existence, parse, external data confined to the model's folder, checker."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
from onnx import numpy_helper
from google.protobuf.message import DecodeError

from onnxprune.errors import ModelError, first_line

log = logging.getLogger(__name__)


def _external_locations(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(tensor name, location) of every initializer stored as external data."""
    found = []
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            found.append((tensor.name, entries.get("location", "")))
    return found


def _all_tensors(model: onnx.ModelProto):
    """Initializers (dense and the parts of sparse ones) of the main graph and of every subgraph, plus
    tensors held in Constant nodes."""
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)


def check_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations that are missing or resolve outside ``base_dir``."""
    root = base_dir.resolve()
    for name, location in _external_locations(model):
        if not location:
            raise ModelError(f"initializer {name!r} is external data without a location")
        if os.path.isabs(location):
            raise ModelError(f"initializer {name!r}: external data location {location!r} is absolute; "
                             "only paths inside the model's folder are accepted")
        target = (root / location).resolve()
        if root != target and root not in target.parents:
            raise ModelError(f"initializer {name!r}: external data location {location!r} escapes the "
                             f"model's folder {root}")
        if not target.is_file():
            raise ModelError(f"initializer {name!r}: external data file {location!r} is missing next to the model")


def check_tensors(model: onnx.ModelProto) -> None:
    """Refuse stored tensors whose data does not decode to their dims and dtype (a damaged or
    hand-edited file), so later stages never meet an undecodable weight."""
    for tensor in _all_tensors(model):
        try:
            numpy_helper.to_array(tensor)
        except (ValueError, TypeError, KeyError) as exc:
            reason = first_line(exc)
            raise ModelError(f"tensor {tensor.name!r} (type {tensor.data_type}, dims {list(tensor.dims)}) holds data "
                             f"that does not match its type and shape: {reason}") from None


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with its external data (kept inside its folder) and run ``onnx.checker``."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {str(path)!r} does not exist")
    if not path.is_file():
        raise ModelError(f"model path {str(path)!r} is not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"{str(path)!r} is not a readable ONNX model (truncated or another format): {exc}") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{str(path)!r} holds no ONNX graph (not an ONNX model, or an empty one)")
    check_external_data(model, path.parent)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise ModelError(f"external data of {str(path)!r} could not be read: {exc}") from None
    check_tensors(model)
    if check:
        check_model(model, str(path))
    log.debug("loaded %s: %d nodes, %d initializers", path, len(model.graph.node), len(model.graph.initializer))
    return model


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """Run ``onnx.checker`` and turn its failure into a ModelError."""
    try:
        if model.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF:
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise ModelError(f"{what} fails onnx.checker: {first}") from None
