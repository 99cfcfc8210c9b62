"""Next-token selection: greedy, temperature, top-k, top-p, repetition penalty, per-request seed.

Math per row, in order (as HF transformers' logits processors):
  repetition penalty: l[t] = l[t] / p if l[t] > 0 else l[t] * p, for every t already in the sequence
  temperature:        l = l / T
  top-k:              keep the k largest
  top-p:              keep the smallest set of most likely tokens whose probability reaches p
  sample:             t ~ softmax(l)  (argmax when greedy)
"""

from __future__ import annotations

import torch
from torch import Tensor

from llm_engine.config import SamplingParams


def make_generator(params: SamplingParams) -> torch.Generator | None:
    if params.greedy:
        return None
    g = torch.Generator()
    g.manual_seed(params.seed if params.seed is not None else int(torch.seed() % (2**63)))
    return g


def apply_repetition_penalty(logits: Tensor, seen: list[int], penalty: float) -> Tensor:
    """logits: [V]; seen: token ids already in the sequence."""
    if penalty == 1.0 or not seen:
        return logits
    idx = torch.tensor(sorted(set(seen)), dtype=torch.int64, device=logits.device)
    picked = logits.index_select(0, idx)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.index_copy(0, idx, picked)


def filter_top_k_top_p(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """logits: [V] -> [V] with the filtered-out entries at -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already >= p
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def sample_row(
    logits: Tensor, params: SamplingParams, seen: list[int], gen: torch.Generator | None
) -> int:
    """logits: [V] float32 -> the next token id."""
    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return int(logits.argmax())
    logits = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def sample(
    logits: Tensor,
    params: list[SamplingParams],
    seen: list[list[int]],
    gens: list[torch.Generator | None],
) -> list[int]:
    """logits: [N, V] float32 -> one token per row. Plain greedy rows share one argmax."""
    plain = [p.greedy and p.repetition_penalty == 1.0 for p in params]
    fast = logits.argmax(-1).tolist() if any(plain) else []
    return [
        int(fast[i]) if plain[i] else sample_row(logits[i], params[i], seen[i], gens[i])
        for i in range(len(params))
    ]
