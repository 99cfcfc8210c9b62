"""Next-token selection: greedy, temperature, top-k, top-p, repetition penalty, per-request seed.

Math per row, in order (as HF transformers' logits processors, then OpenAI's penalties as vLLM
orders them):
  repetition penalty: l[t] = l[t] / p if l[t] > 0 else l[t] * p, for every t already in the sequence
  frequency, presence: l[t] -= f * c[t] + p * (c[t] > 0), c[t]: uses of t in the reply so far
  logit bias:         l[t] += b[t]
  temperature:        l = l / T
  top-k:              keep the k largest (and any tied with the k-th)
  top-p:              keep the smallest set of most likely tokens whose probability reaches p
  sample:             t ~ softmax(l)  (argmax when greedy)

A row costs what its filter needs, not a sort of the vocabulary: top-p looks at the top 64
logits first and widens only while they hold less than p of the mass, and the draw is one
uniform number against the candidates' cumulative probabilities. (A full sort for top-p and
``torch.multinomial`` took 3.9 and 0.8 ms a row over SmolLM2's 49,152 tokens, as long as a whole
decode step; see ``bench/llm.py``'s sampling figures.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from llm_engine.config import SamplingParams

# the logits top-p looks at, widening while they hold less than p of the mass, then all of them.
# SmolLM2's nuclei over 200 sampled tokens of a story, temperature 1: median 15 tokens at p 0.9
# (90th percentile 210), 39 at p 0.95 (508, largest 1,002); at temperature 0.7 under 200
TOP_P_WIDTHS = (64, 1024)
REJECTIONS = 64  # draws of a restricted row before it takes the most likely allowed token


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


def apply_openai_penalties(
    logits: Tensor, generated: list[int], frequency: float, presence: float
) -> Tensor:
    """logits: [V]; generated: the tokens of this reply so far (OpenAI's penalties count the
    completion, not the prompt)."""
    if (frequency == 0.0 and presence == 0.0) or not generated:
        return logits
    ids, counts = torch.tensor(generated, dtype=torch.int64).unique(return_counts=True)
    penalty = counts.to(logits.dtype) * frequency + presence
    return logits.index_add(0, ids.to(logits.device), -penalty.to(logits.device))


def apply_logit_bias(logits: Tensor, bias: dict[int, float]) -> Tensor:
    """logits: [V]; bias: token id -> what to add to its logit."""
    if not bias:
        return logits
    ids = torch.tensor(list(bias), dtype=torch.int64, device=logits.device)
    values = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    return logits.index_add(0, ids, values)


def token_logprobs(
    logits: Tensor, tokens: list[int], counts: list[int]
) -> list[tuple[float, list[tuple[int, float]]]]:
    """logits: [N, V] -> per row, the log-probability of ``tokens[row]`` under softmax(logits)
    and the ``counts[row]`` most likely tokens with theirs, descending."""
    logp = torch.log_softmax(logits.float(), -1)
    picked = torch.tensor(tokens, dtype=torch.int64, device=logp.device).unsqueeze(1)
    chosen = logp.gather(1, picked)[:, 0].tolist()
    values, ids = logp.topk(max(counts), -1)
    return [
        (c, list(zip(i[:k], v[:k], strict=True)))
        for c, i, v, k in zip(chosen, ids.tolist(), values.tolist(), counts, strict=True)
    ]


def _top_k(scaled: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest of scaled [V] and every token tied with the k-th: (values, ids), values
    descending."""
    values, ids = torch.topk(scaled, k)
    if int((scaled >= values[-1]).sum()) > k:  # ties at the k-th are kept too
        ids = torch.nonzero(scaled >= values[-1]).squeeze(1)
        values, order = scaled[ids].sort(descending=True)
        ids = ids[order]
    return values, ids


def _nucleus(probs: Tensor, top_p: float) -> int:
    """How many of probs (descending) top-p keeps: those with less than p of mass before them."""
    before = probs.cumsum(0) - probs
    return int((before < top_p).sum())


