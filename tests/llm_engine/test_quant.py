"""int8 weight-only decode and the torch.compile fallback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from llm_engine import cpu_kernel, quant
from llm_engine.quant import BF16_MIN_ROWS, FP16_MAX_ROWS, linear, quantize_int8
from tests.corpus import SENTENCES


@pytest.mark.parametrize("bf16", [True, False])
def test_int8_linear_close_to_float(bf16: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Few rows: the int8 kernels; many rows: the kept float weight, bf16 where the CPU has
    it (the other CPU kind is simulated, both paths run everywhere)."""
    if bf16 and not quant.native_bf16():
        pytest.skip("this CPU has no native bf16")
    monkeypatch.setattr(quant, "native_bf16", lambda: bf16)
    torch.manual_seed(0)
    w = torch.randn(96, 64)
    x = torch.randn(3, 64)
    q = quantize_int8(w, keep_full=True)
    ref = x @ w.T
    got = linear(x, q)  # few rows: the int8 kernel
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() / ref.abs().max() < 0.03
    assert q.full is not None
    many = torch.randn(q.full_min_rows, 64)  # many rows: the float weight
    if bf16:  # bf16 GEMM: inputs rounded to 8 significant bits
        if q.gemm is not None:  # bf16 pairs for cpu_kernel's GEMM
            assert q.full.dtype == torch.int32 and q.full.shape == (3, 32, 32)
            assert q.full_min_rows == quant.GEMM_BF16_MIN_ROWS
        else:  # oneDNN's prepacked copy where torch has oneDNN, else the plain bf16 weight
            assert q.full.dtype == torch.bfloat16
            packed = q.full.is_mkldnn
            assert q.full_min_rows == (quant.PACKED_BF16_MIN_ROWS if packed else BF16_MIN_ROWS)
        got, ref = linear(many, q), many @ w.T
        assert got.dtype == torch.float32
        assert (got - ref).abs().max() / ref.abs().max() < 0.01
    else:
        assert q.full is w and q.full_min_rows == FP16_MAX_ROWS + 1
        torch.testing.assert_close(linear(many, q), many @ w.T)
    assert linear(many[: q.full_min_rows - 1], q).shape == (q.full_min_rows - 1, 96)


async def test_int8_engine_agrees_with_float(smol_dir: Path, smol_engine: Any) -> None:
    from llm_engine import Engine, EngineConfig
    from tests.llm_engine.helpers import greedy

    async def first_tokens(engine: Any) -> list[int]:
        conv = engine.open_conversation()
        try:
            await conv.append({"role": "user", "content": "What is the capital of France?"})
            ids, _ = await greedy(conv, 6)
            return ids
        finally:
            await conv.close()

    engine = Engine(EngineConfig(model_dir=smol_dir, quant="int8", num_blocks=32))
    engine.start()
    try:
        assert engine.config.resolved_quant() == "int8"
        got = await first_tokens(engine)
    finally:
        engine.close()
    want = await first_tokens(smol_engine)
    assert got[:3] == want[:3]  # "The capital of": int8 noise must not change the answer


async def test_default_cpu_engine_keeps_turn_by_turn_equal_to_recompute(smol_dir: Path) -> None:
    """The CPU defaults (int8 weights, bf16 K/V, one forward per step): a conversation built turn
    by turn, with replies, a rollback and a second conversation decoding beside it, gives the
    next-token logits of one prefill of its tokens, up to the kernels' rounding (decodes and
    prefills multiply by different copies of the weights)."""
    from llm_engine import Engine, EngineConfig
    from tests.llm_engine.helpers import greedy, next_logits

    engine = Engine(EngineConfig(model_dir=smol_dir, num_blocks=64))
    engine.start()
    try:
        assert engine.config.resolved_kv_dtype() == "bfloat16"
        conv = engine.open_conversation("You are a helpful assistant.")
        other = engine.open_conversation("You are a poet.")
        await other.append({"role": "user", "content": "Write about the sea."})
        beside = asyncio.ensure_future(greedy(other, 24))  # shares the steps below
        for turn in ("What is the capital of France?", "And of Italy?"):
            await conv.append({"role": "user", "content": turn})
            await greedy(conv, 8)
        await conv.truncate(len(conv.tokens) - 3)
        await conv.append({"role": "user", "content": "Which one is bigger?"})
        await beside
        incremental = await next_logits(engine, conv)
        tokens = conv.tokens
        await conv.close()
        await other.close()
        fresh = engine.open_conversation()
        await fresh.append_tokens(tokens)
        recomputed = await next_logits(engine, fresh)
        await fresh.close()
        assert engine.free_blocks() == 64
    finally:
        engine.close()
    assert (incremental - recomputed).abs().max() < 0.05 * recomputed.abs().max()
    assert int(incremental.argmax()) == int(recomputed.argmax())


