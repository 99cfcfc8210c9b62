"""The Llama-family decoder (Llama, SmolLM2, Qwen2) in plain torch.

x -> embed -> L x [x += o(attn(rope(q), rope(k), v)); x += down(silu(gate) * up)] -> norm -> head

RMSNorm, rotary embeddings (rotate-half layout, the checkpoint's base and scaling),
grouped-query attention over the paged KV pool, SwiGLU, optional q/k/v bias, tied or untied head.
Q/K/V and gate/up projections are fused into one matmul each. On CPU with int8 weights, a
decode step runs every layer in one C call (``cpu_kernel.decode_one``, the same math over the
same kernels; up to eight sequences on int8 weights, more on the bf16 GEMM where the CPU has
one): the ops' Python calls had cost a fifth of the step.
Where prefill's projections run as bf16 GEMMs, the activations between them stay bf16, the
norms and SwiGLU are one C call each, and the whole layer loop is one C call too
(``cpu_kernel.PrefillLayers``, the same kernels in the same order): its ~15 Python calls a
layer had held the other thread waiting for a fifth of a 51-token prefill.
"""

from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_engine import cpu_kernel, hugepages, rope
from llm_engine.config import ModelConfig
from llm_engine.kv_cache import AttnMeta, KVCache, Parts, attend, kernel_parts, step_slots
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


def rope_tables(cfg: ModelConfig, max_len: int, dtype: torch.dtype, device: str) -> Tensor:
    """cos and sin for every position: [2, max_len, D], computed in fp32 as HF does, scaled by
    the rope scaling's attention factor (YaRN's; 1 for the others)."""
    inv, scale = rope.inv_freq(
        cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings
    )
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)  # [max_len, D]
    return torch.stack((emb.cos() * scale, emb.sin() * scale)).to(dtype=dtype, device=device)


def _kernel_weight(w: Tensor | Int8Weight) -> tuple[Tensor, Tensor] | None:
    """(int8 weight, float32 scale) of a projection the C kernel runs, else None."""
    if isinstance(w, Int8Weight) and w.kernel is not None and w.scale32 is not None:
        return w.q, w.scale32
    return None


def _gemm_weights(lw: LayerWeights) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """A layer's q/k/v, o, gate/up and down as bf16 pairs packed for cpu_kernel's GEMM, or
    None where one is not."""
    ws = [w.full if isinstance(w, Int8Weight) and w.gemm is not None else None
          for w in (lw.qkv, lw.o, lw.gate_up, lw.down)]  # fmt: skip
    qkv, o, gate_up, down = ws
    if qkv is None or o is None or gate_up is None or down is None:
        return None
    return qkv, o, gate_up, down


