"""A Llama-shaped decoder in torch at random init, exported to ONNX with its weights as external data.

For the scale benchmark (``tools/bench_scale.py``): the models people bring next are decoder LLMs stored as
ONNX over the 2 GB protobuf limit. The module follows the Llama architecture (RMSNorm, rotary position
embeddings, grouped-query causal attention, SwiGLU feed-forward, untied output projection) with Hugging
Face ``LlamaConfig`` field names; ``transformers`` is not needed. The export is the prefill graph (no KV
cache): ``input_ids``, ``attention_mask`` [B, T] int64 -> ``logits`` [B, T, vocab].

    write_decoder(TINYLLAMA | {"num_hidden_layers": 10}, Path("decoder.onnx"))   # + decoder.onnx.data
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads slow shared cores

import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

# TinyLlama-1.1B's widths (Llama-2 architecture, 1.1 B weights, 4.4 GB in float32).
TINYLLAMA = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
             "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "initializer_range": 0.02}


class _RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Attention(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        h = c["hidden_size"]
        self.heads, self.kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
        self.head_dim = h // self.heads
        self.q_proj = nn.Linear(h, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
        ctx = torch.softmax(scores, dim=-1) @ v
        return self.o_proj(ctx.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class _MLP(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        h, inner = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(h, inner, bias=False)
        self.up_proj = nn.Linear(h, inner, bias=False)
        self.down_proj = nn.Linear(inner, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.input_layernorm = _RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = _Attention(c)
        self.post_attention_layernorm = _RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = _MLP(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, bias)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaDecoder(nn.Module):
    """(input_ids [B, T], attention_mask [B, T]) -> logits [B, T, vocab]; padding keys (mask 0) and future
    positions get the dtype's lowest value added to their attention scores."""

    def __init__(self, config: dict):
        super().__init__()
        c = config
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = _RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        head_dim = c["hidden_size"] // c["num_attention_heads"]
        inv_freq = 1.0 / c["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(c["max_position_embeddings"], dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos_table", angles.cos(), persistent=False)
        self.register_buffer("sin_table", angles.sin(), persistent=False)
        for module in self.modules():  # Llama's init: normal(0, initializer_range), norms at one
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=c["initializer_range"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        cos, sin = self.cos_table[:t][None, None], self.sin_table[:t][None, None]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
        bias = (~allowed).to(x.dtype) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, cos, sin, bias)
        return self.lm_head(self.norm(x))


def write_decoder(config: dict, path: Path, seed: int = 0, opset: int = 17) -> Path:
    """Export a random-init decoder to ``path`` with every weight in one external-data file ``<name>.data``
    beside it (torch's TorchScript exporter writes one file per tensor for models over 2 GB: they are
    gathered here). Returns ``path``."""
    torch.manual_seed(seed)
    model = LlamaDecoder(config).eval()
    ids = torch.ones(2, 8, dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = Path(scratch) / "decoder.onnx"
        with torch.no_grad():
            torch.onnx.export(model, (ids, torch.ones_like(ids)), str(raw), dynamo=False, opset_version=opset,
                              do_constant_folding=True, input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                                                     "logits": axes})
        del model
        exported = onnx.load(str(raw))
        onnx.save_model(exported, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    return path
