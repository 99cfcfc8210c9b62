"""Bad input gets a clear error; the engine and the conversation keep working."""

from __future__ import annotations

import json
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
    hugepages,
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


@pytest.mark.skipif(hugepages.available_bytes() is None, reason="no MemAvailable here")
def test_a_kv_pool_beyond_the_machine_fails_at_load(smol_dir: Path) -> None:
    """The CPU pool is committed when the engine starts: one the machine cannot hold is a
    clear error there (not the OOM killer, nor a call failing later)."""
    from llm_engine import Engine

    c = json.loads((smol_dir / "config.json").read_text())
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    # layers x tokens x (K, V) x KV heads x head_dim x bf16
    per_block = c["num_hidden_layers"] * 16 * 2 * c["num_key_value_heads"] * head_dim * 2
    available = hugepages.available_bytes()
    assert available is not None
    blocks = 2 * available // per_block
    with pytest.raises(ModelLoadError, match=f"num_blocks {blocks} x block_size 16.*GiB"):
        Engine(EngineConfig(model_dir=smol_dir, num_blocks=blocks))


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
