"""Text as calibration or evaluation data: a ``.txt`` file (one sample a line) or a ``.jsonl`` file (the
``--text-field`` of each line), tokenized by a ``tokenizer.json`` (the ``tokenizers`` library) into the
model's token inputs, matched by name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.data.arrays import InputSpec
from onnxprune.errors import DataError, first_line

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PADDINGS = ("longest", "max-length")
DEFAULT_MAX_LENGTH = 128  # when neither the model's input nor the tokenizer fixes one


def read_texts(path: Path, field: str) -> list[str]:
    """The samples of a .txt (each non-empty line) or .jsonl (``field`` of each line) file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() != ".jsonl":
        texts = [line for line in lines if line.strip()]
    else:
        texts = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path.name} line {number} is not JSON ({first_line(exc)})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise DataError(f"{path.name} line {number} has no text field {field!r} (set --text-field)")
            texts.append(record[field])
    if not texts:
        raise DataError(f"{path.name} holds no text sample")
    return texts


def _pad_id(tokenizer: Any) -> tuple[int, str]:
    """The padding token the tokenizer declares, else [PAD] or <pad> from its vocabulary, else id 0."""
    if tokenizer.padding:
        return tokenizer.padding["pad_id"], tokenizer.padding["pad_token"]
    for token in ("[PAD]", "<pad>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return found, token
    return 0, "[PAD]"


def tokenize(path: Path, specs: list[InputSpec], tokenizer_path: str, field: str = "text",
             max_length: int | None = None, padding: str = "longest") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The model's token inputs for every sample of ``path``, and the description of how they were made.
    Sequences are cut at ``max_length`` (default: the model's fixed sequence length, else the tokenizer's,
    else 128) and padded to the longest sample or to ``max_length`` (a fixed sequence length always)."""
    unknown = [s.name for s in specs if s.name not in TOKEN_INPUTS]
    if unknown:
        raise DataError(f"a tokenizer gives {', '.join(TOKEN_INPUTS)}; the model's input {unknown[0]!r} is none of "
                        "them (give its data as .npz, or a reader: file.py:factory)")
    if "input_ids" not in {s.name for s in specs}:
        raise DataError("the model has no 'input_ids' input for the tokenizer to fill")
    if padding not in PADDINGS:
        raise DataError(f"--padding must be one of {', '.join(PADDINGS)}, not {padding!r}")
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:  # the tokenizers library raises its own exception types
        raise DataError(f"tokenizer {str(tokenizer_path)!r} is not a readable tokenizer.json ({first_line(exc)})") from None
    fixed = {s.shape[1] for s in specs if len(s.shape) == 2 and s.shape[1] is not None}
    if len(fixed) > 1 or any(len(s.shape) != 2 for s in specs):
        raise DataError(f"token inputs are [batch, sequence]; the model's are {[list(s.shape) for s in specs]}")
    if fixed and max_length is not None and max_length != next(iter(fixed)):
        raise DataError(f"--max-length {max_length} does not fit the model's fixed sequence length {next(iter(fixed))}")
    length = next(iter(fixed)) if fixed else max_length or (tokenizer.truncation or {}).get("max_length") \
        or DEFAULT_MAX_LENGTH
    pad_id, pad_token = _pad_id(tokenizer)
    tokenizer.enable_truncation(max_length=length)
    to_max = padding == "max-length" or bool(fixed)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, length=length if to_max else None)
    texts = read_texts(path, field)
    encoded = tokenizer.encode_batch(texts)
    made = {"input_ids": [e.ids for e in encoded], "attention_mask": [e.attention_mask for e in encoded],
            "token_type_ids": [e.type_ids for e in encoded]}
    arrays = {s.name: np.asarray(made[s.name], dtype=s.dtype) for s in specs}
    mask = np.asarray(made["attention_mask"])
    described = {"kind": "text", "path": str(path.resolve()), "samples": len(texts),
                 "tokenizer": str(Path(tokenizer_path).resolve()),
                 "tokenizer_sha256": hashlib.sha256(Path(tokenizer_path).read_bytes()).hexdigest(),
                 "max_length": int(length), "padding": "max-length" if to_max else "longest",
                 "truncated": int(sum(bool(e.overflowing) for e in encoded)),
                 "padding_fraction": float(1.0 - mask.mean())}
    if path.suffix.lower() == ".jsonl":
        described["text_field"] = field
    return arrays, described
