"""Test helpers: checks that reach into the engine thread, HF references, a GGUF writer."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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


def save_with_smol_tokenizer(model: Any, out: Path, smol_dir: Path) -> None:
    """Save an HF model (a small random one) where the engine loads it: safetensors, config
    and SmolLM2's tokenizer files."""
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smol_dir / name, out / name)


def _permute(w: Any, n_head: int) -> Any:  # llama.cpp convert_hf_to_gguf's Q/K permutation
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_gguf(
    hf_dir: Path, arch: str, pre: str, smol_gguf: Path, out: Path, extra: Any = None
) -> dict[str, Any]:
    """Write an HF checkpoint as a GGUF file the way llama.cpp's converter does (tokenizer
    fields from SmolLM2's GGUF), rope scaling included: linear and yarn as keys, llama3 only as
    the ``rope_freqs`` table of per-frequency divisors. ``extra(writer)`` adds keys of its own."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    tensors = load_file(str(hf_dir / "model.safetensors"))
    src = gguf.GGUFReader(str(smol_gguf))
    w = gguf.GGUFWriter(str(out), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(src.fields["tokenizer.ggml.tokens"].contents())
    w.add_token_types(src.fields["tokenizer.ggml.token_type"].contents())
    w.add_token_merges(src.fields["tokenizer.ggml.merges"].contents())
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(src.fields["tokenizer.chat_template"].contents())
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", "default")
    if kind in ("linear", "yarn"):
        w.add_rope_scaling_type(gguf.RopeScalingType(kind))
        w.add_rope_scaling_factor(rope["factor"])
    if kind == "yarn":
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if kind == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_freq_factors(cfg, rope))
    heads = {"q": cfg["num_attention_heads"], "k": cfg["num_key_value_heads"]}
    for name, t in tensors.items():
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, i, rest = name.split(".", 3)
            gname = f"blk.{i}.{_GGUF_NAMES[rest]}"
            proj = rest.split(".")[1][0] if rest.startswith("self_attn.") else ""
            if arch == "llama" and proj in heads:
                t = _permute(t, heads[proj])
        w.add_tensor(gname, np.ascontiguousarray(t))
    if extra is not None:
        extra(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def llama3_freq_factors(cfg: dict[str, Any], rope: dict[str, Any]) -> np.ndarray:
    """llama.cpp's converter's ``rope_freqs``: what each rotary frequency is divided by."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    theta = cfg.get("rope_theta") or rope["rope_theta"]
    factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)
