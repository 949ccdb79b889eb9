"""ONNX Runtime sessions: CUDA execution provider when a GPU is really there, CPU otherwise."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from onnxprune.errors import ConfigError, ModelError, first_line
from onnxprune.graph.io import write_external
from onnxprune.graph.protos import over_protobuf_limit, weight_bytes
from onnxprune.options import DEVICES
from onnxprune.threads import thread_count

log = logging.getLogger(__name__)


def _gpu_present() -> bool:
    """True when the CUDA provider is built in and an NVIDIA device node exists."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    return os.path.exists("/dev/nvidiactl") or os.name == "nt"


def make_session(model: str | Path | onnx.ModelProto, *, threads: int | None = None,
                 device: str = "auto", spinning: bool = False, lean: bool = False) -> ort.InferenceSession:
    """An InferenceSession on ``device`` ('auto': CUDA if a GPU is present, else CPU) with ``threads``
    intra-op threads (default: onnxprune's thread count). Idle threads do not busy-wait unless
    ``spinning``: spinning threads slow another session timed beside them, and collapse under CPU load.
    ``lean``: no second, prepacked copy of the weights (BERT-base: 400 MB less, the same speed at capture
    batches; sessions that are timed keep it)."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, not {threads}")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures come back as exceptions; ORT log lines would break one-line errors
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads or thread_count()
    options.inter_op_num_threads = 1
    if lean:
        options.add_session_config_entry("session.disable_prepacking", "1")
    use_cuda = device == "cuda" or (device == "auto" and _gpu_present())
    providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
    if isinstance(model, (str, Path)):
        session = _open(str(model), options, providers)
    elif not over_protobuf_limit(model):
        session = _open(model.SerializeToString(), options, providers)
    else:  # written tensor by tensor to a private folder: ONNX Runtime copies the weights as it loads them
        with tempfile.TemporaryDirectory(prefix="onnxprune-session-") as folder:
            path = Path(folder) / "model.onnx"
            write_external(model, path, path.with_name("model.onnx.data"))
            session = _open(str(path), options, providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise ConfigError("device 'cuda' requested but ONNX Runtime's CUDA execution provider is not usable here")
    return session


# A timed session holds the weights and ONNX Runtime's prepacked copy of the MatMul/Gemm/Conv weights.
_SESSION_COPIES = 2


def session_bytes(model: str | Path | onnx.ModelProto) -> int:
    """About what a (prepacked) session of ``model`` holds: its weights twice, counted from the dims (a file's
    external data is not read)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return _SESSION_COPIES * weight_bytes(model)


def _open(source: str | bytes, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """ORT's session on a path or serialized model; its failures become one-line ModelErrors."""
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        first = first_line(exc)
        raise ModelError(f"ONNX Runtime cannot load the model: {first}") from None


def provider_name(session: ort.InferenceSession) -> str:
    """'cuda' or 'cpu': the provider that actually runs the session."""
    return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
