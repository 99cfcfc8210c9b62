"""Bad input gets a clear error; the engine and the conversation keep working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llm_engine import (
    ContextLengthExceeded,
    EngineClosed,
    EngineConfig,
    InvalidRequest,
    ModelLoadError,
    SamplingParams,
)


async def test_bad_messages(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation("Hi.")
    try:
        with pytest.raises(InvalidRequest, match="non-empty"):
            await conv.append([])
        with pytest.raises(InvalidRequest, match="UTF-8"):
            await conv.append({"role": "user", "content": b"\xc3\x28"})
        with pytest.raises(InvalidRequest, match="UTF-8"):
            await conv.append_text("lone \ud800 surrogate")
        with pytest.raises(InvalidRequest, match="token ids"):
            await conv.append_tokens([10**9])
        with pytest.raises(InvalidRequest):
            SamplingParams(temperature=-1)
        n = await conv.append({"role": "user", "content": "Still fine?"})
        assert n == len(conv.tokens)
    finally:
        await conv.close()


async def test_over_context_length(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation()
    try:
        too_long = "word " * (smol_engine.max_context + 10)
        with pytest.raises(ContextLengthExceeded, match="context limit"):
            await conv.append({"role": "user", "content": too_long})
        assert conv.tokens == []  # unchanged
        with pytest.raises(ContextLengthExceeded):
            smol_engine.open_conversation(too_long)
    finally:
        await conv.close()


async def test_busy_and_closed_conversation(smol_engine: Any) -> None:
    conv = smol_engine.open_conversation("Hi.")
    await conv.append({"role": "user", "content": "Tell me a long story."})
    gen = conv.generate(SamplingParams(max_tokens=50, ignore_eos=True))
    await gen.__anext__()
    with pytest.raises(InvalidRequest, match="generating"):
        await conv.append({"role": "user", "content": "more"})
    await gen.aclose()  # aborts
    await conv.append({"role": "user", "content": "ok"})
    with pytest.raises(InvalidRequest, match="truncate"):
        await conv.truncate(len(conv.tokens) + 1)
    await conv.close()
    await conv.close()  # idempotent
    with pytest.raises(InvalidRequest, match="closed"):
        await conv.append({"role": "user", "content": "hello?"})


def test_unknown_model_path(tmp_path: Path) -> None:
    from llm_engine import Engine

    with pytest.raises(ModelLoadError, match="not found"):
        Engine(EngineConfig(model_dir=tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError):
        Engine(EngineConfig(model_dir=tmp_path / "empty"))


def test_bad_engine_config(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="dtype"):
        EngineConfig(model_dir=tmp_path, dtype="int3")
    with pytest.raises(InvalidRequest, match="kv_dtype"):
        EngineConfig(model_dir=tmp_path, kv_dtype="int8")
    with pytest.raises(InvalidRequest):
        EngineConfig(model_dir=tmp_path, num_blocks=0)
    for device in ("tpu", "gpu", "cuda:x", ""):
        with pytest.raises(InvalidRequest, match="device"):
            EngineConfig(model_dir=tmp_path, device=device)


def test_a_device_torch_cannot_use_is_a_load_error(qwen_dir: Path) -> None:
    """One past the GPUs torch sees: on a CPU-only torch, any CUDA device."""
    import torch

    from llm_engine import Engine

    device = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ModelLoadError, match=f"device '{device}' asked for, but"):
        Engine(EngineConfig(model_dir=qwen_dir, device=device))


def test_kv_dtype_follows_the_quantization(tmp_path: Path) -> None:
    """bf16 K/V with the CPU's int8 weights; exact float32 K/V when nothing is quantized."""
    assert EngineConfig(model_dir=tmp_path).resolved_kv_dtype() == "bfloat16"
    assert EngineConfig(model_dir=tmp_path, quant="none").resolved_kv_dtype() == "float32"
    cfg = EngineConfig(model_dir=tmp_path, kv_dtype="float32")
    assert cfg.resolved_kv_dtype() == "float32"
    assert EngineConfig(model_dir=tmp_path, device="cuda").resolved_kv_dtype() == "bfloat16"


async def test_not_started_and_closed_engine(qwen_dir: Path) -> None:
    from llm_engine import Engine

    engine = Engine(EngineConfig(model_dir=qwen_dir, num_blocks=16))
    with pytest.raises(EngineClosed, match="start"):
        engine.open_conversation()
    engine.start()
    conv = engine.open_conversation()
    await conv.append_tokens([1, 2, 3])
    engine.close()
    with pytest.raises(EngineClosed):
        await conv.append_tokens([4])
