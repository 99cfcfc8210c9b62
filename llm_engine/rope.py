"""Rotary embeddings' frequencies with the checkpoint's scaling, as HF transformers computes them.

Supported ``rope_scaling`` kinds: ``default``, ``linear`` (positions divided by ``factor``),
``llama3`` (Llama 3.1+: low frequencies divided by ``factor``, a smooth band between),
``yarn`` (Qwen2.5's long-context setting: NTK-by-parts blend plus a cos/sin scale) and
``longrope`` with equal short and long factors (one divisor per frequency: how a GGUF's
``rope_freqs`` table, llama.cpp's form of llama3 scaling, is carried). ``dynamic`` NTK and
longrope with distinct factors change the frequencies with the sequence's length, which would
leave the keys already cached rotated by other frequencies than new ones, so they are refused.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from llm_engine.errors import ModelLoadError

SUPPORTED = ("default", "linear", "llama3", "yarn", "longrope")


def inv_freq(
    head_dim: int, theta: float, scaling: dict[str, Any] | None, max_positions: int
) -> tuple[Tensor, float]:
    """Inverse frequencies [head_dim / 2] (float32) and the factor cos and sin are scaled by.

    Raises :class:`ModelLoadError` naming what is unsupported or missing."""
    s = scaling or {}
    kind = str(s.get("rope_type", s.get("type")) or "default")  # "type": older configs
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    wavelengths = theta**exponents  # / 2 pi: each frequency's period in positions
    base = 1.0 / wavelengths
    try:
        if kind == "default":
            return base, 1.0
        if kind == "linear":
            return base / float(s["factor"]), 1.0
        if kind == "llama3":
            return _llama3(base, s), 1.0
        if kind == "yarn":
            return _yarn(head_dim, theta, wavelengths, s, max_positions)
        if kind == "longrope":
            return _longrope(wavelengths, s, max_positions)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelLoadError(f"rope scaling {kind!r} is malformed: {err!r}") from err
    raise ModelLoadError(
        f"rope scaling {kind!r} is not supported (supported: {', '.join(SUPPORTED)})"
    )


def _llama3(base: Tensor, s: dict[str, Any]) -> Tensor:
    factor = float(s["factor"])
    lo, hi = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / base
    smooth = (old / wavelen - lo) / (hi - lo)
    scaled = torch.where(wavelen > old / lo, base / factor, base)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= old / hi) & (wavelen <= old / lo)
    return torch.where(is_mid, mid, scaled)


def _factor(s: dict[str, Any], max_positions: int) -> tuple[float, float]:
    """(original context, scaling factor); without a factor, as HF: the context's growth."""
    old = float(s["original_max_position_embeddings"])
    return old, float(s["factor"]) if s.get("factor") is not None else max_positions / old


def _yarn(
    head_dim: int, theta: float, wavelengths: Tensor, s: dict[str, Any], max_positions: int
) -> tuple[Tensor, float]:
    old, factor = _factor(s, max_positions)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = s.get("attention_factor")
    if attention is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    fast, slow = float(s.get("beta_fast") or 32), float(s.get("beta_slow") or 1)

    def dim_of(rotations: float) -> float:  # the dimension that turns ``rotations`` times
        return head_dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = dim_of(fast), dim_of(slow)
    if s.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, head_dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    kept = 1 - ramp  # share of the unscaled frequency: 1 for the fast dimensions, 0 for the slow
    scaled = 1.0 / (factor * wavelengths)
    return scaled * (1 - kept) + (1.0 / wavelengths) * kept, float(attention)


def _longrope(wavelengths: Tensor, s: dict[str, Any], max_positions: int) -> tuple[Tensor, float]:
    short, long = [float(x) for x in s["short_factor"]], [float(x) for x in s["long_factor"]]
    if short != long:
        raise ModelLoadError(
            "rope scaling 'longrope' with distinct short and long factors is not supported "
            "(the frequencies would change with the sequence's length under cached keys)"
        )
    if len(short) != len(wavelengths):
        raise ModelLoadError(
            f"rope scaling 'longrope' has {len(short)} factors for {len(wavelengths)} frequencies"
        )
    attention = s.get("attention_factor")
    if attention is None:
        old, factor = _factor(s, max_positions)
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(old))
    return 1.0 / (torch.tensor(short) * wavelengths), float(attention)
