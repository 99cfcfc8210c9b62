"""Weight-only int8 quantization and the ``linear`` every projection goes through.

Per output channel, symmetric: w[n, :] ~= q[n, :] * scale[n], q in [-127, 127].
Decode reads every weight once per step, so int8 quarters the bytes fp32 moves. On CPU the
int8 kernel (``_weight_int8pack_mm``, bf16 activations) is a matrix-vector kernel: fast for a
few rows, slower than fp32 GEMM for many, so ``full`` keeps the float weight for prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

INT8_MAX_ROWS = 8  # above this many input rows, the float weight (if kept) is faster


@dataclass(slots=True)
class Int8Weight:
    q: Tensor  # [N, K] int8
    scale: Tensor  # [N] bfloat16 (CPU kernel) or the activation dtype
    full: Tensor | None  # [N, K] float weight for many-row inputs, or None


def quantize_int8(w: Tensor, keep_full: bool) -> Int8Weight:
    """w: [N, K] float -> per-channel symmetric int8."""
    scale = w.float().abs().amax(dim=1).clamp(min=1e-8) / 127.0  # [N]
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return Int8Weight(q, scale.to(torch.bfloat16), w if keep_full else None)


def linear(x: Tensor, w: Tensor | Int8Weight, bias: Tensor | None = None) -> Tensor:
    """x: [..., K] -> [..., N]."""
    if isinstance(w, Tensor):
        return F.linear(x, w, bias)
    K = x.shape[-1]
    rows = x.numel() // K
    if w.full is not None and rows > INT8_MAX_ROWS:
        return F.linear(x, w.full, bias)
    if x.device.type == "cpu":
        y = torch._weight_int8pack_mm(x.reshape(rows, K).to(torch.bfloat16), w.q, w.scale)
    else:
        y = F.linear(x.reshape(rows, K), w.q.to(x.dtype)) * w.scale.to(x.dtype)
    y = y.view(*x.shape[:-1], w.q.shape[0]).to(x.dtype)
    return y if bias is None else y + bias
