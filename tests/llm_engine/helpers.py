"""Test helpers that reach into the engine thread (tests only)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch

from llm_engine import SamplingParams


def checked_engine(engine: object) -> Iterator[object]:
    """Yield ``engine`` to one test, then check the test left it running, with no
    conversation open and every KV block back in the pool."""
    from llm_engine.engine import Engine

    assert isinstance(engine, Engine)
    baseline = engine.config.num_blocks
    yield engine
    assert engine.running, "the engine thread died during the test"
    leftover = [st.conv for st in engine._convs.values()]
    assert not leftover, f"test left {len(leftover)} conversation(s) open"
    assert engine.free_blocks() == baseline, "KV blocks leaked"


async def next_logits(engine: Any, conv: Any) -> torch.Tensor:
    """Logits for the token after ``conv.tokens`` ([vocab] float32), computed on the engine
    thread by re-running the last token over the resident KV."""

    def fn(st: Any) -> torch.Tensor:
        seq = st.seq
        assert seq.num_cached == len(seq.tokens), "prefill the conversation first"
        return engine.runner.all_logits(seq, len(seq.tokens) - 1, 1)[0].clone()

    return await engine._call(fn, conv._state)


async def greedy(
    conv: Any, n: int, add_generation_prompt: bool | None = None, **kw: Any
) -> tuple[list[int], str]:
    """Greedy-generate ``n`` tokens (end-of-turn ignored); return (token ids, text)."""
    ids: list[int] = []
    text = ""
    params = SamplingParams(max_tokens=n, ignore_eos=True, **kw)
    async for d in conv.generate(params, add_generation_prompt=add_generation_prompt):
        ids += d.token_ids
        text += d.text
    return ids, text


def hf_greedy(hf: Any, prompt: list[int], n: int) -> list[int]:
    """HF's greedy continuation (plain argmax loop over its own KV cache, no stopping)."""
    out: list[int] = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers renames past_key_values
        res = hf(torch.tensor([prompt]), use_cache=True)
        for _ in range(n):
            tok = int(res.logits[0, -1].argmax())
            out.append(tok)
            res = hf(torch.tensor([[tok]]), past_key_values=res.past_key_values, use_cache=True)
    return out


def hf_logits(hf: Any, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()
