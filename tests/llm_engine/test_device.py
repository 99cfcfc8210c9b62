"""The engine as it runs on a GPU: torch's ops throughout, SDPA for attention.

``EngineConfig(device="cuda")`` resolves to bfloat16 weights and K/V with no quantization,
the "bf16" setting here. The CPU kernels serve float32 activations over float32 or bf16 pools
only, so on CPU these tests drive every torch op the CUDA path runs: batched decode with
padding masks, chunked prefill over a gathered context, steps that mix the two. The "fp32"
setting runs the same ops at float32 (a float16 pool), where rounding is small enough to
compare runs tightly. Where torch sees a GPU, every test runs there too: the CUDA check.

With ``PARLEY_TEST_LLM_DIR`` naming a model, the module needs no other test fixture: on a GPU
machine without the model packages, ``bench/cuda_check.py run`` runs it alone
(``--noconftest``) over a model of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from llm_engine import Engine, EngineConfig
from tests.llm_engine.helpers import checked_engine, greedy, hf_logits, next_logits

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
QUESTION = "What is the capital of France? Tell me about the history of the city."
STORY = (
    "The train left the station at dawn, and the fields beyond the window were still grey. "
    "A woman in the next seat unfolded a map of the coast and traced a road with her finger. "
    "By noon the hills had given way to marshes, and the air smelled of salt and wet grass. "
    "The conductor walked through the carriage twice, calling out towns nobody got off at. "
    "When the sea finally appeared, it was flat and silver under a low sky."
)


@dataclass(frozen=True, slots=True)
class Setting:
    dtype: str
    kv_dtype: str
    # Each shape of a matmul rounds differently, so two runs of one greedy reply (alone and
    # batched, chunked and whole) may part at a near tie: only where the top logit led the
    # runner-up by less than `margin`. Until they part, their next-token distributions
    # differ by at most `kl`. Measured on SmolLM2 (4 prompts, 24 steps alone and batched):
    # bf16 up to 4e-3, fp32 up to 6e-7; a decode mask that let each sequence see one padded
    # key too many gave 4e-3 to 2e-2.
    margin: float
    kl: float


SETTINGS = {
    "bf16": Setting("bfloat16", "bfloat16", margin=1.0, kl=2e-2),
    "fp32": Setting("float32", "float16", margin=0.05, kl=1e-5),
}


# PARLEY_TEST_LLM_DIR: a model of the check's own (bench/cuda_check.py); else the suite's
# SmolLM2 and its HF copy, loaded once for every module (tests/conftest.py, llm_engine's)
OWN_MODEL = os.environ.get("PARLEY_TEST_LLM_DIR")


@pytest.fixture(scope="module")
def llm_dir(request: pytest.FixtureRequest) -> Path:
    return Path(OWN_MODEL) if OWN_MODEL else request.getfixturevalue("smol_dir")


@pytest.fixture(scope="module")
def hf_model(request: pytest.FixtureRequest, llm_dir: Path) -> Any:
    if not OWN_MODEL:
        return request.getfixturevalue("hf_smol")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=[(d, s) for d in DEVICES for s in SETTINGS], ids="-".join)
def device_engine_module(request: pytest.FixtureRequest, llm_dir: Path) -> Iterator[Engine]:
    device, name = request.param
    setting = SETTINGS[name]
    config = EngineConfig(
        model_dir=llm_dir,
        device=device,
        dtype=setting.dtype,
        kv_dtype=setting.kv_dtype,
        quant="none",
        num_blocks=128,
        block_size=16,
        max_batch=8,
        max_step_tokens=64,  # prompts of a few sentences prefill in chunks
    )
    engine = Engine(config)
    engine.start()
    yield engine
    engine.close()


def _setting(engine: Any) -> Setting:
    return next(s for s in SETTINGS.values() if s.dtype == engine.config.dtype)


@pytest.fixture
def engine(device_engine_module: Engine) -> Iterator[Any]:
    yield from checked_engine(device_engine_module)


def _kl(ref: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """KL(ref || got) of the softmaxes of logits [..., V], per row."""
    p, q = ref.float().log_softmax(-1), got.float().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


def _prompt(engine: Any, text: str) -> list[int]:
    tok, message = engine.tokenizer, {"role": "user", "content": text}
    return list(tok.encode(tok.render([message], add_generation_prompt=True)))


async def _margins(engine: Any, prompt: list[int], reply: list[int]) -> list[float]:
    """How far each token of ``reply`` led the runner-up when it was picked (teacher forced)."""
    conv = engine.open_conversation()
    try:
        await conv.append_tokens(prompt + reply)

        def fn(st: Any) -> torch.Tensor:
            return engine.runner.all_logits(st.seq, len(prompt) - 1, len(reply)).float().cpu()

        top2 = (await engine._call(fn, conv._state)).topk(2, dim=-1).values
    finally:
        await conv.close()
    return (top2[:, 0] - top2[:, 1]).tolist()


async def _agree(engine: Any, prompt: list[int], reply: list[int], other: list[int]) -> int:
    """Assert that ``other`` repeats the greedy ``reply`` to ``prompt``, or parts from it only
    where the reply's token led the runner-up by less than the setting's margin. Returns
    how many tokens they share."""
    margin = _setting(engine).margin
    parted = next((i for i, (a, b) in enumerate(zip(reply, other, strict=True)) if a != b), None)
    if parted is not None:
        lead = (await _margins(engine, prompt, reply))[parted]
        assert lead < margin, f"token {parted} differs, though it led by {lead:.2f}"
    return len(reply) if parted is None else parted


def test_cuda_resolves_to_the_configuration_tested_here(tmp_path: Path) -> None:
    cfg = EngineConfig(model_dir=tmp_path, device="cuda")
    resolved = (cfg.resolved_dtype(), cfg.resolved_quant(), cfg.resolved_kv_dtype())
    assert resolved == ("bfloat16", "none", "bfloat16")


async def test_attention_runs_through_torch(engine: Any) -> None:
    """No CPU kernel attends here, so the tests below cover the torch path."""
    runner, setting = engine.runner, _setting(engine)
    assert runner.model.w.embed.dtype == getattr(torch, setting.dtype)
    assert runner.kv.kv.dtype == getattr(torch, setting.kv_dtype)
    assert runner._attn_kernel is None and runner._prefill_kernel is None
    assert runner.model._decode_one is None


async def test_logits_are_as_close_to_float32_as_hfs_at_the_same_precision(
    engine: Any, hf_model: Any
) -> None:
    """Rounding moves every logit; the engine must move them little more than HF's forward in
    the engine's lowest precision does (KL against HF in float32: the mean over all
    positions, and the next token's after a prefill in three parts: fresh, a chunk over
    resident context, a one-token decode). Measured, as a share of HF's: 0.72 in bf16 (on
    SmolLM2 and on random weights), 0.04-0.07 at float32 over a float16 pool."""
    device, setting = engine.runner.device, _setting(engine)
    ids = _prompt(engine, QUESTION)
    ref = hf_logits(hf_model, ids)
    lowest = getattr(torch, setting.kv_dtype)  # the pool's: never finer than the weights' here
    hf = copy.deepcopy(hf_model).to(device=device, dtype=lowest)
    with torch.no_grad():
        hf_low = hf(torch.tensor([ids], device=device)).logits[0].float().cpu()
    conv = engine.open_conversation()
    try:
        await conv.append_tokens(ids[:5])
        await conv.append_tokens(ids[5:-1])
        await conv.append_tokens(ids[-1:])
        last = (await next_logits(engine, conv)).float().cpu()

        def every(st: Any) -> torch.Tensor:
            return engine.runner.all_logits(st.seq, 0, len(ids)).float().cpu()

        full = await engine._call(every, conv._state)
    finally:
        await conv.close()
    budget = _kl(ref, hf_low)
    assert _kl(ref, full).mean() <= 1.5 * budget.mean()
    assert _kl(ref[-1], last) <= 1.5 * budget.mean() + budget[-1]


@contextlib.contextmanager
def _step_logits(engine: Any) -> Iterator[dict[int, list[torch.Tensor]]]:
    """The logits each step hands to sampling, per conversation id, while in the block."""
    seen: dict[int, list[torch.Tensor]] = defaultdict(list)
    emit = engine._emit

    def record(seqs: list[Any], logits: torch.Tensor) -> None:
        for seq, row in zip(seqs, logits.float().cpu(), strict=True):
            seen[seq.seq_id].append(row)
        emit(seqs, logits)

    engine._emit = record
    try:
        yield seen
    finally:
        del engine._emit


async def test_concurrent_generations_equal_their_single_stream(engine: Any) -> None:
    """Prompts of different lengths (one over a step's 64 tokens, so its prefill is chunked
    and shares steps with the others' decodes) decode together as they do alone: the same
    distributions at every step, up to rounding, until (if ever) a near tie parts them."""
    prompts = [_prompt(engine, t) for t in (QUESTION, "Name a color.", STORY, "Count to 5.")]
    assert max(map(len, prompts)) > engine.config.max_step_tokens

    async def run(ids: list[int]) -> tuple[int, list[int]]:
        conv = engine.open_conversation()
        try:
            await conv.append_tokens(ids)
            return conv.id, (await greedy(conv, 24))[0]
        finally:
            await conv.close()

    with _step_logits(engine) as logits:
        alone = [await run(ids) for ids in prompts]
        together = await asyncio.gather(*(run(ids) for ids in prompts))
    for ids, (a, one), (b, many) in zip(prompts, alone, together, strict=True):
        same = await _agree(engine, ids, one, many) + 1  # the step that parts them compares too
        kl = _kl(torch.stack(logits[a][:same]), torch.stack(logits[b][:same]))
        assert kl.max() <= _setting(engine).kl, f"step {int(kl.argmax())}: {float(kl.max()):.1e}"


async def test_turn_by_turn_equals_recompute_and_truncate_equals_fresh(engine: Any) -> None:
    """A turn prefilled over resident history predicts as the history prefilled whole; a reply
    truncated away and generated again comes out as a fresh conversation's on that history."""
    a = engine.open_conversation("You are a helpful assistant.")
    b = engine.open_conversation()
    c = engine.open_conversation()
    try:
        await a.append({"role": "user", "content": "Tell me about the moon."})
        reply, _ = await greedy(a, 16, add_generation_prompt=True)
        asked = len(a.tokens) - len(reply)
        turn_2 = {"role": "user", "content": "And about the sun?"}
        await a.append(turn_2)
        closed = engine.tokenizer.render([turn_2])
        header = engine.tokenizer.render([turn_2], add_generation_prompt=True)[len(closed) :]
        await a.append_tokens(engine.tokenizer.encode(header))
        await b.append_tokens(list(a.tokens))  # the whole history in one prefill
        turn, whole = await next_logits(engine, a), await next_logits(engine, b)
        assert _kl(whole, turn) <= _setting(engine).kl

        await a.truncate(asked)  # back to before the reply: it must come out again
        again, _ = await greedy(a, 16)
        await c.append_tokens(list(a.tokens)[:asked])
        fresh, _ = await greedy(c, 16)
        prompt = list(a.tokens)
        await _agree(engine, prompt, fresh, again)
        await _agree(engine, prompt, fresh, reply)
    finally:
        for conv in (a, b, c):
            await conv.close()