def candidates(logits: Tensor, params: SamplingParams) -> tuple[Tensor | None, Tensor]:
    """What a non-greedy row samples from, after temperature, top-k and top-p: (token ids, or
    None for the whole vocabulary in order; their float64 probabilities, summing to 1).
    logits: [V], the repetition penalty already applied."""
    scaled = logits.detach().float().cpu() / params.temperature  # [V]
    V, top_p = scaled.shape[0], params.top_p
    if 0 < params.top_k < V:
        values, ids = _top_k(scaled, params.top_k)
        probs = values.double().softmax(0)
    elif top_p < 1.0:
        lse = torch.logsumexp(scaled.double(), 0)
        for k in (*(w for w in TOP_P_WIDTHS if w < V), V):
            values, ids = torch.topk(scaled, k)  # [k] descending
            probs = (values.double() - lse).exp()
            if float(probs.sum()) >= top_p:  # the nucleus ends among these k
                break
    else:
        return None, scaled.double().softmax(0)
    if top_p < 1.0:
        keep = _nucleus(probs, top_p)
        ids, probs = ids[:keep], probs[:keep]
    return ids, probs / probs.sum()


def draw(probs: Tensor, gen: torch.Generator | None) -> int:
    """An index i of probs [N] (float64, summing to ~1) with probability probs[i]: one uniform
    number against the cumulative sums. An index of zero probability is never drawn."""
    cum = probs.cumsum(0)
    u = torch.rand((), dtype=torch.float64, generator=gen) * cum[-1]
    return min(int(torch.searchsorted(cum, u, right=True)), probs.shape[0] - 1)


def _processed(logits: Tensor, params: SamplingParams, seen: list[int], n_generated: int) -> Tensor:
    """The penalties and the bias applied to logits [V] (see :func:`sample_row`)."""
    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    reply = seen[len(seen) - n_generated :] if n_generated else []
    logits = apply_openai_penalties(
        logits, reply, params.frequency_penalty, params.presence_penalty
    )
    return apply_logit_bias(logits, params.logit_bias)


def sample_row(
    logits: Tensor,
    params: SamplingParams,
    seen: list[int],
    gen: torch.Generator | None,
    n_generated: int = 0,
) -> int:
    """logits: [V] float32 -> the next token id. seen: the sequence so far (needed when
    ``params.penalized``), whose last ``n_generated`` tokens are this reply's."""
    logits = _processed(logits, params, seen, n_generated)
    if params.greedy:
        return int(logits.argmax())
    ids, probs = candidates(logits, params)
    i = draw(probs, gen)
    return i if ids is None else int(ids[i])


def best_allowed(logits: Tensor, allowed: Callable[[int], bool]) -> int:
    """The most likely token of logits [V] that ``allowed`` accepts: the top 64 are asked
    first, then more only while none is."""
    V, asked = logits.shape[0], 0
    for k in (*(w for w in TOP_P_WIDTHS if w < V), V):
        ids = torch.topk(logits, k).indices.tolist()
        for t in ids[asked:]:
            if allowed(t):
                return int(t)
        asked = k
    raise ValueError("no token of the vocabulary is allowed")


def sample_allowed_row(
    logits: Tensor,
    params: SamplingParams,
    seen: list[int],
    gen: torch.Generator | None,
    n_generated: int,
    allowed: Callable[[int], bool],
) -> int:
    """:func:`sample_row` restricted to the tokens ``allowed`` accepts (JSON mode). Sampled
    rows draw from the filtered distribution by rejection: a drawn token that is not allowed
    gets probability 0 and the draw is repeated; after ``REJECTIONS`` of them, the most
    likely allowed token is taken."""
    logits = _processed(logits, params, seen, n_generated)
    if not params.greedy:
        ids, probs = candidates(logits, params)
        probs = probs.clone()
        for _ in range(REJECTIONS):
            i = draw(probs, gen)
            token = i if ids is None else int(ids[i])
            if probs[i] > 0 and allowed(token):
                return token
            probs[i] = 0.0
            if not float(probs.sum()) > 0:
                break
    return best_allowed(logits, allowed)


def sample(
    logits: Tensor,
    params: list[SamplingParams],
    seen: list[list[int]],
    gens: list[torch.Generator | None],
    n_generated: list[int] | None = None,
    allowed: Sequence[Callable[[int], bool] | None] = (),
) -> list[int]:
    """logits: [N, V] float32 -> one token per row (see :func:`sample_row`), restricted where
    ``allowed[row]`` is given (:func:`sample_allowed_row`). Plain greedy rows share one
    argmax."""
    plain = [p.plain_greedy for p in params]
    fast = logits.argmax(-1).tolist() if any(plain) else []
    done = n_generated or [0] * len(params)
    out = []
    for i, p in enumerate(params):
        only = allowed[i] if allowed else None
        if only is not None:
            out.append(sample_allowed_row(logits[i], p, seen[i], gens[i], done[i], only))
        elif plain[i]:
            out.append(int(fast[i]))
        else:
            out.append(sample_row(logits[i], p, seen[i], gens[i], done[i]))
    return out
