"""The Llama-family decoder (Llama, SmolLM2, Qwen2) in plain torch.

x -> embed -> L x [x += o(attn(rope(q), rope(k), v)); x += down(silu(gate) * up)] -> norm -> head

RMSNorm, rotary embeddings (rotate-half layout, the checkpoint's base and scaling),
grouped-query attention over the paged KV pool, SwiGLU, optional q/k/v bias, tied or untied head.
Q/K/V and gate/up projections are fused into one matmul each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_engine.config import ModelConfig
from llm_engine.kv_cache import AttnMeta, KVCache, paged_attention
from llm_engine.quant import Int8Weight, linear, quantize_int8


@dataclass(slots=True)
class LayerWeights:
    attn_norm: Tensor  # [hidden]
    qkv: Tensor | Int8Weight  # [(H + 2 Hkv) * D, hidden]
    qkv_bias: Tensor | None  # [(H + 2 Hkv) * D]
    o: Tensor | Int8Weight  # [hidden, H * D]
    mlp_norm: Tensor  # [hidden]
    gate_up: Tensor | Int8Weight  # [2 * inter, hidden]
    down: Tensor | Int8Weight  # [hidden, inter]


@dataclass(slots=True)
class ModelWeights:
    embed: Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: Tensor  # [hidden]
    lm_head: Tensor | Int8Weight  # [vocab, hidden]; the embedding itself when tied


def rope_inv_freq(cfg: ModelConfig) -> Tensor:
    """Inverse frequencies [D/2] with the checkpoint's rope scaling (default, linear, llama3)."""
    D = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        inv = inv / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        lo, hi = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = torch.where(is_mid, mid, scaled)
    elif kind not in ("default", None):
        raise NotImplementedError(f"rope scaling {kind!r} is not supported")
    return inv


def rope_tables(cfg: ModelConfig, max_len: int, dtype: torch.dtype, device: str) -> Tensor:
    """cos and sin for every position: [2, max_len, D], computed in fp32 as HF does."""
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), rope_inv_freq(cfg))
    emb = torch.cat((freqs, freqs), dim=-1)  # [max_len, D]
    return torch.stack((emb.cos(), emb.sin())).to(dtype=dtype, device=device)


def apply_rope_(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    """In place: x = x*cos + rotate_half(x)*sin. x: [B, T, heads, D]; cos, sin: [B, T, 1, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    x.mul_(cos).addcmul_(rotated, sin)


class Transformer:
    """Weights plus a forward over the paged KV pool. Holds no per-request state."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, max_len: int) -> None:
        self.cfg = cfg
        self.w = weights
        self.rope = rope_tables(cfg, max_len, weights.embed.dtype, str(weights.embed.device))

    def quantize_int8(self, keep_full: bool) -> None:
        """Switch every projection and the head to int8 weights (see :mod:`llm_engine.quant`)."""
        for lw in self.w.layers:
            for name in ("qkv", "o", "gate_up", "down"):
                w = getattr(lw, name)
                if isinstance(w, Tensor):
                    setattr(lw, name, quantize_int8(w, keep_full))
        if isinstance(self.w.lm_head, Tensor):
            self.w.lm_head = quantize_int8(self.w.lm_head, keep_full)

    def forward(self, input_ids: Tensor, positions: Tensor, kv: KVCache, meta: AttnMeta) -> Tensor:
        """input_ids, positions: [B, T] int64 -> final hidden states [B, T, hidden]."""
        cfg = self.cfg
        H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        B, T = input_ids.shape
        cos, sin = self.rope[:, positions].unsqueeze(3)  # each [B, T, 1, D]
        x = F.embedding(input_ids, self.w.embed)  # [B, T, hidden]
        for i, lw in enumerate(self.w.layers):
            h = F.rms_norm(x, (x.shape[-1],), lw.attn_norm, cfg.rms_norm_eps)
            qkv = linear(h, lw.qkv, lw.qkv_bias).view(B, T, H + 2 * Hkv, D)
            apply_rope_(qkv[:, :, : H + Hkv], cos, sin)  # q and k heads together
            kv_new = qkv[:, :, H:].view(B, T, 2, Hkv, D)  # k heads then v heads
            attn = paged_attention(qkv[:, :, :H], kv_new, kv.kv[i], meta)  # [B, T, H D]
            x = x + linear(attn, lw.o)
            h = F.rms_norm(x, (x.shape[-1],), lw.mlp_norm, cfg.rms_norm_eps)
            gate, up = linear(h, lw.gate_up).chunk(2, dim=-1)  # [B, T, inter] each
            x = x + linear(F.silu(gate) * up, lw.down)
        return F.rms_norm(x, (x.shape[-1],), self.w.norm, cfg.rms_norm_eps)

    def logits(self, hidden: Tensor) -> Tensor:
        """hidden: [N, hidden] -> logits [N, vocab] in float32."""
        return linear(hidden, self.w.lm_head).float()
