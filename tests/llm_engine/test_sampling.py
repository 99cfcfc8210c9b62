"""Sampling (llm_engine.sampling) against HF transformers' logits processors, and its draw
against the distribution it draws from. Pure functions over tensors: no engine."""

from __future__ import annotations

import pytest
import torch

from llm_engine.config import SamplingParams
from llm_engine.errors import InvalidRequest
from llm_engine.sampling import (
    apply_logit_bias,
    apply_openai_penalties,
    apply_repetition_penalty,
    candidates,
    draw,
    make_generator,
    sample,
    sample_row,
    token_logprobs,
)

V = 49152  # SmolLM2's vocabulary: top-p's widening runs through all its stages


def _logits(kind: str, seed: int) -> torch.Tensor:
    """[V] logits: peaked like a language model's, or so flat that top-p keeps thousands."""
    g = torch.Generator().manual_seed(seed)
    if kind == "flat":
        return torch.randn(V, generator=g) * 0.5
    base = torch.randn(V, generator=g) * 2.0
    top = torch.randperm(V, generator=g)[:40]
    return base.index_add(0, top, torch.linspace(12.0, 4.0, 40))


def _hf(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """HF's distribution: its temperature, top-k and top-p warpers in generate()'s order."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores, ids = logits[None].clone(), torch.zeros(1, 1, dtype=torch.long)
    scores = TemperatureLogitsWarper(p.temperature)(ids, scores)
    if p.top_k:
        scores = TopKLogitsWarper(p.top_k)(ids, scores)
    if p.top_p < 1.0:
        scores = TopPLogitsWarper(p.top_p)(ids, scores)
    return scores[0].double().softmax(0)


def _ours(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    ids, probs = candidates(logits, p)
    return probs if ids is None else torch.zeros(V, dtype=torch.float64).index_copy(0, ids, probs)


@pytest.mark.parametrize("kind", ["peaked", "flat"])
@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 1.0), (0.7, 0, 0.9), (1.0, 0, 0.95), (1.3, 0, 0.5), (1.0, 50, 1.0),
     (0.8, 50, 0.9), (1.0, 5000, 0.99), (1.0, 3, 1.0)],
)  # fmt: skip
def test_distribution_equals_hf_warpers(kind: str, temperature: float, top_k: int, top_p: float):
    for seed in range(3):
        logits = _logits(kind, seed)
        p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
        ours, hf = _ours(logits, p), _hf(logits, p)
        assert torch.equal(ours > 0, hf > 0), "a different set of candidates"
        torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-9)


def test_top_p_widens_until_the_nucleus_fits() -> None:
    """Nuclei inside the first 64 logits, inside 1,024, and past both (the whole vocabulary)."""
    g = torch.Generator().manual_seed(7)
    plateau = torch.full((V,), -5.0).index_fill(0, torch.randperm(V, generator=g)[:300], 5.0)
    plateau += torch.rand(V, generator=g) * 0.01  # ~300 likely tokens: a nucleus of ~270
    sizes = []
    for logits, top_p in ((_logits("peaked", 7), 0.5), (plateau, 0.9), (_logits("flat", 7), 0.9)):
        p = SamplingParams(temperature=1.0, top_p=top_p)
        ours, hf = _ours(logits, p), _hf(logits, p)
        assert torch.equal(ours > 0, hf > 0)
        sizes.append(int((ours > 0).sum()))
    assert sizes[0] <= 64 < sizes[1] <= 1024 < sizes[2]


def test_top_k_keeps_ties_with_the_kth() -> None:
    logits = torch.tensor([5.0, 3.0, 3.0, 3.0, 1.0, 0.0] + [-9.0] * 10)
    ids, probs = candidates(logits, SamplingParams(temperature=1.0, top_k=2))
    assert ids is not None and sorted(ids.tolist()) == [0, 1, 2, 3]
    assert float(probs.sum()) == pytest.approx(1.0)


def test_draw_follows_the_distribution_and_never_a_zero() -> None:
    probs = torch.tensor([0.5, 0.0, 0.25, 0.125, 0.0, 0.125], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    n = 40_000
    counts = torch.bincount(torch.tensor([draw(probs, gen) for _ in range(n)]), minlength=6)
    assert counts[1] == 0 and counts[4] == 0
    expected = probs * n
    sigma = (expected * (1 - probs)).sqrt()
    assert bool(((counts - expected).abs() <= 5 * sigma + 1e-9).all()), counts.tolist()


def test_draw_repeats_with_the_seed() -> None:
    probs = torch.rand(1000, dtype=torch.float64)
    probs /= probs.sum()
    a = [draw(probs, torch.Generator().manual_seed(11)) for _ in range(5)]
    b = [draw(probs, torch.Generator().manual_seed(11)) for _ in range(5)]
    assert a == b


def test_sample_row_stays_in_top_k_and_top_p() -> None:
    logits = _logits("peaked", 1)
    top3 = set(torch.topk(logits, 3).indices.tolist())
    gen = torch.Generator().manual_seed(0)
    p = SamplingParams(temperature=2.0, top_k=3, seed=0)
    assert {sample_row(logits, p, [], gen) for _ in range(200)} == top3
    p = SamplingParams(temperature=1.0, top_p=0.3, seed=0)
    kept = set(torch.nonzero(_hf(logits, p)).squeeze(1).tolist())
    assert {sample_row(logits, p, [], gen) for _ in range(200)} <= kept


def test_repetition_penalty_equals_hf() -> None:
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = _logits("peaked", 2)
    seen = [5, 17, 17, 300, int(logits.argmax()), V - 1]
    hf = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([seen]), logits[None].clone())[0]
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, 1.3), hf)


def test_openai_penalties_follow_the_apis_formula() -> None:
    """l[t] -= c[t] * frequency + (c[t] > 0) * presence, c[t]: uses of t in the reply."""
    logits = _logits("peaked", 3)
    reply = [5, 9, 5, 5, 70, 9]
    got = apply_openai_penalties(logits, reply, 0.7, 0.4)
    want = logits.clone()
    for t in set(reply):
        want[t] -= reply.count(t) * 0.7 + 0.4
    torch.testing.assert_close(got, want)
    assert apply_openai_penalties(logits, [], 0.7, 0.4) is logits


def test_penalties_count_only_the_reply_and_change_greedy_picks() -> None:
    logits = torch.zeros(V)
    logits[[7, 8]] = torch.tensor([3.0, 2.0])
    p = SamplingParams(frequency_penalty=0.6)
    assert sample_row(logits, p, [7, 7], None, n_generated=0) == 7  # the prompt's 7s: no penalty
    assert sample_row(logits, p, [7, 7], None, n_generated=1) == 7  # one use: 2.4 > 2.0
    assert sample_row(logits, p, [7, 7], None, n_generated=2) == 8  # two: 1.8 < 2.0
    both = SamplingParams(frequency_penalty=0.1, presence_penalty=1.5)
    assert sample_row(logits, both, [7], None, n_generated=1) == 8  # 3 - 0.1 - 1.5 < 2
    with pytest.raises(InvalidRequest, match="presence_penalty"):
        SamplingParams(presence_penalty=2.5)


def test_logit_bias_adds_and_bans() -> None:
    logits = torch.zeros(V)
    logits[[7, 8, 9]] = torch.tensor([3.0, 2.0, 1.0])
    assert sample(logits[None], [SamplingParams(logit_bias={9: 2.5})], [[]], [None]) == [9]
    banned = SamplingParams(logit_bias={7: -100, 8: -100})
    assert sample_row(logits, banned, [], None) == 9
    sampled = SamplingParams(temperature=1.0, logit_bias={7: -100, 8: -100, 9: -100})
    gen = make_generator(SamplingParams(temperature=1.0, seed=3))
    assert all(sample_row(logits, sampled, [], gen) not in (7, 8, 9) for _ in range(200))
    torch.testing.assert_close(
        apply_logit_bias(logits, {8: 1.5, 0: -2.0})[[0, 8]], torch.tensor([-2.0, 3.5])
    )
    for bad in ({7: 101.0}, {-1: 1.0}, {True: 1.0}):
        with pytest.raises(InvalidRequest, match="logit_bias"):
            SamplingParams(logit_bias=bad)


def test_token_logprobs_are_the_log_softmax_and_its_top() -> None:
    logits = torch.stack([_logits("peaked", 4), _logits("flat", 5)])
    want = torch.log_softmax(logits.double(), -1)
    got = token_logprobs(logits, [11, int(logits[1].argmax())], [3, 0])
    assert got[0][0] == pytest.approx(float(want[0, 11]), abs=1e-5)
    top = [t for t, _ in got[0][1]]
    assert top == want[0].topk(3).indices.tolist()
    assert [lp for _, lp in got[0][1]] == pytest.approx(want[0].topk(3).values.tolist(), abs=1e-5)
    assert got[1] == (pytest.approx(float(want[1].max()), abs=1e-5), [])
    with pytest.raises(InvalidRequest, match="logprobs"):
        SamplingParams(logprobs=21)


def test_any_seed_that_fits_the_generator_is_taken_and_no_other() -> None:
    for seed in (-(2**63), 2**64 - 1):  # the extremes torch's generator takes
        assert make_generator(SamplingParams(temperature=1.0, seed=seed)) is not None
    with pytest.raises(InvalidRequest, match="seed"):
        SamplingParams(seed=2**64)