def _plain(value: object) -> bool:
    """Whether ``value`` is a tensor in plain contiguous memory (not oneDNN's blocked kind)."""
    return isinstance(value, Tensor) and value.layout == torch.strided and value.is_contiguous()


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
        # float32 on CPU: RMSNorm and RoPE as single C calls (torch runs each as ~8 small ops)
        fp32_cpu = weights.embed.device.type == "cpu" and weights.embed.dtype == torch.float32
        self.kernel = cpu_kernel.load() if fp32_cpu else None
        self._decode_one: cpu_kernel.DecodeOne | None = None
        # where prefill's GEMMs run in bf16: the norms and SwiGLU hand them bf16 (see forward)
        self._bf16: ctypes.CDLL | None = None
        self._bf16_rows = 0  # from this many rows
        self._prefill_layers: cpu_kernel.PrefillLayers | None = None  # their layer loop in C

    @property
    def prefill_dtype(self) -> torch.dtype:
        """The dtype of prefill's projections: bfloat16 where int8 quantization kept bf16
        weights for many rows (CPUs with native bf16), else the model's."""
        w = self.w.layers[0].qkv
        if isinstance(w, Int8Weight) and w.full is not None:
            return torch.bfloat16 if w.full.is_mkldnn or w.gemm is not None else w.full.dtype
        return self.w.embed.dtype

    def quantize_int8(self, keep_full: bool) -> None:
        """Switch every projection and the head to int8 weights (see :mod:`llm_engine.quant`)."""
        for lw in self.w.layers:
            for name in ("qkv", "o", "gate_up", "down"):
                w = getattr(lw, name)
                if isinstance(w, Tensor):
                    setattr(lw, name, quantize_int8(w, keep_full))
        if isinstance(self.w.lm_head, Tensor):
            self.w.lm_head = quantize_int8(self.w.lm_head, keep_full)
        self._decode_one = self._bind_decode_one()
        w = self.w.layers[0].qkv
        if self.kernel is not None and self.prefill_dtype == torch.bfloat16:
            assert isinstance(w, Int8Weight)
            fits = cpu_kernel.activations_fit(self.cfg.hidden_size, self.cfg.intermediate_size)
            self._bf16 = cpu_kernel.load_bf16() if fits else None
            self._bf16_rows = w.full_min_rows
        self._prefill_layers = self._bind_prefill_layers()

    def to_huge_pages(self) -> None:
        """Move the weights (CPU) into one huge-page mapping (see :mod:`hugepages`): every
        decode step streams them."""
        if self.w.embed.device.type != "cpu":
            return
        holders: list[tuple[object, str]] = []
        parts: list[ModelWeights | LayerWeights] = [self.w, *self.w.layers]
        for obj in parts:
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                if isinstance(value, Int8Weight):
                    holders += [(value, g.name) for g in dataclasses.fields(value)]
                else:
                    holders.append((obj, f.name))
        holders = [(o, n) for o, n in holders if _plain(getattr(o, n))]
        arena = hugepages.Arena([getattr(o, n) for o, n in holders])
        for owner, name in holders:  # each original goes as soon as its copy is in
            setattr(owner, name, arena.place(getattr(owner, name)))
        if self._decode_one is not None:  # they hold the old weights' addresses
            self._decode_one = self._bind_decode_one(self._decode_one.max_batch)
        if self._prefill_layers is not None:
            self._prefill_layers = self._bind_prefill_layers()

    def _bind_decode_one(self, max_batch: int | None = None) -> cpu_kernel.DecodeOne | None:
        """The one-call decode of up to ``max_batch`` sequences, where every projection runs
        on the C kernel (float32 CPU, int8 weights); None elsewhere. Where the weights also
        have bf16 copies for cpu_kernel's GEMM, its projections switch to that GEMM where it
        is faster, and it serves any batch (default); else it stops there."""
        cfg, layers = self.cfg, self.w.layers
        if self.kernel is None or not cpu_kernel.decode_fits(cfg.head_dim):
            return None
        tensors = self._layer_tensors()
        if tensors is None:
            return None
        bf16 = cpu_kernel.bf16_decode(cfg.head_dim)  # its attention, over a bf16 pool
        wide = cpu_kernel.q8_wide()  # its projections from 2 sequences (AVX512-VNNI)
        w = layers[0].qkv
        gemm = w.gemm if isinstance(w, Int8Weight) else None  # where every layer is packed
        # the GEMM takes over past where int8 rows on q8_linear_vnni stay faster, or without
        # it where linear() would hand the rows to the GEMM (see quant)
        gemm_rows = cpu_kernel.DECODE_MAX_BATCH + 1
        if wide is None and isinstance(w, Int8Weight) and gemm is not None:
            gemm_rows = w.full_min_rows
        return cpu_kernel.DecodeOne(
            self.kernel, tensors, self._shape, cfg.rms_norm_eps, self.rope, bf16, max_batch,
            wide, gemm, gemm_rows,
        )  # fmt: skip

    def _bind_prefill_layers(self) -> cpu_kernel.PrefillLayers | None:
        """The layer loop in one C call (bf16 GEMMs, see forward), where prefill's
        projections run on the bf16 library's GEMM, every layer has its packed weights and
        attention runs on the C kernels; else None."""
        if self.kernel is None or self._bf16 is None:
            return None
        if not cpu_kernel.prefill_fits(self.cfg.head_dim):
            return None
        tensors = self._layer_tensors()
        if tensors is None or any(t.packed is None for t in tensors):
            return None
        return cpu_kernel.PrefillLayers(
            self._bf16, self.kernel, tensors, self._shape, self.cfg.rms_norm_eps, self.rope
        )

    @property
    def _shape(self) -> tuple[int, ...]:
        cfg = self.cfg
        return (
            cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
            cfg.head_dim,
        )  # fmt: skip

    def _layer_tensors(self) -> list[cpu_kernel.LayerTensors] | None:
        """Each layer's tensors as the C layer loops read them, or None where a projection
        is not int8 for the C kernel (or a bias is not float32)."""
        layers, tensors = self.w.layers, []
        for i, lw in enumerate(layers):
            ws = [_kernel_weight(w) for w in (lw.qkv, lw.o, lw.gate_up, lw.down)]
            bias = lw.qkv_bias
            if None in ws or (bias is not None and bias.dtype != torch.float32):
                return None
            qkv, o, gate_up, down = (w for w in ws if w is not None)
            nxt = layers[i + 1].attn_norm if i + 1 < len(layers) else self.w.norm
            packed = _gemm_weights(lw)
            tensors.append(
                cpu_kernel.LayerTensors(qkv, o, gate_up, down, bias, lw.mlp_norm, nxt, packed)
            )
        return tensors

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        kv: KVCache,
        meta: AttnMeta | Parts,
        keep: Tensor | None = None,
    ) -> Tensor:
        """input_ids, positions: [B, T] int64 -> final hidden states [B, T, hidden]. With
        ``Parts``, B is 1 and the T tokens are the parts' (see :func:`kv_cache.attend`).
        With ``keep`` (int64, ascending, indices of the B * T rows), only those rows' states
        are wanted: [len(keep), hidden]; the one-call layer loop then skips the others past
        the last layer's K/V (the same values for the rows it keeps)."""
        cfg, layers = self.cfg, self.w.layers
        H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        B, T = input_ids.shape
        x = F.embedding(input_ids, self.w.embed)  # [B, T, hidden], the residual stream
        one = self._decode_one
        fused = T == 1 and one is not None and one.max_batch >= B
        if fused and isinstance(meta, AttnMeta) and meta.tables is not None:
            assert one is not None and meta.lens is not None  # the runner's decode
            h = self._add_norm(x, None, layers[0].attn_norm)
            one(x, h, kv.kv, positions, meta.slots, meta.tables, meta.lens)  # all layers, one call
            return h if keep is None else h.flatten(0, 1)[keep]
        # Where every projection runs as a bf16 GEMM (many rows, float32 model, int8 weights
        # with bf16 copies, AVX512-BF16), what a GEMM reads or returns stays bf16: the norms
        # and SwiGLU read and write it in one C call each, instead of torch's casts (9 a
        # layer), silu and mul. Rounding is the same: the GEMMs round their inputs anyway.
        bf = self._bf16 is not None and self._bf16_rows <= B * T
        gemm = torch.bfloat16 if bf else None  # the dtype the GEMMs return
        h = self._add_norm(x, None, layers[0].attn_norm, bf)
        parts = kernel_parts(meta, B, T) if bf and self._prefill_layers is not None else None
        if parts is not None:  # the loop below in one C call, where its kernels serve
            assert self._prefill_layers is not None
            slots = step_slots(meta)
            return self._prefill_layers(x, h, kv.kv, positions, slots, parts, keep)
        for i, lw in enumerate(layers):
            qkv = linear(h, lw.qkv, lw.qkv_bias, x.dtype).view(B, T, H + 2 * Hkv, D)
            self._rope_(qkv, H + Hkv, positions)  # q and k heads together
            kv_new = qkv[:, :, H:].view(B, T, 2, Hkv, D)  # k heads then v heads
            attn = attend(qkv[:, :, :H], kv_new, kv.kv[i], meta)  # [B, T, H D]
            h = self._add_norm(x, linear(attn, lw.o, None, gemm), lw.mlp_norm, bf)
            act = self._swiglu(linear(h, lw.gate_up, None, gemm))  # [B, T, inter]
            last = i + 1 == len(layers)
            nxt = self.w.norm if last else layers[i + 1].attn_norm
            h = self._add_norm(x, linear(act, lw.down, None, gemm), nxt, bf and not last)
        return h if keep is None else h.flatten(0, 1)[keep]

    def _swiglu(self, gate_up: Tensor) -> Tensor:
        """silu(gate) * up of [..., 2 * inter]; a bf16 GEMM's output stays bf16."""
        if gate_up.dtype == torch.bfloat16 and self._bf16 is not None:
            return cpu_kernel.silu_mul(self._bf16, gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def _add_norm(self, x: Tensor, r: Tensor | None, w: Tensor, bf16: bool = False) -> Tensor:
        """x += r in place (when given), then RMSNorm(x) * w. x, r: [B, T, hidden]. On the bf16
        GEMM path, r is bf16 (a GEMM's output), and with ``bf16`` so is the result."""
        if self._bf16 is not None and (bf16 or (r is not None and r.dtype == torch.bfloat16)):
            return cpu_kernel.add_norm(self._bf16, x, r, w, self.cfg.rms_norm_eps, bf16)
        if self.kernel is not None:
            r = None if r is None else r.contiguous()
            return cpu_kernel.rms_norm(self.kernel, x, r, w, self.cfg.rms_norm_eps)
        if r is not None:
            x.add_(r)
        return F.rms_norm(x, (x.shape[-1],), w, self.cfg.rms_norm_eps)

    def _rope_(self, qkv: Tensor, heads: int, positions: Tensor) -> None:
        """In place on heads [0, heads) of qkv: [B, T, n_heads, D]; positions: [B, T]."""
        B, T, n, D = qkv.shape
        if self.kernel is not None and qkv.is_contiguous():
            cpu_kernel.rope_(self.kernel, qkv.view(B * T, n, D), heads, self.rope,
                             positions.reshape(-1).contiguous())  # fmt: skip
            return
        cos, sin = self.rope[:, positions].unsqueeze(3)  # each [B, T, 1, D]
        apply_rope_(qkv[:, :, :heads], cos, sin)

    def logits(self, hidden: Tensor) -> Tensor:
        """hidden: [N, hidden] -> logits [N, vocab] in float32."""
        return linear(hidden, self.w.lm_head).float()
