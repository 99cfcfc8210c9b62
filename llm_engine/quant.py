"""Weight-only int8 quantization and the ``linear`` every projection goes through.

Per output channel, symmetric: w[n, :] ~= q[n, :] * scale[n], q in [-127, 127].
Decode reads every weight once per step, so int8 quarters the bytes fp32 moves. Two CPU
kernels serve decode, picked by shape (measured on the 2-core AVX2 box, one thread):

- ``_weight_int8pack_mm`` (int8 weights, bf16 activations): lowest fixed cost; used for one
  input row times a small weight (q/k/v, o, down). It is compute-bound, not bandwidth-bound:
  ~3 GB/s on the 49k-row head, and its cost grows linearly with the rows.
- fbgemm's fp16-weight linear (``quantized::linear_dynamic_fp16``, fp32 activations, a copy of
  the weight in ``packed``): ~2x faster for big weights (gate/up, the head) and for a few rows
  (small-batch decode), and closer to fp32 than int8. fbgemm's int8 kernel
  (``linear_dynamic``) is faster still but quantizes activations per tensor to 7 bits, which
  SmolLM2's activation outliers do not survive (logits off by ~60%), so it is not used.

Both are matrix-vector style kernels; GEMM wins for many rows, so ``full`` keeps a float weight
for prefill: bfloat16 where the CPU multiplies bf16 natively (AVX512-BF16, AMX: oneDNN's bf16
GEMM ran 1.5x fbgemm fp16 from 32 rows on the Zen 4 box, 286 vs 197 GFLOP/s at 48 rows, 408 vs
185 for fp32 at 300; it halves the kept copy too), float32 elsewhere (bf16 is emulated there and
~5x slower). The bf16 copy is kept in oneDNN's own blocked layout where torch can make one
(``mkldnn._reorder_linear_weight``): a plain bf16 weight is reordered on every call, which made
oneDNN lose to fbgemm below 32 rows; prepacked, the whole model's prefill matmuls on one thread
beat fbgemm fp16 from 6 rows (same process, interleaved: 8 rows 27.9 vs 31.7 ms, 13 rows 44.8
vs 54.4, 24 rows 50.1 vs 86.2, 40 rows 73.7 vs 95.0 with plain bf16) and lost at 2-4 rows.
Where it builds (gcc, AVX2), :mod:`llm_engine.cpu_kernel` serves one-row inputs instead of all
of these: int8 weights, fp32 activations, 2-3x faster than either at one row. Where its AVX512-
BF16 library builds, ``full`` is no oneDNN copy but bf16 pairs for its own GEMM
(:func:`cpu_kernel.gemm_bf16`): SmolLM2's projections at 8-52 rows ran at 392-448 GFLOP/s there
against oneDNN's 265-367 (2 threads, Zen 4), and it writes float32 or bf16 as asked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llm_engine import cpu_kernel

INT8_MAX_ROWS = 8  # above this many input rows, the float weight (if kept) beats int8pack
FP16_MAX_ROWS = 64  # with the fp16 copy: fp32 GEMM was 1.5-3x slower up to 64 rows
BF16_MIN_ROWS = 32  # native bf16 GEMM, plain weight: below this no faster than fbgemm fp16
PACKED_BF16_MIN_ROWS = 8  # native bf16 GEMM, prepacked weight (see the module docstring)
# cpu_kernel's bf16 GEMM: whole SmolLM2 decode steps at 361 tokens of context, bf16 pool, same
# process (Zen 4, 2 threads), decode_one's int8 rows vs the layer loop on this GEMM: 3 rows
# 11.7 vs 12.8 ms, 4: 13.3 vs 11.8, 6: 20.1 vs 15.4, 8: 24.0 vs 14.1. decode_one runs this
# GEMM itself from here, or where its int8 projections run on cpu_kernel's q8_linear_vnni,
# from 9 rows (see cpu_kernel.DECODE_MAX_BATCH); prefill chunks take it from here either way.
GEMM_BF16_MIN_ROWS = 4
FBGEMM_MIN_ELEMS = 1 << 20  # one-row matmuls use fbgemm only for weights this big (N * K)
KERNEL_MAX_ROWS = 1  # at 2+ rows fbgemm's fp16 GEMM caught up with cpu_kernel


@dataclass(slots=True)
class Int8Weight:
    q: Tensor  # [N, K] int8
    scale: Tensor  # [N] bfloat16 (CPU kernel) or the activation dtype
    # [N, K] float weight for many rows (bf16, possibly oneDNN-packed, or the model's dtype)
    full: Tensor | None
    full_min_rows: int = 1  # inputs with at least this many rows use ``full``
    packed: Any = None  # fbgemm's prepacked fp16 copy of the weight on CPU, or None
    one_row_packed: bool = False  # one input row goes to ``packed`` too (big weights)
    kernel: Any = None  # cpu_kernel's library where it runs (CPU), else None
    scale32: Tensor | None = None  # [N] float32 scale for ``kernel``
    gemm: Any = None  # cpu_kernel's bf16 library when ``full`` is packed for its GEMM


def quantize_int8(w: Tensor, keep_full: bool) -> Int8Weight:
    """w: [N, K] float -> per-channel symmetric int8."""
    scale = w.float().abs().amax(dim=1).clamp(min=1e-8) / 127.0  # [N]
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    cpu = w.device.type == "cpu"
    packed = _fbgemm_pack(w) if cpu else None
    big = w.numel() >= FBGEMM_MIN_ELEMS
    kernel = cpu_kernel.load() if cpu else None
    full, min_rows, gemm = None, 1, None
    if keep_full and cpu and native_bf16():
        gemm = cpu_kernel.load_bf16() if cpu_kernel.gemm_fits(*w.shape) else None
        if gemm is not None:
            full, min_rows = cpu_kernel.pack_pairs(gemm, w), GEMM_BF16_MIN_ROWS
        else:
            full, min_rows = w.to(torch.bfloat16), BF16_MIN_ROWS
            if (packed_bf16 := _onednn_pack(full)) is not None:
                full, min_rows = packed_bf16, PACKED_BF16_MIN_ROWS
    elif keep_full:
        full, min_rows = w, 1 + (INT8_MAX_ROWS if packed is None else FP16_MAX_ROWS)
    scale16 = scale.to(torch.bfloat16)
    return Int8Weight(q, scale16, full, min_rows, packed, big, kernel, scale.float(), gemm)


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _fbgemm_pack(w: Tensor) -> Any:
    """Prepack ``w`` as fp16 for ``quantized::linear_dynamic_fp16``; None without fbgemm."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return None
    try:
        return torch.ops.quantized.linear_prepack_fp16(w.float(), None)
    except (RuntimeError, AttributeError):
        return None


