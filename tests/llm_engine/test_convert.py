"""GGUF conversion: config, weights HF can load, a tokenizer equal to llama.cpp's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llm_engine.errors import ModelLoadError
from tests.llm_engine.helpers import write_gguf

TEXTS = [
    "Hello world 12345 don't  stop\n\n  ok",
    "naïve café 日本語 🤖 <|im_start|>user\nhi<|im_end|>",
    "    def f(x):\n\treturn x**2 # 3.14159",
    "I'VE got 1,000,000 reasons... right?!",
]


def test_config_matches_gguf(smol_dir: Path) -> None:
    cfg = json.loads((smol_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"]) == (576, 30)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["rope_theta"] == 100000.0
    assert cfg["tie_word_embeddings"] is True
    tok_cfg = json.loads((smol_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in tok_cfg["chat_template"]


def test_tokenizer_matches_llama_cpp(smol_dir: Path, smol_gguf: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from llm_engine.tokenizer import Tokenizer

    tok = Tokenizer((smol_dir / "tokenizer.json").read_text(), {})
    ref = llama_cpp.Llama(str(smol_gguf), vocab_only=True, verbose=False)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref.tokenize(text.encode(), add_bos=False, special=True), text
        assert tok.decode(ids) == text


def test_tokenizer_matches_hf_fast_tokenizer(smol_dir: Path) -> None:
    from transformers import AutoTokenizer

    from llm_engine.tokenizer import Tokenizer

    hf = AutoTokenizer.from_pretrained(smol_dir)
    tok = Tokenizer(
        (smol_dir / "tokenizer.json").read_text(),
        json.loads((smol_dir / "tokenizer_config.json").read_text()),
    )
    msgs = [{"role": "user", "content": "Hi there!"}]
    assert tok.render(msgs, add_generation_prompt=True) == hf.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False
    )
    for text in TEXTS:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False)


def test_unpermute_inverts_llama_cpp_permute() -> None:
    from llm_engine.convert import _unpermute_rotary

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp convert_hf_to_gguf
        return (
            w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape)
        )

    w = np.arange(3 * 8 * 5, dtype=np.float32).reshape(24, 5)
    assert (_unpermute_rotary(permute(w, 3), 3) == w).all()


def test_missing_or_bad_file(tmp_path: Path) -> None:
    from llm_engine.convert import convert_gguf

    with pytest.raises(ModelLoadError, match="not found"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError):
        convert_gguf(bad, tmp_path / "out")


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_gguf_roundtrip_restores_hf_weights(
    arch: str, qwen_dir: Path, smol_gguf: Path, tmp_path: Path
) -> None:
    """A GGUF written like llama.cpp's converter (Q/K permuted for llama) converts back to the
    exact HF tensors, including q/k biases."""
    from safetensors.numpy import load_file

    from llm_engine.convert import convert_gguf

    pre = "qwen2" if arch == "qwen2" else "smollm"
    original = write_gguf(qwen_dir, arch, pre, smol_gguf, tmp_path / "m.gguf")
    convert_gguf(tmp_path / "m.gguf", tmp_path / "out")
    restored = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(restored) == set(original)
    for name, t in original.items():
        assert (restored[name] == t).all(), name
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == arch and cfg["tie_word_embeddings"] is False
    assert cfg["rope_theta"] == 50000.0


async def test_engine_loads_gguf_path_directly(
    qwen_dir: Path, smol_gguf: Path, tmp_path: Path, hf_qwen: Any
) -> None:
    import torch

    from llm_engine import Engine, EngineConfig
    from tests.llm_engine.helpers import hf_logits, next_logits

    write_gguf(qwen_dir, "qwen2", "qwen2", smol_gguf, tmp_path / "m.gguf")
    engine = Engine(EngineConfig(model_dir=tmp_path / "m.gguf", quant="none", num_blocks=16))
    engine.start()
    try:
        conv = engine.open_conversation()
        ids = [1, 520, 9531, 198, 40, 45, 50]
        await conv.append_tokens(ids)
        got = await next_logits(engine, conv)
        await conv.close()
    finally:
        engine.close()
    torch.testing.assert_close(got, hf_logits(hf_qwen, ids)[-1], atol=2e-4, rtol=1e-4)
