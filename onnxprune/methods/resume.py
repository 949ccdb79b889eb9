"""Resumable runs (``--resume DIR``): a folder where a long layer-wise run keeps every finished layer and
error-curve point as it goes, so that the same command started again with the same folder goes on where it
stopped (and a finished run's folder serves a second run at once). A folder belongs to one model,
calibration set, method and set of options (``RunIdentity``); another run's folder is refused."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.errors import ConfigError
from onnxprune.graph.io import atomic_write

log = logging.getLogger(__name__)

# The file that ties a folder to one run.
IDENTITY_FILE = "run.json"
# Samples hashed at a time when fingerprinting calibration data (lazy sources are made in such chunks).
_HASH_CHUNK = 256


@dataclass(frozen=True)
class RunIdentity:
    """What a run's results depend on, besides the sparsity: sha256 of the canonical model and of the
    calibration samples, the method, its options (JSON) and the onnxprune version."""

    model: str
    calibration: str
    method: str
    options: str
    version: str


def data_fingerprint(inputs: dict[str, Any]) -> str:
    """sha256 of every input's name, shape, dtype and samples (lazy arrays made a chunk at a time)."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        array = inputs[name]
        digest.update(f"{name}{tuple(array.shape)}{np.dtype(array.dtype)}".encode())
        for start in range(0, len(array), _HASH_CHUNK):
            digest.update(np.ascontiguousarray(array[start:start + _HASH_CHUNK]).tobytes())
    return digest.hexdigest()


def not_resumable(method: str) -> ConfigError:
    """The refusal of ``--resume`` for a method without layer-by-layer steps to keep."""
    return ConfigError(f"--resume keeps the finished layers of a layer-wise run (sparsegpt, wanda, chita with its "
                       f"default layer engine); {method!r} has no such steps to keep")


class ResumeStore:
    """A run's folder: ``run.json`` (its identity) and one ``.npz`` per finished piece of work, each written
    atomically, so an interrupted write leaves the piece missing, never half there. Checked when opened,
    made with the first piece."""

    def __init__(self, folder: str | os.PathLike, identity: RunIdentity) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"--resume {self.folder}: not a folder")
        marker = self.folder / IDENTITY_FILE
        if marker.exists():
            try:
                found = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--resume {self.folder}: {IDENTITY_FILE} is unreadable ({exc})") from None
            differs = [key for key, value in asdict(identity).items() if found.get(key) != value]
            if differs:
                raise ConfigError(f"--resume {self.folder} holds a run that differs in {', '.join(differs)}: give a "
                                  f"new folder, or delete this one to start afresh")
        elif self.folder.exists() and any(self.folder.iterdir()):
            raise ConfigError(f"--resume {self.folder} is not empty and holds no onnxprune run ({IDENTITY_FILE}): "
                              f"give a new or empty folder")
        self.identity, self.claimed = identity, marker.exists()

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def read(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The arrays and JSON details stored under ``key`` (e.g. 's0.5/layer-0003'), or None; an unreadable
        piece counts as missing (with a warning) and is done again."""
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files if name != "details"}
                details = json.loads(str(stored["details"]))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("resume: %s is unreadable (%s); doing that work again", path, exc)
            return None
        return arrays, details

    def write(self, key: str, arrays: dict[str, np.ndarray], details: dict[str, Any]) -> None:
        """Store ``arrays`` and JSON ``details`` under ``key``, atomically."""
        if not self.claimed:  # the folder is made with the first piece of work, never before
            self.folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps(asdict(self.identity), indent=1)
            atomic_write(self.folder / IDENTITY_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
            self.claimed = True
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, details=np.array(json.dumps(details)))
        atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
