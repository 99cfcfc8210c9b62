"""The engine's model equals HF transformers on the same weights (fp32)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.llm_engine.helpers import greedy, hf_greedy, hf_logits, next_logits

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Name a color."},
    ],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]


def _prompt_ids(engine: Any, messages: list[dict[str, str]]) -> list[int]:
    text = engine.tokenizer.render(messages, add_generation_prompt=True)
    return engine.tokenizer.encode(text)


async def _check_logits(engine: Any, hf: Any) -> None:
    ids = _prompt_ids(engine, PROMPTS[0])
    ref = hf_logits(hf, ids)  # [T, V]
    conv = engine.open_conversation()
    try:
        await conv.append_tokens(ids[:5])  # fresh prefill
        await conv.append_tokens(ids[5:-1])  # chunk over resident context
        await conv.append_tokens(ids[-1:])  # single-token decode path
        got = await next_logits(engine, conv)
    finally:
        await conv.close()
    torch.testing.assert_close(got, ref[-1], atol=2e-4, rtol=1e-4)
    conv = engine.open_conversation()
    try:
        await conv.append_tokens(ids)

        def fn(st: Any) -> torch.Tensor:
            return engine.runner.all_logits(st.seq, 0, len(ids)).clone()

        full = await engine._call(fn, conv._state)
    finally:
        await conv.close()
    torch.testing.assert_close(full, ref, atol=2e-4, rtol=1e-4)


async def test_smollm2_logits_match_hf(smol_engine: Any, hf_smol: Any) -> None:
    await _check_logits(smol_engine, hf_smol)


async def test_qwen2_logits_match_hf(qwen_engine: Any, hf_qwen: Any) -> None:
    await _check_logits(qwen_engine, hf_qwen)


@pytest.mark.parametrize("messages", PROMPTS)
async def test_smollm2_greedy_64_matches_hf(smol_engine: Any, hf_smol: Any, messages: Any) -> None:
    ids = _prompt_ids(smol_engine, messages)
    conv = smol_engine.open_conversation()
    try:
        await conv.append_tokens(ids)
        got, _ = await greedy(conv, 64)
    finally:
        await conv.close()
    assert got == hf_greedy(hf_smol, ids, 64)


async def test_qwen2_greedy_64_matches_hf(qwen_engine: Any, hf_qwen: Any) -> None:
    for messages in PROMPTS[:2]:
        ids = _prompt_ids(qwen_engine, messages)
        conv = qwen_engine.open_conversation()
        try:
            await conv.append_tokens(ids)
            got, _ = await greedy(conv, 64)
        finally:
            await conv.close()
        assert got == hf_greedy(hf_qwen, ids, 64)
