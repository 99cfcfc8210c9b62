"""The paged KV pool and paged attention over it.

The pool holds, per layer, ``num_blocks`` blocks of ``block_size`` token slots each, K and V
side by side: ``kv[layer]: [num_blocks, block_size, 2, n_kv_heads, head_dim]``. A token at
position ``p`` of a sequence lives in slot ``block_table[p // block_size] * block_size +
p % block_size`` of the flattened pool. Which block belongs to whom is decided by the
torch-free :mod:`llm_engine.block_manager`; this module only stores and reads.

Paged attention is gather-based: each step the runner turns the block tables into one flat
index of context slots ``[B * S]``; every layer scatters its new K/V into the pool, gathers the
``S`` context rows of each sequence with one ``index_select`` and runs SDPA with a mask.
Decode steps on CPU in float32 skip the gather, the padding to the longest context and the
mask: a C kernel (:mod:`llm_engine.cpu_kernel`) walks each sequence's block table in the pool.
So do prefill chunks where the model prefills in bfloat16 on a CPU with AVX512-BF16.

The pool's dtype may be narrower than the activations' (a bfloat16 pool under float32
activations, the CPU default with int8 weights): new K/V are rounded as they are stored, and
every path attends to them as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_engine import cpu_kernel, hugepages


@dataclass(slots=True)
class AttnMeta:
    """Per-step attention inputs, built once per forward by the model runner.

    ``slots``: ``[B*T]`` int64, pool slot of each new token (written before attending).
    ``ctx_slots``: ``[B*S]`` int64, pool slots of each sequence's ``S`` context tokens (new ones
    included), or ``None`` when the batch has no earlier context (attend to the new tokens only,
    causally). ``mask``: ``[B, 1, T, S]`` bool (True = attend) or ``None`` when every query
    sees all ``S`` keys.

    A decode (``T == 1``) with ``kernel`` set skips the gather: :func:`cpu_kernel.paged_decode`
    reads the pool through ``tables`` (``[B, nb]`` int64 block tables, zero-padded) and
    ``lens`` (``[B]`` int64 context lengths, the new token included). A prefill chunk of one
    sequence with ``prefill`` set skips it too: :func:`cpu_kernel.prefill_attention` (bf16
    products) reads its ``ctx_len`` positions through ``tables`` (``[1, nb]``).
    """

    slots: Tensor
    ctx_slots: Tensor | None
    mask: Tensor | None
    ctx_len: int
    kernel: Any = None
    tables: Tensor | None = None
    lens: Tensor | None = None
    prefill: Any = None


class KVCache:
    """Preallocated K/V pool for every layer: ``kv: [L, num_blocks, block_size, 2, Hkv, D]``."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (num_layers, num_blocks, block_size, 2, num_kv_heads, head_dim)
        if torch.device(device).type == "cpu":  # attention reads its blocks scattered
            self.kv = hugepages.zeros(shape, dtype)
        else:
            self.kv = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks ``src -> dst`` in every layer (copy-on-write of shared blocks)."""
        if not pairs:
            return
        src = torch.tensor([s for s, _ in pairs], device=self.kv.device)
        dst = torch.tensor([d for _, d in pairs], device=self.kv.device)
        self.kv[:, dst] = self.kv[:, src]


# A step's batch flattened to one row of N tokens: consecutive parts, each B sequences of T
# tokens (the decodes, one prefill chunk) with its own attention inputs.
Parts = list[tuple[int, int, AttnMeta]]


def kernel_parts(meta: AttnMeta | Parts, B: int, T: int) -> list[cpu_kernel.StepPart] | None:
    """A ``[B, T]`` step's parts as the C layer loop attends them
    (:class:`cpu_kernel.PrefillLayers`), or None where one of them needs another path: decodes
    on the C kernel, prefill chunks on :func:`cpu_kernel.prefill_attention`."""
    parts = [(B, T, meta)] if isinstance(meta, AttnMeta) else meta
    out = []
    for b, t, m in parts:
        if m.prefill is not None and b == 1 and m.tables is not None:
            out.append(cpu_kernel.StepPart(t, m.tables[0], start=m.ctx_len - t))
        elif m.kernel is not None and t == 1 and m.tables is not None and m.lens is not None:
            out.append(cpu_kernel.StepPart(b, m.tables, decode=m.kernel, lens=m.lens))
        else:
            return None
    return out


def step_slots(meta: AttnMeta | Parts) -> Tensor:
    """The pool slots of a step's new tokens, every part's in order."""
    if isinstance(meta, AttnMeta):
        return meta.slots
    return torch.cat([m.slots for _, _, m in meta])


def attend(q: Tensor, kv: Tensor, pool: Tensor, meta: AttnMeta | Parts) -> Tensor:
    """:func:`paged_attention` of one ``[B, T]`` batch, or of each part of a flattened one
    (q: [1, N, H, D], kv: [1, N, 2, Hkv, D] -> [1, N, H * D]): the projections run once for
    every token of the step, attention per part."""
    if isinstance(meta, AttnMeta):
        return paged_attention(q, kv, pool, meta)
    out, row = [], 0
    for B, T, part in meta:
        n = B * T
        qp = q[0, row : row + n].view(B, T, *q.shape[2:])
        kvp = kv[0, row : row + n].view(B, T, *kv.shape[2:])
        out.append(paged_attention(qp, kvp, pool, part).view(1, n, -1))
        row += n
    return torch.cat(out, dim=1)


def paged_attention(q: Tensor, kv: Tensor, pool: Tensor, meta: AttnMeta) -> Tensor:
    """Store the new K/V in the pool, attend over each sequence's context.

    q: [B, T, H, D]; kv: [B, T, 2, Hkv, D] (new keys and values);
    pool: [num_blocks, block_size, 2, Hkv, D] (one layer). Returns [B, T, H * D].
    """
    B, T, H, D = q.shape
    Hkv = kv.shape[3]
    flat = pool.view(-1, 2 * Hkv * D)  # [num_slots, 2 Hkv D]
    stored = kv.reshape(B * T, 2 * Hkv * D).to(pool.dtype)  # rounded to the pool's dtype
    flat.index_copy_(0, meta.slots, stored)
    if meta.kernel is not None and T == 1:
        assert meta.tables is not None and meta.lens is not None
        return cpu_kernel.paged_decode(meta.kernel, q, pool, meta.tables, meta.lens, pool.shape[1])
    if meta.prefill is not None:
        assert meta.tables is not None and B == 1
        start, table = meta.ctx_len - T, meta.tables[0]
        return cpu_kernel.prefill_attention(meta.prefill, q, pool, table, start, pool.shape[1])
    if meta.ctx_slots is None:  # a fresh prefill sees only itself, as stored
        kv = stored.view(B, T, 2, Hkv, D).to(q.dtype)
        keys, values, causal = kv[:, :, 0], kv[:, :, 1], T > 1  # [B, T, Hkv, D] each
    else:
        S = meta.ctx_len
        ctx = flat.index_select(0, meta.ctx_slots).view(B, S, 2, Hkv, D).to(q.dtype)
        keys, values, causal = ctx[:, :, 0], ctx[:, :, 1], False  # [B, S, Hkv, D] each
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),  # [B, H, T, D]
        keys.transpose(1, 2),  # [B, Hkv, S, D]
        values.transpose(1, 2),
        attn_mask=meta.mask,
        is_causal=causal,
        enable_gqa=Hkv != H,
    )  # [B, H, T, D]
    return out.transpose(1, 2).reshape(B, T, H * D)
