"""Load a model from an HF safetensors directory or a GGUF file into :class:`ModelWeights`.

An HF directory holds ``config.json``, one or more ``*.safetensors`` files and the tokenizer
files; a ``.gguf`` path is converted in memory by :mod:`llm_engine.convert`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llm_engine.config import ModelConfig
from llm_engine.errors import ModelLoadError
from llm_engine.model import LayerWeights, ModelWeights


@dataclass(slots=True)
class LoadedModel:
    """A model's config, weights and tokenizer sources (``tokenizer.json`` text and config)."""

    config: ModelConfig
    weights: ModelWeights
    tokenizer_json: str
    tokenizer_config: dict[str, Any]


def load_model(path: Path, dtype: torch.dtype, device: str) -> LoadedModel:
    """Load ``path`` (HF directory or ``.gguf`` file). Raises ``ModelLoadError``."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from llm_engine.convert import read_gguf

        g = read_gguf(path)
        tensors = {k: torch.from_numpy(v) for k, v in g.tensors.items()}
        cfg = ModelConfig.from_hf(g.config)
        return LoadedModel(
            cfg, build_weights(cfg, tensors, dtype, device), g.tokenizer_json, g.tokenizer_config
        )
    if not path.is_dir():
        raise ModelLoadError(f"model path not found (need an HF directory or a .gguf file): {path}")
    try:
        hf_cfg = json.loads((path / "config.json").read_text())
        tok_json = (path / "tokenizer.json").read_text()
        tok_cfg_path = path / "tokenizer_config.json"
        tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.exists() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read model files in {path}: {err}") from err
    _merge_generation_config(path, hf_cfg)
    cfg = ModelConfig.from_hf(hf_cfg)
    tensors = _read_safetensors(path)
    return LoadedModel(cfg, build_weights(cfg, tensors, dtype, device), tok_json, tok_cfg)


def _merge_generation_config(path: Path, hf_cfg: dict[str, Any]) -> None:
    # generation_config.json often lists extra end-of-turn ids (e.g. <|im_end|> and <|endoftext|>)
    gen_path = path / "generation_config.json"
    if not gen_path.exists():
        return
    try:
        eos = json.loads(gen_path.read_text()).get("eos_token_id")
    except (OSError, json.JSONDecodeError):
        return
    if eos is not None:
        base = hf_cfg.get("eos_token_id")
        ids = set(eos if isinstance(eos, list) else [eos])
        ids |= set(base if isinstance(base, list) else ([] if base is None else [base]))
        hf_cfg["eos_token_id"] = sorted(ids)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors files in {path}")
    tensors: dict[str, Tensor] = {}
    try:
        for f in files:
            tensors.update(load_file(str(f)))
    except Exception as err:
        raise ModelLoadError(f"cannot read safetensors in {path}: {err}") from err
    return tensors


def build_weights(
    cfg: ModelConfig, t: dict[str, Tensor], dtype: torch.dtype, device: str
) -> ModelWeights:
    """Fuse HF tensors (``model.layers.N.self_attn.q_proj.weight`` ...) into engine weights."""

    def get(name: str) -> Tensor:
        try:
            return t[name].to(device=device, dtype=dtype).contiguous()
        except KeyError as err:
            raise ModelLoadError(f"weight {name!r} missing from checkpoint") from err

    layers = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        bias = None
        if f"{a}q_proj.bias" in t:
            bias = torch.cat([get(f"{a}{n}_proj.bias") for n in "qkv"])
        layers.append(
            LayerWeights(
                attn_norm=get(p + "input_layernorm.weight"),
                qkv=torch.cat([get(f"{a}{n}_proj.weight") for n in "qkv"]),
                qkv_bias=bias,
                o=get(a + "o_proj.weight"),
                mlp_norm=get(p + "post_attention_layernorm.weight"),
                gate_up=torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]),
                down=get(p + "mlp.down_proj.weight"),
            )
        )
    embed = get("model.embed_tokens.weight")
    tied = cfg.tie_word_embeddings or "lm_head.weight" not in t
    lm_head = embed if tied else get("lm_head.weight")
    return ModelWeights(embed=embed, layers=layers, norm=get("model.norm.weight"), lm_head=lm_head)
