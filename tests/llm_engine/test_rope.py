"""Rope scaling: the engine rotates as HF transformers does for every kind it accepts, from HF
directories and from GGUF files in llama.cpp's forms; the kinds it cannot serve are load errors.

Tiny random Llama models whose original context is 64 tokens, run over 200 positions, so that
every frequency band of each scaling is exercised (head_dim 32: 16 frequencies, wavelengths from
6 to ~19,000 positions)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from llm_engine.errors import ModelLoadError
from tests.llm_engine.helpers import hf_logits, next_logits, save_with_smol_tokenizer, write_gguf

ORIGINAL = 64
SCALINGS: dict[str, dict[str, Any]] = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": ORIGINAL,
    },
    "yarn": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": ORIGINAL},
    "yarn-betas": {
        "rope_type": "yarn",
        "factor": 3.0,
        "original_max_position_embeddings": ORIGINAL,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
        "truncate": False,
    },
    "longrope": {
        "rope_type": "longrope",
        "short_factor": [1.0 + i / 4 for i in range(16)],
        "long_factor": [1.0 + i / 4 for i in range(16)],
        "original_max_position_embeddings": ORIGINAL,
        "factor": 4.0,  # attention factor from it: sqrt(1 + ln 4 / ln 64)
    },
}
IDS = [(7 * i * i + 3 * i + 11) % 49000 + 100 for i in range(200)]


def _tiny_llama(out: Path, smol_dir: Path, scaling: dict[str, Any]) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        rope_parameters={"rope_theta": 10000.0, **scaling},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # larger q/k make attention depend on the rotation, not only values
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    save_with_smol_tokenizer(model, out, smol_dir)
    return model


@pytest.fixture(scope="module")
def plain(smol_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """The same tiny Llama without rope scaling: its directory and HF's logits over IDS."""
    out = tmp_path_factory.mktemp("plain")
    return out, hf_logits(_tiny_llama(out, smol_dir, {"rope_type": "default"}), IDS)


async def _engine_logits(
    model_path: Path, quant: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's logits at every position of IDS ([T, vocab], prefilled at once) and for the
    token after IDS ([vocab]: IDS prefilled in two parts, then its last token decoded)."""
    from llm_engine import Engine, EngineConfig

    dtype = "float32" if quant == "none" else "auto"
    engine = Engine(EngineConfig(model_dir=model_path, dtype=dtype, quant=quant, num_blocks=32))
    engine.start()
    try:
        conv = engine.open_conversation()
        await conv.append_tokens(IDS)
        full = await engine._call(
            lambda st: engine.runner.all_logits(st.seq, 0, len(IDS)).clone(), conv._state
        )
        await conv.close()
        conv = engine.open_conversation()
        await conv.append_tokens(IDS[:150])
        await conv.append_tokens(IDS[150:-1])
        await conv.append_tokens(IDS[-1:])
        last = await next_logits(engine, conv)
        await conv.close()
    finally:
        engine.close()
    return full, last


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p.softmax(-1) * (p.log_softmax(-1) - q.log_softmax(-1))).sum(-1).max())


@pytest.mark.parametrize("kind", SCALINGS)
async def test_scaled_rope_matches_hf(
    kind: str, smol_dir: Path, tmp_path: Path, smol_gguf: Path, plain: tuple[Path, torch.Tensor]
) -> None:
    hf = _tiny_llama(tmp_path / "hf", smol_dir, SCALINGS[kind])
    ref, unscaled = hf_logits(hf, IDS), plain[1]
    assert (ref - unscaled).abs().max() > 0.05, "the scaling must change the logits here"
    full, last = await _engine_logits(tmp_path / "hf")
    torch.testing.assert_close(full, ref, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(last, ref[-1], atol=2e-4, rtol=1e-4)
    if kind in ("linear", "llama3", "yarn"):  # the forms llama.cpp's converter writes
        write_gguf(tmp_path / "hf", "llama", "smollm", smol_gguf, tmp_path / "m.gguf")
        full, last = await _engine_logits(tmp_path / "m.gguf")
        torch.testing.assert_close(full, ref, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(last, ref[-1], atol=2e-4, rtol=1e-4)
    if kind == "yarn":  # the default CPU path: int8 decode, bf16 prefill, the C kernels' rope
        full, last = await _engine_logits(tmp_path / "hf", quant="auto")
        assert _kl(ref, full) < 1e-4 and _kl(ref[-1], last) < 1e-4
        assert _kl(ref, unscaled) > 1e-2  # what a missed scaling would cost


@pytest.mark.parametrize(
    ("scaling", "words"),
    [
        ({"rope_type": "dynamic", "factor": 2.0}, "'dynamic' is not supported"),
        ({**SCALINGS["longrope"], "long_factor": [2.0] * 16}, "distinct short and long"),
        ({"rope_type": "llama3", "factor": 8.0}, "'llama3' is malformed"),
    ],
)
def test_unservable_rope_scaling_is_a_load_error(
    scaling: dict[str, Any], words: str, tmp_path: Path, plain: tuple[Path, torch.Tensor]
) -> None:
    import json

    from llm_engine import Engine, EngineConfig

    shutil.copytree(plain[0], tmp_path, dirs_exist_ok=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_theta": 10000.0, **scaling}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=words):
        Engine(EngineConfig(model_dir=tmp_path, quant="none", num_blocks=8))


def test_gguf_rope_keys_as_llama_cpp_reads_them(
    smol_gguf: Path, tmp_path: Path, plain: tuple[Path, torch.Tensor]
) -> None:
    """YaRN without its original context takes the trained one, as llama.cpp does; YaRN
    without a factor, or a scaling type nobody here knows, is a load error."""
    import gguf

    from llm_engine.convert import read_gguf

    def gguf_with(name: str, keys: Any) -> Path:
        write_gguf(plain[0], "llama", "smollm", smol_gguf, tmp_path / name, keys)
        return tmp_path / name

    def yarn(w: Any) -> None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(4.0)

    scaling = read_gguf(gguf_with("yarn.gguf", yarn)).config["rope_scaling"]
    assert scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
    no_factor = gguf_with(
        "nofactor.gguf", lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    )
    with pytest.raises(ModelLoadError, match="incomplete metadata"):
        read_gguf(no_factor)
    unknown = gguf_with("unknown.gguf", lambda w: w.add_string("llama.rope.scaling.type", "spiral"))
    with pytest.raises(ModelLoadError, match="'spiral' is not supported"):
        read_gguf(unknown)
