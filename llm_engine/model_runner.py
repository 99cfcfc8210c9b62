"""Turns a scheduled batch into tensors, runs the model, returns the logits to sample from.

The only place where token lists become tensors. A step is one forward: its decodes (one new
token per sequence, a ``[B, 1]`` part) and its prefill chunks (a ``[1, n]`` part each) flattened
to one row of tokens, so every projection is one matmul over all of them; attention runs per
part (:func:`kv_cache.attend`). A step of decodes alone stays ``[B, 1]``, which the fused C
decode takes. A fresh prefill with no earlier context attends causally to itself; a chunk with
context reads it from the pool. A sequence verifying ``k`` drafted tokens is a prefill chunk
of ``k + 1`` tokens whose every position's logits are wanted (``all_logits``). The forward
is told which rows' final states the step reads (a turn's last token, the decodes, scored
rows), so that past the last layer's K/V it may skip the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from llm_engine import cpu_kernel
from llm_engine.kv_cache import AttnMeta, KVCache
from llm_engine.model import Transformer
from llm_engine.scheduler import ScheduledBatch, Sequence


@dataclass(slots=True)
class StepOutput:
    """``logits[i]`` ([vocab], float32) is the next-token distribution of ``seqs[i]``.
    ``scored`` holds the final hidden states of the positions that scoring sequences keep
    (``Sequence.logits_from``): (sequence, first position, hidden ``[n, hidden]``)."""

    seqs: list[Sequence]
    logits: Tensor | None  # [len(seqs), vocab]
    scored: list[tuple[Sequence, int, Tensor]] = field(default_factory=list)


class ModelRunner:
    """Runs the model for scheduled batches. Engine thread only."""

    def __init__(self, model: Transformer, kv: KVCache, device: str, compile: bool = False) -> None:
        self.model = model
        self.kv = kv
        self.device = torch.device(device)
        self.block_size = kv.block_size
        self._offsets = torch.arange(kv.block_size, device=self.device)
        self._forward: Callable[..., Tensor] = model.forward
        # the kernels take float32 activations over a float32 or bfloat16 pool
        on_cpu_fp32 = self.device.type == "cpu" and model.w.embed.dtype == torch.float32
        on_cpu_fp32 = on_cpu_fp32 and kv.kv.dtype in cpu_kernel.KV_DTYPES
        fits = on_cpu_fp32 and cpu_kernel.decode_fits(kv.kv.shape[-1])
        self._attn_kernel = (
            cpu_kernel.decode_attention(kv.kv.dtype, kv.kv.shape[-1]) if fits else None
        )
        # prefill attention in bf16 only where the projections already prefill in bf16
        bf16 = on_cpu_fp32 and model.prefill_dtype == torch.bfloat16
        bf16 = bf16 and cpu_kernel.prefill_fits(kv.kv.shape[-1])
        self._prefill_kernel = cpu_kernel.load_bf16() if bf16 else None
        if compile:
            self._forward = _compiled_or_eager(model.forward)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepOutput:
        """One forward for the whole step: the decodes and every prefill chunk share each
        projection (one matmul of all their rows), attention runs per part."""
        self.kv.copy_blocks(batch.copies)
        parts = [self._decode_inputs(batch.decodes)] if batch.decodes else []
        parts += [self._prefill_inputs(seq, seq.num_cached, n) for seq, n in batch.prefills]
        seqs, rows = list(batch.decodes), list(range(len(batch.decodes)))
        kept: list[tuple[Sequence, int, int, int]] = []  # (seq, first position, rows start, end)
        end = len(batch.decodes)
        for seq, n in batch.prefills:  # a chunk that completes a generating turn: its last row
            start, end = seq.num_cached, end + n
            if seq.generating and start + n == len(seq.tokens):
                seqs.append(seq)
                rows.append(end - 1)
            if seq.logits_from is not None and seq.logits_from < start + n:
                first = max(start, seq.logits_from)
                kept.append((seq, first, end - n + first - start, end))
        if not parts:
            return StepOutput([], None)
        # the rows whose final states are read: the forward may skip the others' last layer
        wanted = sorted({*rows, *(r for _, _, lo, hi in kept for r in range(lo, hi))})
        keep = None if len(wanted) == end else self._tensor(wanted)
        if keep is not None:  # rows renumbered among those kept
            at = {r: i for i, r in enumerate(wanted)}
            rows = [at[r] for r in rows]
            kept = [(seq, first, at[lo], at[lo] + hi - lo) for seq, first, lo, hi in kept]
        if len(parts) == 1:
            ids, pos, meta = parts[0]
            hidden = self._forward(ids, pos, self.kv, meta, keep)
        else:
            ids = torch.cat([p[0].view(-1) for p in parts]).view(1, -1)
            pos = torch.cat([p[1].view(-1) for p in parts]).view(1, -1)
            metas = [(*p[0].shape, p[2]) for p in parts]
            hidden = self._forward(ids, pos, self.kv, metas, keep)
        hidden = hidden.flatten(0, -2)  # [rows, hidden]
        scored = [(seq, first, hidden[lo:hi]) for seq, first, lo, hi in kept]
        if not seqs:
            return StepOutput([], None, scored)
        return StepOutput(seqs, self.model.logits(hidden[rows]), scored)

    def _tensor(self, data: list[int] | list[list[int]]) -> Tensor:
        return torch.tensor(data, dtype=torch.int64, device=self.device)

    def _slot(self, table: list[int], pos: int) -> int:
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def _tables(self, tables: list[list[int]], ctx_len: int) -> Tensor:
        """The blocks holding positions [0, ctx_len) of each table, zero-padded: [B, nb]."""
        nb = -(-ctx_len // self.block_size)
        return self._tensor([t[:nb] + [0] * (nb - len(t[:nb])) for t in tables])

    def _ctx_slots(self, tables: list[list[int]], ctx_len: int) -> Tensor:
        """Pool slots of positions [0, ctx_len) of each table: [B * ctx_len]."""
        bt = self._tables(tables, ctx_len)  # [B, nb]
        slots = (bt[:, :, None] * self.block_size + self._offsets).view(len(tables), -1)
        return slots[:, :ctx_len].reshape(-1)

    def _decode_inputs(self, seqs: list[Sequence]) -> tuple[Tensor, Tensor, AttnMeta]:
        """ids, positions [B, 1] and attention inputs of one new token per sequence."""
        B = len(seqs)
        pos = [s.num_cached for s in seqs]
        ids = self._tensor([[s.tokens[p]] for s, p in zip(seqs, pos, strict=True)])  # [B, 1]
        slots = self._tensor([self._slot(s.block_table, p) for s, p in zip(seqs, pos, strict=True)])
        ctx_len = max(pos) + 1
        lens = self._tensor([p + 1 for p in pos])
        positions = self._tensor(pos).view(B, 1)
        if self._attn_kernel is not None:  # reads the pool through the block tables
            tables = self._tables([s.block_table for s in seqs], ctx_len)
            meta = AttnMeta(slots, None, None, ctx_len, self._attn_kernel, tables, lens)
            return ids, positions, meta
        mask = None
        if B > 1:
            arange = torch.arange(ctx_len, device=self.device)
            mask = (arange[None, :] < lens[:, None]).view(B, 1, 1, ctx_len)
        meta = AttnMeta(
            slots=slots,
            ctx_slots=self._ctx_slots([s.block_table for s in seqs], ctx_len),
            mask=mask,
            ctx_len=ctx_len,
        )
        return ids, positions, meta

    def forward_tokens(self, seq: Sequence, start: int, n: int) -> Tensor:
        """Compute tokens [start, start + n) of ``seq`` into the pool -> hidden [n, hidden].

        The block table must already cover them (the scheduler grew it).
        """
        ids, pos, meta = self._prefill_inputs(seq, start, n)
        return self._forward(ids, pos, self.kv, meta)[0]

    def _prefill_inputs(self, seq: Sequence, start: int, n: int) -> tuple[Tensor, Tensor, AttnMeta]:
        """ids, positions [1, n] and attention inputs of tokens [start, start + n) of ``seq``."""
        table = seq.block_table
        positions = list(range(start, start + n))
        slots = self._tensor([self._slot(table, p) for p in positions])
        ids, pos = self._tensor([seq.tokens[start : start + n]]), self._tensor([positions])
        if self._prefill_kernel is not None:  # reads the pool through the block table
            tables, lens = self._tables([table], start + n), self._tensor([start + n])
            kernel = self._prefill_kernel
            meta = AttnMeta(slots, None, None, start + n, tables=tables, lens=lens, prefill=kernel)
            return ids, pos, meta
        ctx_slots, mask = None, None
        if start > 0:
            ctx_len = start + n
            ctx_slots = self._ctx_slots([table], ctx_len)
            q_pos = torch.arange(start, ctx_len, device=self.device)
            k_pos = torch.arange(ctx_len, device=self.device)
            mask = (k_pos[None, :] <= q_pos[:, None]).view(1, 1, n, ctx_len)
        return ids, pos, AttnMeta(slots=slots, ctx_slots=ctx_slots, mask=mask, ctx_len=start + n)

    @torch.inference_mode()
    def all_logits(self, seq: Sequence, start: int, n: int) -> Tensor:
        """Logits of every computed position: [n, vocab] (for verification and tests)."""
        return self.model.logits(self.forward_tokens(seq, start, n))


def _compiled_or_eager(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``torch.compile(fn)``; if compiling or a compiled call fails, use eager from then on."""
    compiled = torch.compile(fn, dynamic=True)
    state = {"ok": True}

    def call(*args: object) -> Tensor:
        if state["ok"]:
            try:
                return compiled(*args)
            except Exception as err:  # compiler missing, unsupported op ...
                logging.getLogger(__name__).warning("torch.compile failed, using eager: %s", err)
                state["ok"] = False
        return fn(*args)

    return call
