"""The C kernels of :mod:`llm_engine.cpu_kernel` against the torch math they replace."""

from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F

from llm_engine import cpu_kernel
from llm_engine.model import apply_rope_
from llm_engine.quant import linear, quantize_int8


def _built(lib: ctypes.CDLL | None, instead: str) -> ctypes.CDLL:
    """``lib``, or skip the test where it could not be built here (``instead``: what runs)."""
    if lib is None:
        pytest.skip(f"not built on this machine: {instead}")
    return lib


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:  # gcc, AVX2, torch's bundled libgomp
    return _built(cpu_kernel.load(), "torch's kernels serve instead")


@pytest.mark.parametrize(("rows", "k"), [(1, 576), (1, 100), (2, 64), (3, 160), (7, 96)])
def test_q8_linear_matches_dequantized(lib: ctypes.CDLL, rows: int, k: int) -> None:
    """Every row tiling (4, 2, 1) and a K that is not a multiple of 8 or 32."""
    torch.manual_seed(0)
    w, x, bias = torch.randn(48, k), torch.randn(rows, k), torch.randn(48)
    q = quantize_int8(w, keep_full=False)
    assert q.scale32 is not None
    ref = x @ (q.q.float() * q.scale32[:, None]).T + bias
    got = cpu_kernel.q8_linear(lib, x, q.q, q.scale32, bias)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def wide_lib() -> ctypes.CDLL:  # and AVX512-VNNI
    return _built(cpu_kernel.q8_wide(), "decode's projections stay on q8_linear")


@pytest.mark.parametrize(
    ("rows", "n", "k"), [(1, 48, 576), (3, 48, 1536), (4, 49, 100), (5, 7, 77), (2, 6, 20)]
)
def test_q8_linear_vnni_matches_dequantized(
    wide_lib: ctypes.CDLL, rows: int, n: int, k: int
) -> None:
    """Row blocks of 4, 3, 2 and 1, output groups of 4 and a last short one, K ending mid
    step or shorter than one. Activations are rounded to int16 at each row's scale: 2^-15 of
    its largest value, well inside the int8 weights' own error."""
    torch.manual_seed(0)
    w, x, bias = torch.randn(n, k), torch.randn(rows, k), torch.randn(n)
    x[0, 3] = 40.0  # an outlier sets its row's scale; the other rows keep their own
    q = quantize_int8(w, keep_full=False)
    assert q.scale32 is not None
    ref = x @ (q.q.float() * q.scale32[:, None]).T + bias
    got = cpu_kernel.q8_linear(wide_lib, x, q.q, q.scale32, bias, wide=True)
    assert got.shape == (rows, n)
    err = (got - ref).abs().amax(dim=1) / ref.abs().amax(dim=1)
    assert err[0] < 1e-3  # its step is 40 / 32767
    assert (err[1:] < 1e-4).all()  # a step of ~4 / 32767


def test_q8_linear_vnni_long_rows_do_not_overflow(wide_lib: ctypes.CDLL) -> None:
    """Every weight at 127 and every activation at the row's largest value: 40,000 products
    of 127 * 32767 each, ~20x what an int32 holds. The sums become float in time."""
    k = 40_000
    q = torch.full((5, k), 127, dtype=torch.int8)
    scale = torch.full((5,), 1 / 127)
    x = torch.ones(2, k)
    x[1] = -0.5
    got = cpu_kernel.q8_linear(wide_lib, x, q, scale, None, wide=True)
    want = torch.tensor([[float(k)] * 5, [-k / 2] * 5])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


def test_one_row_linear_uses_the_kernel(lib: ctypes.CDLL) -> None:
    torch.manual_seed(0)
    w, x = torch.randn(96, 64), torch.randn(1, 1, 64)
    q = quantize_int8(w, keep_full=True)
    assert q.kernel is lib
    got = linear(x, q, torch.ones(96))
    ref = x @ (q.q.float() * q.scale.float()[:, None]).T + 1
    assert got.shape == (1, 1, 96)
    assert (got - ref).abs().max() / ref.abs().max() < 1e-2  # bf16 scales in the reference


