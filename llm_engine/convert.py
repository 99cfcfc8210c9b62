"""GGUF -> HF-style directory: config.json, model.safetensors, tokenizer(_config).json.

The output loads in HF transformers (``LlamaForCausalLM`` / ``Qwen2ForCausalLM``) and in this
engine. Weights are dequantized to float32 with the ``gguf`` package; for llama-arch files the
Q/K row permutation that llama.cpp's converter applies (interleaved -> rotate-half rotary
layout) is undone. The tokenizer is rebuilt with the ``tokenizers`` library from the GGUF's
byte-level BPE vocabulary and merges, with the pre-tokenizer that ``tokenizer.ggml.pre`` names.
Rope scaling becomes HF's ``rope_scaling``: the ``rope.scaling.*`` keys (linear, yarn) directly,
and the ``rope_freqs`` table that llama.cpp keeps instead of llama3's parameters as longrope with
those divisors (see :mod:`llm_engine.rope`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_engine.errors import ModelLoadError

Progress = Callable[[int, int], None]

# pre-tokenizer regexes, as in llama.cpp's llama-vocab.cpp and the models' own tokenizer.json
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGIT_SPLIT_PRES = ("smollm", "starcoder", "refact", "codeshell", "command-r")
_GPT2_PRES = ("gpt2", "default", "gpt-2")

_TENSOR_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_CONTROL, _USER_DEFINED = 3, 4


@dataclass(slots=True)
class GGUFModel:
    """A GGUF file read into memory in HF form."""

    config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    tokenizer_json: str
    tokenizer_config: dict[str, Any]


def convert_gguf(gguf_path: Path, out_dir: Path, progress: Progress | None = None) -> None:
    """Convert ``gguf_path`` into an HF-style directory at ``out_dir`` (created if missing).

    Writes only inside ``out_dir``; the caller owns temp dirs, atomic renames and hashing.
    ``progress(done, total)`` is called once per tensor. Raises ``ModelLoadError``.
    """
    from safetensors.numpy import save_file

    model = read_gguf(Path(gguf_path), progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(model.config, indent=2))
    (out / "tokenizer.json").write_text(model.tokenizer_json)
    (out / "tokenizer_config.json").write_text(json.dumps(model.tokenizer_config, indent=2))
    gen = {
        "bos_token_id": model.config.get("bos_token_id"),
        "eos_token_id": model.config.get("eos_token_id"),
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))


def read_gguf(path: Path, progress: Progress | None = None) -> GGUFModel:
    """Read and dequantize a GGUF file into HF config, float32 tensors and tokenizer files."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
    except FileNotFoundError as err:
        raise ModelLoadError(f"model file not found: {path}") from err
    except Exception as err:
        raise ModelLoadError(f"cannot read GGUF file {path}: {err}") from err
    meta = {k: _field_value(f) for k, f in reader.fields.items()}
    try:
        config = _hf_config(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelLoadError(f"GGUF file {path} has incomplete metadata: {err!r}") from err
    tensors = _hf_tensors(reader, config, progress)
    config["tie_word_embeddings"] = "lm_head.weight" not in tensors
    tok_json, tok_cfg = _tokenizer_files(meta, config)
    return GGUFModel(config, tensors, tok_json, tok_cfg)


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception:  # some exotic field types; none we need
        return None


def _hf_config(meta: dict[str, Any]) -> dict[str, Any]:
    arch = meta.get("general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ModelLoadError(f"unsupported GGUF architecture {arch!r}; supported: llama, qwen2")

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    n_embd, n_head = int(key("embedding_length")), int(key("attention.head_count"))
    vocab = meta.get("tokenizer.ggml.tokens") or []
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "vocab_size": int(key("vocab_size", len(vocab))),
        "hidden_size": n_embd,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(key("attention.head_count_kv", n_head)),
        "head_dim": int(key("rope.dimension_count", n_embd // n_head)),
        "max_position_embeddings": int(key("context_length", 2048)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "attention_bias": arch == "qwen2",
        "mlp_bias": False,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }
    if (scaling := _rope_scaling(key)) is not None:
        cfg["rope_scaling"] = scaling
    if arch == "qwen2":
        cfg["use_sliding_window"] = False
    return cfg


def _rope_scaling(key: Callable[..., Any]) -> dict[str, Any] | None:
    """HF's ``rope_scaling`` for the GGUF's ``rope.scaling.*`` keys (llama.cpp's names)."""
    kind = key("rope.scaling.type") or "none"
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(key("rope.scaling.factor"))}
    if kind == "yarn":
        factor = float(key("rope.scaling.factor"))
        # as llama.cpp: without the key, the original context is the one trained
        original = key("rope.scaling.original_context_length", key("context_length"))
        yarn: dict[str, Any] = {
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": int(original),
        }
        for name in ("beta_fast", "beta_slow"):
            if (beta := key(f"rope.scaling.yarn_{name}")) is not None:
                yarn[name] = float(beta)
        if (attn := key("rope.scaling.attn_factor")) is not None:  # llama.cpp scales YaRN's own
            yarn["attention_factor"] = float(attn) * (
                1 + 0.1 * math.log(factor) if factor > 1 else 1
            )
        return yarn
    raise ModelLoadError(f"GGUF rope scaling {kind!r} is not supported (none, linear, yarn)")


def _freq_factors(factors: np.ndarray, cfg: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp keeps llama3 scaling only as a table that divides each rotary frequency; HF
    expresses the same as longrope with equal short and long factors and no cos/sin scale."""
    if cfg.get("rope_scaling"):
        raise ModelLoadError("GGUF file has both a rope_freqs table and rope.scaling keys")
    table = [float(x) for x in np.asarray(factors, dtype=np.float32).reshape(-1)]
    if len(table) != cfg["head_dim"] // 2:
        raise ModelLoadError(f"rope_freqs has {len(table)} entries for head_dim {cfg['head_dim']}")
    return {
        "rope_type": "longrope",
        "short_factor": table,
        "long_factor": table,
        "original_max_position_embeddings": cfg["max_position_embeddings"],
        "attention_factor": 1.0,
    }


def _unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation: rows (head, pair, 2) -> (head, 2, pair)."""
    # w: [n_head * head_dim, ...]
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _hf_tensors(reader: Any, cfg: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
    from gguf.quants import dequantize

    total = len(reader.tensors)
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(reader.tensors):
        if t.name == "rope_freqs.weight":  # llama3-style scaling lives only in this table
            cfg["rope_scaling"] = _freq_factors(dequantize(t.data, t.tensor_type), cfg)
        name = _hf_name(t.name)
        if name is not None:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
            w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
            if cfg["model_type"] == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
                w = _unpermute_rotary(w, cfg["num_attention_heads"])
            elif cfg["model_type"] == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
                w = _unpermute_rotary(w, cfg["num_key_value_heads"])
            w = np.ascontiguousarray(w)
            out[name] = w if w.flags.writeable else w.copy()  # F32 data is a read-only mmap
        if progress is not None:
            progress(i + 1, total)
    if "model.embed_tokens.weight" not in out:
        raise ModelLoadError("GGUF file has no token_embd.weight tensor")
    return out


def _hf_name(name: str) -> str | None:
    if name in _TOP_MAP:
        return _TOP_MAP[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _TENSOR_MAP:
        return f"model.layers.{parts[1]}.{_TENSOR_MAP[parts[2]]}"
    return None


def _pre_tokenizer(pre: str) -> tuple[Any, Any]:
    """Return (normalizer, pre_tokenizer) for a ``tokenizer.ggml.pre`` name."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in _DIGIT_SPLIT_PRES:
        return None, pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in _GPT2_PRES:
        return None, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    regex = {"qwen2": _QWEN2_RE, "llama-bpe": _LLAMA3_RE, "llama3": _LLAMA3_RE}.get(pre)
    if regex is None:
        raise ModelLoadError(f"unsupported tokenizer pre-tokenizer {pre!r}")
    split = pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
    norm = normalizers.NFC() if pre == "qwen2" else None
    return norm, pre_tokenizers.Sequence([split, byte_level])


def _tokenizer_files(meta: dict[str, Any], cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ModelLoadError("only byte-level BPE ('gpt2') GGUF tokenizers are supported")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    norm, pre = _pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
    if norm is not None:
        tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, ty in enumerate(types) if ty == _CONTROL]
    user = [tokens[i] for i, ty in enumerate(types) if ty == _USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    bos_id, eos_id = cfg.get("bos_token_id"), cfg.get("eos_token_id")
    bos = tokens[bos_id] if bos_id is not None else None
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    tok_cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": tokens[eos_id] if eos_id is not None else None,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"],
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    pad_id = meta.get("tokenizer.ggml.padding_token_id")
    if pad_id is not None:
        tok_cfg["pad_token"] = tokens[pad_id]
    return tok.to_str(), tok_cfg
