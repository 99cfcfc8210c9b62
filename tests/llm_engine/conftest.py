"""Fixtures for the engine tests: a random Qwen2 and engines over it, HF references.

SmolLM2 (prepared from its package) and its engine are shared with the voice tests in
``tests/conftest.py``.

Engines are session-scoped (loading takes seconds); every test that uses one checks that the
KV pool's block accounting is back at its baseline afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _engine
from tests.llm_engine.helpers import checked_engine, save_with_smol_tokenizer


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
    save_with_smol_tokenizer(model, out, smol_dir)
    return out


@pytest.fixture(scope="session")
def qwen_engine_session(qwen_dir: Path) -> Iterator[object]:
    yield from _engine(qwen_dir, num_blocks=128, block_size=16, max_batch=8)


@pytest.fixture
def qwen_engine(qwen_engine_session: object) -> Iterator[object]:
    yield from checked_engine(qwen_engine_session)


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