def _onednn_pack(w: Tensor) -> Tensor | None:
    """``w`` (bf16) in oneDNN's blocked layout for ``mkldnn._linear_pointwise``; None where
    this torch has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(w, 1)
    except (RuntimeError, AttributeError):
        return None


def linear(
    x: Tensor, w: Tensor | Int8Weight, bias: Tensor | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """x: [..., K] -> [..., N] in ``dtype`` (default: x's). An fp32 model's prefill may pass
    bf16 activations to the bf16 GEMM (``full``) and keep its bf16 output."""
    out = dtype or x.dtype
    if isinstance(w, Tensor):
        return F.linear(x, w, bias).to(out)
    K = x.shape[-1]
    rows = x.numel() // K
    if w.full is not None and rows >= w.full_min_rows:
        if w.gemm is not None:  # packed for cpu_kernel's bf16 GEMM
            y = cpu_kernel.gemm_bf16(w.gemm, x, w.full, out)
            return y if bias is None else y + bias
        if w.full.is_mkldnn:  # oneDNN's prepacked bf16 weight
            xb = x.to(torch.bfloat16)
            # the overload itself: the packet's dispatch added ~5 us a call (120 a step)
            y = torch.ops.mkldnn._linear_pointwise.default(xb, w.full, None, "none", [], "")
        elif w.full.dtype == x.dtype:
            return F.linear(x, w.full, bias).to(out)
        else:
            y = F.linear(x.to(w.full.dtype), w.full)
        y = y.to(out)
        return y if bias is None else y + bias
    x2 = x.reshape(rows, K)
    if w.kernel is not None and rows <= KERNEL_MAX_ROWS and x.dtype == torch.float32:
        assert w.scale32 is not None
        b = bias if bias is not None and bias.dtype == torch.float32 else None
        y = cpu_kernel.q8_linear(w.kernel, x2.contiguous(), w.q, w.scale32, b)
        y = y.view(*x.shape[:-1], w.q.shape[0])
        y = y if bias is None or b is not None else y + bias
        return y.to(out)
    if w.packed is not None and (rows > 1 or w.one_row_packed):
        y = torch.ops.quantized.linear_dynamic_fp16(x2.float(), w.packed)
    elif x.device.type == "cpu":
        y = torch._weight_int8pack_mm(x2.to(torch.bfloat16), w.q, w.scale)
    else:
        y = F.linear(x2, w.q.to(x.dtype)) * w.scale.to(x.dtype)
    y = y.view(*x.shape[:-1], w.q.shape[0]).to(out)
    return y if bias is None else y + bias