def _scattered_pool(
    lens: list[int], bs: int, Hkv: int, D: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random pool with a few spare blocks, and block tables [len(lens), nb] that hold each
    sequence's blocks in scattered order, zero-padded."""
    need = [-(-n // bs) for n in lens]
    pool = torch.randn(sum(need) + 3, bs, 2, Hkv, D).to(dtype)
    order = torch.randperm(len(pool)).tolist()
    tables = torch.zeros(len(lens), max(need), dtype=torch.int64)
    for b, n in enumerate(need):
        tables[b, :n] = torch.tensor(order[sum(need[:b]) : sum(need[: b + 1])])
    return pool, tables


def _decode(
    lib: ctypes.CDLL, q: torch.Tensor, pool: torch.Tensor, tables: torch.Tensor,
    lens: list[int], bs: int, threads: int,
) -> torch.Tensor:  # fmt: skip
    """cpu_kernel.paged_decode on ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return cpu_kernel.paged_decode(lib, q, pool, tables, torch.tensor(lens), bs)
    finally:
        torch.set_num_threads(before)


# Short contexts: one chunk per (sequence, KV head). Long ones with few sequences are split
# into chunks (merged by their max and sum), some of them empty for the shorter sequence.
# D = 16, 72 and 128: fewer than 32 columns, two 32-column slabs plus 8, four slabs. GQA
# groups of 3 (SmolLM2: one pass of three heads), 7 (3, 3, 1), 5 (3, 2) and 1 (no grouping).
@pytest.mark.parametrize(
    ("lens", "D", "threads"),
    [
        ([10, 3, 16], 16, 2),
        ([10, 3, 16] * 4, 16, 2),
        ([300], 72, 2),
        ([700, 45], 128, 2),
        ([257, 1, 130], 64, 1),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("H", "Hkv"), [(6, 2), (7, 1), (10, 2), (4, 4)])
def test_paged_decode_matches_sdpa(
    lib: ctypes.CDLL, lens: list[int], D: int, threads: int, dtype: torch.dtype, H: int, Hkv: int
) -> None:
    """Sequences of different lengths, scattered blocks; a float32 or bf16 pool (read as the
    float32 values it holds)."""
    torch.manual_seed(0)
    bs = 4
    pool, tables = _scattered_pool(lens, bs, Hkv, D, dtype)
    B = len(lens)
    q = torch.randn(B, 1, H + 2 * Hkv, D)[:, :, :H]  # strided rows, as the model passes it
    got = _decode(lib, q, pool, tables, lens, bs, threads)
    for b in range(B):
        S = lens[b]
        ctx = pool[tables[b]].reshape(-1, 2, Hkv, D)[:S].float()  # [S, 2, Hkv, D]
        ref = F.scaled_dot_product_attention(
            q[b].transpose(0, 1), ctx[:, 0].transpose(0, 1), ctx[:, 1].transpose(0, 1),
            enable_gqa=True,
        )  # fmt: skip
        torch.testing.assert_close(got[b, 0], ref.transpose(0, 1).reshape(-1))


def test_paged_decode_out_of_memory_is_an_error_not_a_crash(lib: ctypes.CDLL) -> None:
    """A context too long for its scratch buffer (2^60 positions: malloc fails; no position
    is read before it does) raises MemoryError, and the kernel still works afterwards."""
    pool, tables = torch.randn(2, 4, 2, 1, 8), torch.zeros(1, 1, dtype=torch.int64)
    q = torch.randn(1, 1, 2, 8)
    with pytest.raises(MemoryError, match="paged_decode"):
        cpu_kernel.paged_decode(lib, q, pool, tables, torch.tensor([1 << 60]), 4)
    assert cpu_kernel.paged_decode(lib, q, pool, tables, torch.tensor([3]), 4).isfinite().all()


def test_rms_norm_adds_the_residual_in_place(lib: ctypes.CDLL) -> None:
    torch.manual_seed(0)
    x, r, w = torch.randn(2, 3, 64), torch.randn(2, 3, 64), torch.randn(64)
    want_x = x + r
    want = F.rms_norm(want_x, (64,), w, 1e-5)
    got = cpu_kernel.rms_norm(lib, x, r, w, 1e-5)
    torch.testing.assert_close(x, want_x)
    torch.testing.assert_close(got, want)


def test_rope_matches_torch(lib: ctypes.CDLL) -> None:
    torch.manual_seed(0)
    D, max_len = 16, 50
    table = torch.randn(2, max_len, D)
    x = torch.randn(5, 7, D)
    pos = torch.tensor([0, 3, 49, 7, 7])
    want = x.clone()
    cos, sin = table[:, pos].unsqueeze(2)  # [5, 1, D] each
    apply_rope_(want[:, :4], cos, sin)
    cpu_kernel.rope_(lib, x, 4, table, pos)
    torch.testing.assert_close(x, want)


@pytest.fixture(scope="module")
def bf16_lib() -> ctypes.CDLL:  # and AVX512-BF16
    return _built(cpu_kernel.load_bf16(), "prefill attention stays with torch's SDPA")


def _round_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()


@pytest.mark.parametrize(
    ("start", "T", "H", "Hkv", "D", "bs", "threads"),
    [
        (0, 37, 9, 3, 64, 16, 2),  # a fresh prefill: causal within the chunk
        (900, 41, 9, 3, 64, 16, 2),  # a turn appended to a long history
        (5, 1, 6, 2, 32, 4, 1),  # one token, small blocks
        (100, 130, 8, 1, 128, 16, 2),  # GQA 8:1, wide heads, more rows than one task
        (17, 33, 14, 2, 64, 8, 1),  # contexts that end mid-block
        (40, 21, 4, 2, 96, 16, 2),  # a head size without its own unrolled score loop
    ],
)
def test_prefill_attention_matches_sdpa(
    bf16_lib: ctypes.CDLL, start: int, T: int, H: int, Hkv: int, D: int, bs: int, threads: int
) -> None:
    """Causal attention of a chunk over its paged context (scattered blocks) equals SDPA on the
    same inputs rounded to bf16, up to the bf16 rounding of the probabilities."""
    torch.manual_seed(0)
    S = start + T
    nb = -(-S // bs)
    pool = torch.randn(nb + 5, bs, 2, Hkv, D)
    table = torch.randperm(nb + 5)[:nb].contiguous()  # scattered, not in order
    q = torch.randn(1, T, H + 2 * Hkv, D)[:, :, :H] * 2  # strided rows, as the model passes it
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu_kernel.prefill_attention(bf16_lib, q, pool, table, start, bs)
    finally:
        torch.set_num_threads(before)
    ctx = pool[table].reshape(-1, 2, Hkv, D)[:S]  # [S, 2, Hkv, D]
    mask = torch.arange(S)[None, :] <= torch.arange(start, S)[:, None]  # [T, S]
    want = F.scaled_dot_product_attention(
        _round_bf16(q[0] * D**-0.5).transpose(0, 1), _round_bf16(ctx[:, 0]).transpose(0, 1),
        _round_bf16(ctx[:, 1]).transpose(0, 1), attn_mask=mask, scale=1.0, enable_gqa=True,
    )  # fmt: skip
    want = want.transpose(0, 1).reshape(1, T, H * D)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 3e-3 * want.abs().max()
    exact = F.scaled_dot_product_attention(
        q[0].transpose(0, 1), ctx[:, 0].transpose(0, 1), ctx[:, 1].transpose(0, 1),
        attn_mask=mask, enable_gqa=True,
    ).transpose(0, 1).reshape(1, T, H * D)  # fmt: skip
    assert (got - exact).abs().max() < 2e-2 * exact.abs().max()  # bf16's rounding, no more
    # a bf16 pool holds what the kernel packs from float32: the same result, bit for bit
    bf16_pool = cpu_kernel.prefill_attention(bf16_lib, q, pool.bfloat16(), table, start, bs)
    assert torch.equal(bf16_pool, got)


def test_prefill_attention_out_of_memory_returns_an_error(bf16_lib: ctypes.CDLL) -> None:
    """Packing 2^50 positions cannot be allocated: the kernel says so before reading any."""
    pool, table = torch.randn(2, 4, 2, 1, 32), torch.zeros(1, dtype=torch.int64)
    q, out = torch.randn(1, 1, 1, 32), torch.empty(1, 1, 32)
    status = bf16_lib.prefill_attention(
        q.data_ptr(), 32, pool.data_ptr(), table.data_ptr(), 1 << 50, 1, out.data_ptr(),
        1, 1, 32, 4, 32**-0.5, 0, 1,
    )  # fmt: skip
    assert status == -1


# One sequence (split into chunks for the threads) or many; contexts from 1 key to ones that
# end mid-block and mid-group; GQA groups of 3 (SmolLM2), 7 (two passes of 4 heads over V),
# 1 and 5; head sizes of one, two, three and four 32-wide vectors (48 columns: a 64-wide V
# tile, then a 32-wide one).
@pytest.mark.parametrize(
    ("lens", "H", "Hkv", "D", "bs", "threads"),
    [
        ([1], 9, 3, 64, 16, 2),
        ([950], 9, 3, 64, 16, 2),
        ([37, 1, 300, 64, 17] * 4, 9, 3, 64, 16, 2),
        ([130, 45], 14, 2, 64, 8, 1),
        ([700, 3], 4, 4, 96, 16, 2),
        ([33, 100], 10, 2, 128, 4, 2),
        ([66], 8, 8, 32, 16, 1),
    ],
)
def test_bf16_paged_decode_matches_sdpa(
    bf16_lib: ctypes.CDLL, lens: list[int], H: int, Hkv: int, D: int, bs: int, threads: int
) -> None:
    """The AVX512-BF16 decode over a bf16 pool (scattered blocks) equals SDPA on the same
    inputs with the query rounded to bf16, up to the bf16 rounding of the probabilities."""
    torch.manual_seed(0)
    pool, tables = _scattered_pool(lens, bs, Hkv, D, torch.bfloat16)
    q = torch.randn(len(lens), 1, H + 2 * Hkv, D)[:, :, :H] * 2  # strided rows
    got = _decode(bf16_lib, q, pool, tables, lens, bs, threads)
    for b, S in enumerate(lens):
        ctx = pool[tables[b]].reshape(-1, 2, Hkv, D)[:S].float().permute(1, 2, 0, 3)
        qb = _round_bf16(q[b] * D**-0.5).transpose(0, 1)
        want = F.scaled_dot_product_attention(qb, ctx[0], ctx[1], scale=1.0, enable_gqa=True)
        want = want.transpose(0, 1).reshape(-1)
        assert (got[b, 0] - want).abs().max() < 3e-3 * want.abs().max(), (b, S)


def test_bf16_paged_decode_refuses_what_it_cannot_read(bf16_lib: ctypes.CDLL) -> None:
    """A float32 pool or a head size that is not a multiple of 32: a clear error, no read."""
    tables, lens = torch.zeros(1, 1, dtype=torch.int64), torch.tensor([3])
    with pytest.raises(ValueError, match="bf16 pool"):
        cpu_kernel.paged_decode(bf16_lib, torch.randn(1, 1, 2, 32), torch.randn(2, 4, 2, 1, 32),
                                tables, lens, 4)  # fmt: skip
    pool = torch.randn(2, 4, 2, 1, 40).bfloat16()
    with pytest.raises(ValueError, match="32 n dimensions"):
        cpu_kernel.paged_decode(bf16_lib, torch.randn(1, 1, 2, 40), pool, tables, lens, 4)
    with pytest.raises(MemoryError, match="paged_decode"):
        pool = torch.randn(2, 4, 2, 1, 32).bfloat16()
        q = torch.randn(1, 1, 2, 32)
        cpu_kernel.paged_decode(bf16_lib, q, pool, tables, torch.tensor([1 << 60]), 4)


@pytest.mark.parametrize("out_bf16", [True, False])
def test_add_norm_reads_and_writes_bf16(bf16_lib: ctypes.CDLL, out_bf16: bool) -> None:
    """x += r (a bf16 GEMM's output) in place, then RMSNorm: torch's result, rounded to bf16
    the way torch rounds (or float32), for a batch of rows large enough to go parallel."""
    torch.manual_seed(0)
    x, r, w = torch.randn(130, 576), torch.randn(130, 576).bfloat16(), torch.randn(576)
    want_x = x + r.float()
    want = F.rms_norm(want_x, (576,), w, 1e-5)
    got = cpu_kernel.add_norm(bf16_lib, x, r, w, 1e-5, out_bf16)
    assert torch.equal(x, want_x)
    if out_bf16:
        assert got.dtype == torch.bfloat16
        assert (got != want.bfloat16()).float().mean() < 0.001  # rounding ties of the sums
    else:
        torch.testing.assert_close(got, want)
    alone = cpu_kernel.add_norm(bf16_lib, want_x.clone(), None, w, 1e-5, False)
    torch.testing.assert_close(alone, want)


def test_silu_mul_of_a_bf16_gemm_output(bf16_lib: ctypes.CDLL) -> None:
    """silu(gate) * up over [rows, 2 * inter] bf16, computed in float32, rounded to bf16:
    within one bf16 step of torch's float32 result, for large and negative gates too."""
    torch.manual_seed(0)
    gu = (torch.randn(70, 2 * 1536) * 6).bfloat16()
    got = cpu_kernel.silu_mul(bf16_lib, gu)
    gate, up = gu.float().chunk(2, dim=-1)
    want = F.silu(gate) * up
    assert got.shape == (70, 1536) and got.dtype == torch.bfloat16
    assert ((got.float() - want).abs() <= want.abs() * 2**-7 + 1e-30).all()
    assert (got != want.bfloat16()).float().mean() < 0.01


# row blocks: 1 | 3 | 8, 2 | 8, 4 | 8, 7 | 6, 6, 5 | 8, 8, 8, 7, 7, 7, 7: every size 1-8
@pytest.mark.parametrize("rows", [1, 3, 10, 12, 15, 17, 52])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemm_bf16_matches_torch(bf16_lib: ctypes.CDLL, rows: int, dtype: torch.dtype) -> None:
    """x @ w.T over bf16 inputs with float32 sums, from the packed weight: torch's product of
    the same bf16 values (float32 out, or rounded to bf16), for any number of rows."""
    torch.manual_seed(0)
    w, x = torch.randn(96, 160), torch.randn(rows, 2, 160)[:, 1]  # strided rows
    packed = cpu_kernel.pack_pairs(bf16_lib, w)
    assert packed.shape == (3, 80, 32)
    got = cpu_kernel.gemm_bf16(bf16_lib, x, packed, dtype)
    want = x.bfloat16().float() @ w.bfloat16().float().T
    assert got.shape == (rows, 96) and got.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    else:
        assert ((got.float() - want).abs() <= want.abs() * 2**-8 + 1e-6).all()
