"""int8 weight-only decode and the torch.compile fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from llm_engine.quant import INT8_MAX_ROWS, linear, quantize_int8


def test_int8_linear_close_to_float() -> None:
    torch.manual_seed(0)
    w = torch.randn(96, 64)
    x = torch.randn(3, 64)
    q = quantize_int8(w, keep_full=True)
    ref = x @ w.T
    got = linear(x, q)  # few rows: the int8 kernel
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() / ref.abs().max() < 0.03
    many = torch.randn(INT8_MAX_ROWS + 1, 64)
    torch.testing.assert_close(linear(many, q), many @ w.T)  # many rows: the float weight


async def test_int8_engine_agrees_with_float(smol_dir: Path, smol_engine: Any) -> None:
    from llm_engine import Engine, EngineConfig
    from tests.llm_engine.helpers import greedy

    async def first_tokens(engine: Any) -> list[int]:
        conv = engine.open_conversation()
        try:
            await conv.append({"role": "user", "content": "What is the capital of France?"})
            ids, _ = await greedy(conv, 6)
            return ids
        finally:
            await conv.close()

    engine = Engine(EngineConfig(model_dir=smol_dir, quant="int8", num_blocks=32))
    engine.start()
    try:
        assert engine.config.resolved_quant() == "int8"
        got = await first_tokens(engine)
    finally:
        engine.close()
    want = await first_tokens(smol_engine)
    assert got[:3] == want[:3]  # "The capital of": int8 noise must not change the answer


async def test_compile_failure_falls_back_to_eager(
    qwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_engine import Engine, EngineConfig
    from tests.llm_engine.helpers import greedy

    def broken_compile(fn: Any, **kw: Any) -> Any:
        def fail(*a: Any) -> Any:
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    engine = Engine(EngineConfig(model_dir=qwen_dir, compile=True, num_blocks=16))
    engine.start()
    try:
        conv = engine.open_conversation()
        await conv.append_tokens([1, 2, 3, 4])
        ids, _ = await greedy(conv, 3)
        assert len(ids) == 3
        await conv.close()
    finally:
        engine.close()