async def test_compile_failure_falls_back_to_eager(
    qwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_engine import Engine, EngineConfig
    from tests.llm_engine.helpers import greedy

    def broken_compile(fn: Any, **kw: Any) -> Any:
        def fail(*a: Any) -> Any:
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    engine = Engine(EngineConfig(model_dir=qwen_dir, compile=True, num_blocks=16))
    engine.start()
    try:
        conv = engine.open_conversation()
        await conv.append_tokens([1, 2, 3, 4])
        ids, _ = await greedy(conv, 3)
        assert len(ids) == 3
        await conv.close()
    finally:
        engine.close()


def test_fbgemm_path_close_to_float() -> None:
    """Big weights (one row) and few-row inputs go through fbgemm's fp16-weight kernel."""
    torch.manual_seed(0)
    w = torch.randn(2048, 576)  # >= FBGEMM_MIN_ELEMS
    q = quantize_int8(w, keep_full=True)
    if q.packed is None:
        pytest.skip("this torch build has no fbgemm")
    assert q.one_row_packed
    assert not quantize_int8(torch.randn(64, 64), keep_full=False).one_row_packed
    q.kernel = None  # one row goes to cpu_kernel where it builds (tested on its own)
    for rows in (1, q.full_min_rows - 1):  # from full_min_rows: the bf16 GEMM
        x = torch.randn(rows, 576)
        ref = x @ w.T
        got = linear(x, q)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert (got - ref).abs().max() / ref.abs().max() < 2e-3  # fp16 weights, fp32 math


def _runner(
    model_dir: Path, quant: bool, kv_dtype: torch.dtype = torch.float32, blocks: int = 40
) -> Any:
    from llm_engine.kv_cache import KVCache
    from llm_engine.model import Transformer
    from llm_engine.model_runner import ModelRunner
    from llm_engine.weights import load_model

    loaded = load_model(model_dir, torch.float32, "cpu")
    model = Transformer(loaded.config, loaded.weights, 512)
    if quant:
        model.quantize_int8(keep_full=True)
    mc = loaded.config
    kv = KVCache(mc.num_layers, blocks, 16, mc.num_kv_heads, mc.head_dim, kv_dtype, "cpu")
    return ModelRunner(model, kv, "cpu")


def _greedy_decode(runner: Any, prompts: list[list[int]], n: int) -> tuple[list[Any], Any]:
    """Prefill each prompt, then decode ``n`` tokens for all of them together."""
    from llm_engine.scheduler import ScheduledBatch, Sequence

    seqs = []
    for i, p in enumerate(prompts):
        seq = Sequence(i + 1, tokens=list(p), block_table=list(range(i * 8, i * 8 + 8)))
        runner.run(ScheduledBatch([], [(seq, len(p) - 1)], []))
        seq.num_cached = len(p) - 1
        seqs.append(seq)
    first = None
    for _ in range(n):
        out = runner.run(ScheduledBatch(seqs, [], []))
        first = out.logits if first is None else first
        for seq, tok in zip(seqs, out.logits.argmax(-1).tolist(), strict=True):
            seq.num_cached += 1
            seq.tokens.append(tok)
    return [s.tokens for s in seqs], first


@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_int8_decode_close_to_float(smol_dir: Path, batch: int, kv_dtype: torch.dtype) -> None:
    """int8 decode (both CPU kernels, head included), over a float32 or (the CPU default) a
    bf16 KV pool, keeps SmolLM2's logits and greedy tokens; so do two and five sequences at
    once: decode_one on int16 activations where the CPU has AVX512-VNNI, else five go through
    the layer loop where the projections' bf16 GEMM beats decode_one."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smol_dir / "tokenizer.json"))
    texts = ["The capital of France is", "One, two, three, four,", "def add(a, b):\n    return",
             "The opposite of hot is", "Monday, Tuesday,"]  # fmt: skip
    prompts = [tok.encode(t).ids for t in texts[:batch]]
    want, ref = _greedy_decode(_runner(smol_dir, quant=False), prompts, 8)
    got, logits = _greedy_decode(_runner(smol_dir, quant=True, kv_dtype=kv_dtype), prompts, 8)
    assert (logits - ref).abs().max() < 0.05 * ref.abs().max()
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))
    assert got == want


@pytest.mark.parametrize(
    ("model", "kv_dtype"),
    [("smol", torch.float32), ("qwen", torch.float32), ("smol", torch.bfloat16)],
)
def test_one_call_decode_matches_layer_by_layer(
    smol_dir: Path, qwen_dir: Path, model: str, kv_dtype: torch.dtype
) -> None:
    """A single sequence's decode runs every layer in one C call (``decode_one``); it must
    give the logits of the op-by-op forward (Qwen: q/k/v bias, untied head, GQA 4:2). Over a
    bf16 pool, the C call rounds the K/V it stores as torch does."""
    from tokenizers import Tokenizer

    model_dir = smol_dir if model == "smol" else qwen_dir
    prompt = Tokenizer.from_file(str(smol_dir / "tokenizer.json")).encode("Once upon a time").ids
    fused = _runner(model_dir, quant=True, kv_dtype=kv_dtype)
    assert fused.model._decode_one is not None
    layered = _runner(model_dir, quant=True, kv_dtype=kv_dtype)
    layered.model._decode_one = None
    got, got_logits = _greedy_decode(fused, [prompt], 24)
    want, want_logits = _greedy_decode(layered, [prompt], 24)
    assert got == want
    scale = want_logits.abs().max()
    if kv_dtype == torch.float32:
        assert (got_logits - want_logits).abs().max() < 1e-4 * scale
        return
    # Over a bf16 pool, sums in another order flip the rounding of a few stored values, and
    # the layers above see them: compare the first step's stored K/V instead. Rounding as
    # torch does, ~6% of them differ (by one bf16 step); truncating, ~65%.
    stored = []
    for runner in (fused, layered):
        runner.kv.kv.zero_()
        _greedy_decode(runner, [prompt], 1)
        stored.append(runner.kv.kv[:, 0, len(prompt) - 1].float())  # block 0: the new token
    assert not torch.equal(stored[0], torch.zeros_like(stored[0]))
    assert (stored[0] != stored[1]).float().mean() < 0.2
    assert (got_logits - want_logits).abs().max() < 1e-3 * scale


@pytest.mark.parametrize("model", ["smol", "qwen"])
def test_one_call_decode_of_many_sequences_tracks_the_float_model(
    smol_dir: Path, qwen_dir: Path, model: str
) -> None:
    """Past the rows where int8 weights win, decode_one runs its projections on the bf16
    GEMM itself (where the weights have bf16 copies for it) and serves any batch. Twelve
    sequences of different lengths (the GEMM's 8-row and 4-row blocks) must land as close to
    the float32 model as the layer loop running the same GEMM op by op, or closer: the loop
    rounds o's, gate/up's and down's outputs to bf16, the C call keeps them float32 (SmolLM2:
    a row's largest logit error 0.17-0.39 against the loop's 0.17-0.52, scale ~23). Qwen:
    q/k/v bias added after the GEMM. A sequence reading another's KV, a wrong weight or a
    lost bias is off by O(scale)."""
    from tokenizers import Tokenizer

    if cpu_kernel.load_bf16() is None:
        pytest.skip("no AVX512-BF16 here: decode_one serves at most 8 rows on int8 weights")
    tok = Tokenizer.from_file(str(smol_dir / "tokenizer.json"))
    text = "the cat sat on a mat while one two three dogs ran far away"
    prompts = [tok.encode(text.rsplit(" ", 11 - i)[0]).ids for i in range(12)]
    model_dir = smol_dir if model == "smol" else qwen_dir
    fused = _runner(model_dir, quant=True, kv_dtype=torch.bfloat16, blocks=96)
    one = fused.model._decode_one
    assert one is not None and one.max_batch >= len(prompts) and one._gemm is not None
    layered = _runner(model_dir, quant=True, kv_dtype=torch.bfloat16, blocks=96)
    layered.model._decode_one = None
    _, ref = _greedy_decode(_runner(model_dir, quant=False, blocks=96), prompts, 1)
    _, got = _greedy_decode(fused, prompts, 1)
    _, loop = _greedy_decode(layered, prompts, 1)
    got_err, loop_err = ((x - ref).abs().amax(-1) for x in (got, loop))  # per sequence
    assert got_err.max() < 0.03 * ref.abs().max()
    assert got_err.mean() <= 1.1 * loop_err.mean()


def test_one_call_decode_of_several_sequences_matches_each_alone(smol_dir: Path) -> None:
    """Five sequences of different lengths decoded together in one call (their own positions,
    block tables and KV; the int8 kernel's 4-row and 1-row paths) give what each gives
    alone. From three rows, on CPUs with AVX512-VNNI, the projections round activations to
    int16 (``q8_linear_vnni``; per row, ~2^-15 of its largest value, a step like bf16's for
    the rows' outliers), alone they stay float: up to ~1.2e-3 of the logits apart after 30
    layers, against O(1) for a sequence that read another's KV."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smol_dir / "tokenizer.json"))
    texts = ("The capital of France is", "One, two, three, four,", "def f(x):", "Hi", "A cat")
    prompts = [tok.encode(t).ids for t in texts]
    runner = _runner(smol_dir, quant=True)
    model = runner.model
    model._decode_one = model._bind_decode_one(max_batch=8)  # also past the GEMM's crossover
    assert model._decode_one is not None
    head = model.logits  # one row at a time: the head's kernel depends on the rows
    model.logits = lambda h: torch.cat([head(h[i : i + 1]) for i in range(len(h))])
    together, together_logits = _greedy_decode(runner, prompts, 16)
    for i, prompt in enumerate(prompts):
        alone, alone_logits = _greedy_decode(runner, [prompt], 16)
        assert together[i] == alone[0]
        scale = alone_logits.abs().max()
        tolerance = 5e-3 if cpu_kernel.q8_wide() is not None else 1e-4
        assert (together_logits[i] - alone_logits[0]).abs().max() < tolerance * scale


def test_one_forward_serves_a_steps_decodes_and_prefill_chunks(smol_dir: Path) -> None:
    """A step of two decodes and two prefill chunks (one completing a turn, one not) runs as
    one forward; its logits and the K/V it stores match the same work done one part at a
    time, up to the kernels' rounding (the decodes' rows go through the prefill matmul)."""
    from tokenizers import Tokenizer

    from llm_engine.scheduler import ScheduledBatch, Sequence

    tok = Tokenizer.from_file(str(smol_dir / "tokenizer.json"))
    texts = ("The capital of France is", "One, two, three,", "Once upon a time there", "Hi")
    prompts = [tok.encode(t).ids for t in texts]

    def step(runner: Any, together: bool) -> tuple[Any, list[Sequence]]:
        seqs = [
            Sequence(i + 1, tokens=list(p), block_table=list(range(i * 8, i * 8 + 8)))
            for i, p in enumerate(prompts)
        ]
        for seq in seqs[:2]:  # decoding: all but the last token cached
            runner.run(ScheduledBatch([], [(seq, len(seq.tokens) - 1)], []))
            seq.num_cached, seq.generating = len(seq.tokens) - 1, True
        seqs[2].generating = True  # its whole prompt in this step: logits wanted
        prefills = [(seqs[2], len(prompts[2])), (seqs[3], len(prompts[3]))]
        if together:
            logits = runner.run(ScheduledBatch(seqs[:2], prefills, [])).logits
        else:
            parts = [runner.run(ScheduledBatch(seqs[:2], [], [])).logits]
            parts += [runner.run(ScheduledBatch([], [p], [])).logits for p in prefills[:1]]
            runner.run(ScheduledBatch([], prefills[1:], []))
            logits = torch.cat(parts)
        return logits, seqs

    merged = _runner(smol_dir, quant=True, kv_dtype=torch.bfloat16)
    apart = _runner(smol_dir, quant=True, kv_dtype=torch.bfloat16)
    got, seqs = step(merged, together=True)
    want, _ = step(apart, together=False)
    assert got.shape == want.shape == (3, want.shape[1])
    # the decodes' rows: bf16 weights here, int8 apart (the tolerance of int8 against float)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    for seq in seqs:  # every token's K/V landed in its own slots
        slots = [seq.block_table[p // 16] * 16 + p % 16 for p in range(len(seq.tokens))]
        stored = [r.kv.kv.flatten(1, 2)[:, slots].float() for r in (merged, apart)]
        assert (stored[0] - stored[1]).abs().max() < 0.03 * stored[1].abs().max()


@pytest.mark.parametrize(("kv_dtype", "bias"), [(torch.bfloat16, False), (torch.float32, True)])
def test_one_call_layer_loop_matches_the_python_loop_bit_for_bit(
    smol_dir: Path, kv_dtype: torch.dtype, bias: bool
) -> None:
    """Where prefill's projections run as bf16 GEMMs, the layer loop runs as one C call
    (``prefill_layers``): the same kernels in the same order, so the logits, the hidden
    states and every K/V it stores are the Python loop's exactly. Over a fresh prompt, a
    chunk on top of earlier context, and a step of two decodes with two chunks; with a q/k/v
    bias (as Qwen2 has) added to SmolLM2's layers, and without. Past the last layer's K/V it
    computes only the rows read (a turn's last token, the decodes, scored rows; none for a
    chunk that does not end its prompt), and those match too."""
    from tokenizers import Tokenizer

    from llm_engine.scheduler import ScheduledBatch, Sequence

    runner = _runner(smol_dir, quant=True, kv_dtype=kv_dtype)
    model = runner.model
    if model._prefill_layers is None:
        pytest.skip("no AVX512-BF16 here: prefill's layers run op by op")
    if bias:
        torch.manual_seed(0)
        for lw in model.w.layers:
            lw.qkv_bias = torch.randn(lw.qkv.q.shape[0]) * 0.5
        model._prefill_layers = model._bind_prefill_layers()
    fused = model._prefill_layers
    assert fused is not None
    calls = []
    tok = Tokenizer.from_file(str(smol_dir / "tokenizer.json"))
    prompts = [tok.encode(" ".join(SENTENCES[i : i + 8])).ids[:40] for i in range(4)]
    assert all(len(p) == 40 for p in prompts)

    def work() -> list[torch.Tensor]:
        runner.kv.kv.zero_()
        seqs = [
            Sequence(i + 1, tokens=list(p), block_table=list(range(i * 8 + 7, i * 8 - 1, -1)))
            for i, p in enumerate(prompts)
        ]
        out = []
        for seq in seqs:
            seq.generating = True
        for seq in seqs[:2]:  # whole prompts; they decode in the step of four parts below
            out.append(runner.run(ScheduledBatch([], [(seq, len(seq.tokens))], [])).logits)
            seq.num_cached = len(seq.tokens)
            seq.tokens.append(int(out[-1].argmax()))
        runner.run(ScheduledBatch([], [(seqs[2], 23)], []))  # context for a chunk on top
        seqs[2].num_cached = 23
        seqs[3].logits_from = 5  # scored: rows 5.. of its chunk are read too
        step = runner.run(ScheduledBatch(seqs[:2], [(seqs[2], 17), (seqs[3], 40)], []))
        assert [first for _, first, _ in step.scored] == [5]
        out += [step.logits, step.scored[0][2]]
        out.append(runner.forward_tokens(seqs[3], 10, 30))  # recomputed over its own context
        return [*out, runner.kv.kv.clone()]

    def counted(*args: Any) -> torch.Tensor:
        calls.append(args)
        return fused(*args)

    model._prefill_layers = counted
    got = work()
    assert len(calls) == 5  # every forward above ran as one C call
    model._prefill_layers = None
    want = work()
    assert want[-1].abs().sum() > 0
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_bf16_prefill_attention_keeps_the_logits(smol_dir: Path, kv_dtype: torch.dtype) -> None:
    """Where the projections prefill in bf16 (CPUs with AVX512-BF16), prefill chunks attend
    through cpu_kernel.prefill_attention, reading the pool by block table; a chunk appended
    to earlier context gives the logits and next tokens of torch's SDPA over the gathered
    context (widened to float32 from a bf16 pool)."""
    from tokenizers import Tokenizer

    from llm_engine import cpu_kernel
    from llm_engine.scheduler import Sequence

    fast = _runner(smol_dir, quant=True, kv_dtype=kv_dtype)
    if fast._prefill_kernel is None:
        pytest.skip("no AVX512-BF16 here: prefill attention stays with torch's SDPA")
    assert fast._prefill_kernel is cpu_kernel.load_bf16()
    plain = _runner(smol_dir, quant=True, kv_dtype=kv_dtype)
    plain._prefill_kernel = None
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)
    ids = Tokenizer.from_file(str(smol_dir / "tokenizer.json")).encode(text).ids
    blocks = list(range(31, 31 - (len(ids) + 15) // 16, -1))  # out of order
    logits = []
    for runner in (fast, plain):
        seq = Sequence(1, tokens=ids, block_table=blocks)
        runner.forward_tokens(seq, 0, 37)  # earlier context, then a chunk on top of it
        logits.append(runner.all_logits(seq, 37, len(ids) - 37))
    got, want = logits
    assert (got - want).abs().max() < 0.03 * want.abs().max()  # bf16 rounding (1.6 % seen)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_bf16_prefill_activations_keep_the_logits(smol_dir: Path) -> None:
    """Where the projections prefill as bf16 GEMMs, the norms and SwiGLU read and write bf16
    in C (no torch casts between the GEMMs): against the float32 model, the logits stay as
    close as the cast path's, over a fresh prefill and a chunk on top of it."""
    from tokenizers import Tokenizer

    from llm_engine.scheduler import Sequence

    fast = _runner(smol_dir, quant=True, kv_dtype=torch.bfloat16)
    if fast.model._bf16 is None:
        pytest.skip("no AVX512-BF16 here: prefill's GEMMs take float32 activations")
    cast = _runner(smol_dir, quant=True, kv_dtype=torch.bfloat16)
    cast.model._bf16 = None
    text = " ".join(SENTENCES[:12])
    ids = Tokenizer.from_file(str(smol_dir / "tokenizer.json")).encode(text).ids[:120]
    logp = []
    for runner in (_runner(smol_dir, quant=False), fast, cast):
        seq = Sequence(1, tokens=ids, block_table=list(range(8)))
        first = runner.all_logits(seq, 0, 40)
        logp.append(torch.cat([first, runner.all_logits(seq, 40, len(ids) - 40)]).log_softmax(-1))
    ref, got, want = logp
    kl = [(ref.exp() * (ref - x)).sum(-1).mean().item() for x in (got, want)]
    assert kl[0] < 1.5 * kl[1] + 1e-4, kl  # 6.0e-4 vs 6.4e-4 seen
    top1 = [(ref.argmax(-1) == x.argmax(-1)).float().mean().item() for x in (got, want)]
    assert top1[0] >= top1[1] - 0.03, top1
