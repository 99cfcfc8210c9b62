"""LLM engine benchmark: the four scenarios of the GLM-5.1 High-Speed report on SmolLM2-135M.

Parley's engine side by side with HF transformers on the same weights (its faster dtype, greedy,
DynamicCache reused across turns) and with llama.cpp on the packaged Q4_1 GGUF when
`llama-cpp-python` is installed:
  1. short reply (64 tokens): time to first token and decode tokens/s;
  2. long reply (1,024 tokens): decode tokens/s;
  3. 50 summaries of ~300-token texts all at once: total tokens/s (and Parley batch-50 vs batch-1);
  4. a 10-round conversation of ~40-token user turns, the system prompt already cached: time to
     first token per round (the median of 5 conversations with different turns, since one
     round is one noisy sample); for Parley also the same rounds through its chat completions
     service, the whole history re-sent every turn as OpenAI clients do (in process, no HTTP).
Also the memory-bandwidth ceiling of each backend's weights, the bound the batch's prompts
alone put on scenario 3 at this CPU's measured GEMM rate, the bound attention over a growing
history puts on scenario 4's last/1st, and an abort check. No asserts:
these are figures to read. Each backend runs in its own process (torch's OpenMP teams must not
meet the engine thread's), one after the other. Run on a quiet machine:
`python bench/llm.py [--quick] [--no-hf] [--no-llama-cpp] [--threads N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata as md
import importlib.util
import inspect
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.corpus import SENTENCES
from voice import assets

MODEL = "smollm2-135m-instruct"
SYSTEM = "You are a helpful assistant."
SHORT_PROMPT = "Give me one tip for a good night's sleep."
JSON_TURN = {"role": "user", "content": "Describe a cat as a JSON object: its name, age and toys."}
PARLEY, HF, HF_RESEND, LLAMA = "Parley", "HF transformers", "HF re-send history", "llama.cpp"
PARLEY_API = "Parley via the API"
SCORED_DOCS = 8  # texts scored one at a time (every token's logprob) in the scoring figure

# BATCH_LAST: each backend runs the batch after its other scenarios. On the VMs these figures
# come from, memory-bound work runs slower for seconds after a process commits hundreds of MB
# of fresh memory: decode of one sequence, same process, 4.3 -> 8.2-8.5 ms/token right after
# touching 693 MB (6.7 five seconds later), against 4.0-4.2 after touching 1 MB. HF's batch
# does (its padded cache). Parley's KV pool (~660 MB here) is committed when the engine starts
# (hugepages.zeros); before that its batch paid the pool's first touch: 7% of its time in the
# kernel's clear_page, batch-1 150 -> 194 tok/s and the batch 408 -> 501 once committed.
Result = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Sizes:
    short: int = 64  # tokens of the short reply
    long: int = 1024  # tokens of the long reply
    batch: int = 50  # summaries generated at once
    summary: int = 64  # tokens per summary
    doc: int = 300  # tokens per text to summarise
    rounds: int = 10  # conversation rounds
    conversations: int = 5  # each round's figure is the median over this many conversations
    turn: int = 40  # tokens per user turn
    reply: int = 48  # tokens per assistant reply (10 rounds grow the history to ~950 tokens)
    probe: int = 16  # decode tokens of HF's dtype probe
    sampled_batch: int = 8  # sampled replies decoded together in the sampling figure


QUICK = Sizes(short=16, long=128, batch=8, summary=16, rounds=3, conversations=1, reply=16, probe=8)


@dataclass(frozen=True, slots=True)
class Workload:
    """What every backend runs: texts for Parley, the same prompts as token ids for the others
    (rendered with SmolLM2's ChatML template; generated tokens are appended as ids, never
    re-tokenized)."""

    sizes: Sizes
    threads: int
    model_dir: str
    gguf: str
    pad_id: int
    docs: list[str]  # user messages asking for a summary
    turns: list[list[str]]  # user messages of each conversation
    api_turns: list[list[str]]  # the same for the conversations through the API
    short_ids: list[int]  # system + short prompt + assistant header
    doc_ids: list[list[int]]  # system + summary request + assistant header
    system_ids: list[int]  # the system prompt, resident before a conversation's round 1
    # per conversation: turn 0 opens a user message; later turns close the reply first
    turn_ids: list[list[list[int]]]


def chatml(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def make_workload(sizes: Sizes, threads: int) -> Workload:
    from tokenizers import Tokenizer

    spec = assets.load_registry()[MODEL]
    model_dir = assets.ensure(spec, assets.default_cache_dir())
    gguf = assets.locate(spec.files[0].parts[0], spec)  # found via importlib.metadata
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rng = random.Random(0)

    def text(n_tokens: int) -> str:  # sentences in random order, cut to n_tokens
        words: list[str] = []
        while len(tok.encode(" ".join(words)).ids) < n_tokens:
            words.append(rng.choice(SENTENCES))
        return tok.decode(tok.encode(" ".join(words)).ids[:n_tokens])

    def ids(prefix: str, user: str) -> list[int]:
        return tok.encode(prefix + chatml("user", user) + "<|im_start|>assistant\n").ids

    docs = [f"Summarize this text in two sentences:\n\n{text(sizes.doc)}" for _ in range(50)]
    docs = docs[: sizes.batch]
    # different turns in each conversation: Parley would reuse a repeated one's cached prefix
    turns = [[text(sizes.turn) for _ in range(sizes.rounds)] for _ in range(sizes.conversations)]
    # the API's own: replaying the native conversations' turns, its round 1 found their
    # prompts' blocks in the prefix cache (14 ms against 18 computed)
    api_turns = [[text(sizes.turn) for _ in range(sizes.rounds)] for _ in turns]
    system, pad = chatml("system", SYSTEM), tok.token_to_id("<|im_end|>") or 0
    turn_ids = [[ids("" if i == 0 else "<|im_end|>\n", t) for i, t in enumerate(c)] for c in turns]
    doc_ids = [ids(system, d) for d in docs]
    short_ids = ids(system, SHORT_PROMPT)
    system_ids = tok.encode(system).ids
    return Workload(
        sizes, threads, str(model_dir), str(gguf), pad, docs, turns, api_turns, short_ids, doc_ids,
        system_ids, turn_ids,
    )  # fmt: skip


def per_round(runs: list[list[float]]) -> list[float]:
    """Each round's median over conversations (one list of per-round figures each)."""
    return [statistics.median(values) for values in zip(*runs, strict=True)]


def progress(r: Result, *keys: str) -> None:
    """Print figures as they come: a full run takes a while."""
    shown = []
    for k in keys:
        if k.endswith("tps"):
            shown.append(f"{k} {r[k]:.1f} tok/s")
        else:  # seconds, one or a list
            shown.append(f"{k} {' '.join(f'{x * 1e3:.0f}' for x in np.atleast_1d(r[k]))} ms")
    print(f"  [{r['label']}] " + ", ".join(shown), flush=True)


def timing(t0: float, times: list[float]) -> tuple[float, float]:
    """(time to first token, decode tokens/s after the first) from per-token arrival times."""
    decode_s = max(times[-1] - times[0], 1e-9)
    return times[0] - t0, (len(times) - 1) / decode_s


# --- memory bandwidth -------------------------------------------------------------------------


def read_bandwidth(threads: int) -> float:
    """Bytes/s that a sum over a 1 GiB buffer (>> L3) reads with ``threads`` threads; best of 5."""
    import torch

    torch.set_num_threads(threads)
    buf = torch.ones(2**30 // 4)
    best = float("inf")
    for _ in range(5):
        t0 = perf_counter()
        buf.sum()
        best = min(best, perf_counter() - t0)
    return 2**30 / best


def layer_shapes(mc: Any) -> list[tuple[int, int]]:
    """(out, in) of one layer's projections: q/k/v fused, o, gate/up fused, down."""
    h, inter, d = mc.hidden_size, mc.intermediate_size, mc.head_dim
    return [((mc.num_heads + 2 * mc.num_kv_heads) * d, h), (h, mc.num_heads * d),
            (2 * inter, h), (h, inter)]  # fmt: skip


def weights(shapes: list[tuple[int, int]]) -> int:
    return sum(n * k for n, k in shapes)


def gemm_rate(threads: int, shapes: list[tuple[int, int]], rows: int = 256) -> tuple[float, str]:
    """FLOP/s of one layer's projections on ``rows`` input rows, the faster of torch's GEMM
    in the dtype Parley prefills with here (bfloat16 where the CPU has it natively, else
    float32) and Parley's own prefill projections (``quant.linear``); best of 5 each."""
    import torch
    import torch.nn.functional as F

    from llm_engine.quant import linear, native_bf16, quantize_int8

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if native_bf16() else torch.float32
    name = str(dtype).removeprefix("torch.")
    ws = [torch.randn(n, k) * 0.05 for n, k in shapes]
    torch_pairs = [(torch.randn(rows, w.shape[1]).to(dtype), w.to(dtype)) for w in ws]
    ours = [(torch.randn(rows, w.shape[1]), quantize_int8(w, keep_full=True)) for w in ws]
    best: dict[str, float] = {}
    for label, fn, pairs in ((f"torch {name}", F.linear, torch_pairs), ("Parley", linear, ours)):
        best[label] = float("inf")
        for _ in range(5):
            t0 = perf_counter()
            for x, w in pairs:
                fn(x, w)
            best[label] = min(best[label], perf_counter() - t0)
    label = min(best, key=lambda k: best[k])
    return 2 * rows * weights(shapes) / best[label], label


def parley_weight_bytes(engine: Any) -> int:
    """Weight bytes one decode step reads: every projection and the head (the tied embedding),
    at the engine's weight width. Norms and int8 scales add well under 1 %."""
    mc, cfg = engine.model_config, engine.config
    layer = weights(layer_shapes(mc))
    h = mc.hidden_size
    width = {"float32": 4, "bfloat16": 2, "float16": 2}[cfg.resolved_dtype()]
    if cfg.resolved_quant() == "int8":
        width = 1
    return (mc.num_layers * layer + mc.vocab_size * h) * width


# --- Parley -----------------------------------------------------------------------------------


async def parley_turn(conv: Any, text: str, n: int, seed: int | None = None) -> tuple[float, float]:
    """Append a user turn and generate ``n`` tokens, greedy or (with ``seed``) sampled as API
    clients ask: (time to first token, decode tokens/s)."""
    from llm_engine import SamplingParams

    sampled: dict[str, Any] = {}
    if seed is not None:
        sampled = {"temperature": 1.0, "top_p": 0.95, "seed": seed}
    params = SamplingParams(max_tokens=n, ignore_eos=True, **sampled)
    t0 = perf_counter()
    times = []
    turn = {"role": "user", "content": text}  # prefilled with the assistant header in one pass
    async for delta in conv.generate(params, messages=turn):
        times += [perf_counter()] * len(delta.token_ids)
    return timing(t0, times)


async def parley_reply(
    engine: Any, text: str, n: int, seed: int | None = None
) -> tuple[float, float]:
    conv = engine.open_conversation(SYSTEM)
    try:
        return await parley_turn(conv, text, n, seed)
    finally:
        await conv.close()


def textbook_sample_row(
    logits: Any, params: Any, seen: list[int], gen: Any, n_generated: int = 0
) -> int:
    """The baseline sampler: HF's way (a sort of the vocabulary for top-p, torch.multinomial);
    the same signature as ``sample_row``, whose place it takes (no OpenAI penalties or bias:
    the runs here use neither)."""
    import torch

    from llm_engine.sampling import apply_repetition_penalty

    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs >= params.top_p
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=gen))


async def parley_sampling(engine: Any, n: int, batch: int) -> Result:
    """Decode tokens/s of sampled replies (temperature 1, top-p 0.95), alone and ``batch`` at a
    time, with the engine's sampler and with the textbook one swapped in, interleaved."""
    import llm_engine.sampling as sampling

    ours = sampling.sample_row
    runs: dict[str, list[float]] = {"ours": [], "textbook": [], "ours_b": [], "textbook_b": []}
    try:
        for i in range(3):
            for key, fn in (("ours", ours), ("textbook", textbook_sample_row)):
                sampling.sample_row = fn
                runs[key].append((await parley_reply(engine, SHORT_PROMPT, n, seed=i))[1])
                t0 = perf_counter()
                replies = (parley_reply(engine, SHORT_PROMPT, n, seed=i + j) for j in range(batch))
                await asyncio.gather(*replies)
                runs[key + "_b"].append(batch * n / (perf_counter() - t0))
    finally:
        sampling.sample_row = ours
    return {key: statistics.median(v) for key, v in runs.items()}


async def parley_json(engine: Any, n: int) -> Result:
    """Decode tokens/s of JSON-mode replies (greedy, and sampled as API clients ask) against
    unconstrained replies to the same request, interleaved; the median of 3 each. A JSON reply
    ends when its object closes (at most ``n`` tokens); an unconstrained one runs ``n``."""
    from llm_engine import SamplingParams
    from llm_engine.grammar import JsonSchema

    runs: dict[str, list[float]] = {"json": [], "plain": [], "json_s": [], "plain_s": []}
    for i in range(3):
        for key, sampled in (("", {}), ("_s", {"temperature": 1.0, "top_p": 0.95, "seed": i})):
            for mode in ("json", "plain"):
                json_mode = mode == "json"
                schema = JsonSchema.any_object() if json_mode else None
                params = SamplingParams(
                    max_tokens=n, json_schema=schema, ignore_eos=not json_mode, **sampled
                )
                async with engine.open_conversation(SYSTEM) as conv:
                    t0, times = perf_counter(), []
                    async for delta in conv.generate(params, messages=JSON_TURN):
                        times += [perf_counter()] * len(delta.token_ids)
                runs[mode + key].append(timing(t0, times)[1])
    return {key: statistics.median(v) for key, v in runs.items()}


async def parley_score(engine: Any, docs: list[list[int]]) -> float:
    """Prompt tokens/s of scoring each text (every token's logprob, as ``echo`` with
    ``logprobs`` asks), one text at a time in a fresh conversation."""
    t0 = perf_counter()
    for ids in docs:
        async with engine.open_conversation() as conv:
            await conv.score(ids, top=1)
    return sum(map(len, docs)) / (perf_counter() - t0)


async def parley_summaries(engine: Any, docs: list[str], n: int) -> float:
    """Total tokens/s of one conversation per text, all generating concurrently."""
    t0 = perf_counter()
    await asyncio.gather(*(parley_reply(engine, doc, n) for doc in docs))
    return len(docs) * n / (perf_counter() - t0)


async def parley_rounds(engine: Any, turns: list[str], n: int) -> tuple[list[float], list[int]]:
    """Time to first token per round of one resident conversation, and its length before each."""
    conv = engine.open_conversation(SYSTEM)
    await conv.prefilled()  # the system prompt, as while a call connects
    ttfts, lengths = [], []
    for text in turns:
        lengths.append(len(conv.tokens))
        ttfts.append((await parley_turn(conv, text, n))[0])
    await conv.close()
    return ttfts, lengths


async def parley_api_rounds(engine: Any, turns: list[str], n: int) -> list[float]:
    """:func:`parley_rounds` through the chat completions service: every request re-sends the
    whole history, the replies as the client received them. Time to the first text per round.
    Nothing is resident before round 1, so it prefills the system prompt too."""
    from llm_engine import SamplingParams
    from llm_engine.api_request import ChatRequest
    from llm_engine.chat_api import ChatService, Completion

    service = ChatService(engine, MODEL)
    messages = [{"role": "system", "content": SYSTEM}]
    ttfts = []
    try:
        for text in turns:
            messages.append({"role": "user", "content": text})
            params = SamplingParams(max_tokens=n, ignore_eos=True)
            t0, first, reply = perf_counter(), 0.0, ""
            async for piece in service.complete(
                ChatRequest(list(messages), params, MODEL), Completion()
            ):
                first, reply = first or perf_counter(), reply + piece.text
            ttfts.append(first - t0)
            messages.append({"role": "assistant", "content": reply})
    finally:
        await service.close()
    return ttfts


async def parley_abort(engine: Any, after: int = 8) -> tuple[float, int]:
    """Cancel a generation after ``after`` tokens: (seconds until the engine applied the abort,
    tokens the conversation gained after the cancel)."""
    from llm_engine import SamplingParams

    conv = engine.open_conversation(SYSTEM)
    await conv.append({"role": "user", "content": SHORT_PROMPT})
    started = asyncio.Event()

    async def consume() -> None:
        got = 0
        async for delta in conv.generate(SamplingParams(max_tokens=4096, ignore_eos=True)):
            got += len(delta.token_ids)
            if got >= after:
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    t0, at_cancel = perf_counter(), len(conv.tokens)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await engine.sync()  # the abort was queued before this: it has been applied
    stopped = perf_counter() - t0
    extra = len(conv.tokens) - at_cancel
    await conv.close()
    return stopped, extra


async def parley_main(w: Workload) -> Result:
    from llm_engine import Engine, EngineConfig

    s = w.sizes
    blocks = 256 + s.batch * (s.doc + 128 + s.summary) // 16  # all summaries resident at once
    cfg = EngineConfig(model_dir=Path(w.model_dir), num_threads=w.threads, num_blocks=blocks)
    async with Engine(cfg) as engine:
        mc = engine.model_config
        r: Result = {"label": PARLEY, "bytes_per_token": parley_weight_bytes(engine)}
        r["layer_shapes"] = layer_shapes(mc)
        r["prefill_flop"] = 2 * mc.num_layers * weights(r["layer_shapes"])  # per token
        r["head_flop"] = 2 * mc.hidden_size * mc.vocab_size  # per token whose logits are needed
        r["attn_flop"] = 4 * mc.num_heads * mc.head_dim * mc.num_layers  # per (query, key)
        r["setup"] = (
            f"dtype {cfg.resolved_dtype()}, quant {cfg.resolved_quant()}, "
            f"KV {cfg.resolved_kv_dtype()}"
        )
        base = engine.free_blocks()
        await parley_reply(engine, SHORT_PROMPT, 4)  # warm-up
        r["short_ttft"], r["short_tps"] = await parley_reply(engine, SHORT_PROMPT, s.short)
        r["long_tps"] = (await parley_reply(engine, SHORT_PROMPT, s.long))[1]
        progress(r, "short_ttft", "short_tps", "long_tps")
        # the batch last (BATCH_LAST)
        runs = [await parley_rounds(engine, turns, s.reply) for turns in w.turns]
        r["rounds"], r["history"] = per_round([ttfts for ttfts, _ in runs]), runs[0][1]
        r["rounds_api"] = per_round(
            [await parley_api_rounds(engine, t, s.reply) for t in w.api_turns]
        )
        r["sampling"] = await parley_sampling(engine, s.short, s.sampled_batch)
        r["json"] = await parley_json(engine, s.short)
        r["abort_s"], r["abort_extra"] = await parley_abort(engine)
        r["batch1_tps"] = await parley_summaries(engine, w.docs[:1], s.summary)
        r["batch_tps"] = await parley_summaries(engine, w.docs, s.summary)
        progress(r, "rounds", "batch_tps", "batch1_tps")
        # after the batch: scoring these texts first would leave them in the prefix cache,
        # and the batch would not compute its first prompts (scoring always computes)
        r["score_tps"] = await parley_score(engine, w.doc_ids[:SCORED_DOCS])
        r["blocks"] = (base, engine.free_blocks())
    return r


def run_parley(w: Workload) -> Result:
    return asyncio.run(parley_main(w))


# --- HF transformers --------------------------------------------------------------------------


def hf_greedy(model: Any, cache: Any, ids: list[int], n: int) -> tuple[float, float, list[int]]:
    """Feed ``ids`` on top of ``cache`` and decode ``n`` greedy tokens (EOS ignored); the last
    one is not fed. Returns (time to first token, decode tokens/s, tokens)."""
    import torch

    params = inspect.signature(model.forward).parameters  # `cache` replaced `past_key_values`
    kw = {"cache" if "cache" in params else "past_key_values": cache}
    t0, times, out = perf_counter(), [], []
    x = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(n):
            logits = model(input_ids=x, use_cache=True, logits_to_keep=1, **kw)
            out.append(int(logits.logits[0, -1].argmax()))
            times.append(perf_counter())
            x = torch.tensor([[out[-1]]])
    return (*timing(t0, times), out)


def hf_batch(model: Any, prompts: list[list[int]], n: int, pad: int) -> float:
    """Total tokens/s of one left-padded static batch through ``generate``."""
    import torch

    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    t0 = perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
            do_sample=False, pad_token_id=pad,
        )  # fmt: skip
    return len(prompts) * n / (perf_counter() - t0)


def hf_score(model: Any, docs: list[list[int]]) -> float:
    """Prompt tokens/s of scoring each text as lm-evaluation-harness's HF backend does: one
    forward, the log-softmax of every position, each next token's logprob and top-1."""
    import torch

    t0 = perf_counter()
    with torch.inference_mode():
        for ids in docs:
            logp = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
            logp.gather(1, torch.tensor(ids[1:])[:, None]).tolist()
            logp.max(-1)
    return sum(map(len, docs)) / (perf_counter() - t0)


def hf_rounds(
    model: Any, system: list[int], turns: list[list[int]], n: int, reuse: bool
) -> list[float]:
    """Time to first token per round: feed only what the cache lacks (``reuse``; the system
    prompt is in it before round 1), or re-send the whole history into a fresh cache every
    round."""
    from transformers import DynamicCache

    cache, ttfts = DynamicCache(), []
    hf_greedy(model, cache, system, 1)  # feeds the system prompt, not the token it picks
    history = list(system)
    for turn in turns:
        if not reuse:
            cache = DynamicCache()
        fed = cache.get_seq_length()
        ttft, _, out = hf_greedy(model, cache, history[fed:] + turn, n)
        history += turn + out
        ttfts.append(ttft)
    return ttfts


def run_hf(w: Workload) -> Result:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(w.threads)
    models, probe = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        models[name] = AutoModelForCausalLM.from_pretrained(w.model_dir, dtype=dtype).eval()
        hf_greedy(models[name], DynamicCache(), w.short_ids, 2)  # warm-up
        ttft, tps, _ = hf_greedy(models[name], DynamicCache(), w.doc_ids[0], w.sizes.probe)
        probe[name] = (len(w.doc_ids[0]) / ttft, tps)  # prefill of ~300 tokens, decode
        print(f"  [{HF}] {name}: prefill {probe[name][0]:.0f} tok/s, decode {tps:.1f} tok/s")
    dec = max(probe, key=lambda k: probe[k][1])  # single-sequence decode: short, long
    pre = max(probe, key=lambda k: probe[k][0])  # many rows per matrix: batch, turn prefill
    s, model = w.sizes, models[dec]
    r: Result = {"label": HF, "setup": f"{dec} for decode, {pre} for batch and prefill"}
    r["bytes_per_token"] = sum(p.numel() * p.element_size() for p in model.parameters())
    r["short_ttft"], r["short_tps"], _ = hf_greedy(model, DynamicCache(), w.short_ids, s.short)
    r["long_tps"] = hf_greedy(model, DynamicCache(), w.short_ids, s.long)[1]
    progress(r, "short_ttft", "short_tps", "long_tps")
    sys_ids = w.system_ids
    r["rounds"] = per_round([hf_rounds(models[pre], sys_ids, t, s.reply, True) for t in w.turn_ids])
    r["rounds_resend"] = per_round(
        [hf_rounds(models[pre], sys_ids, t, s.reply, False) for t in w.turn_ids]
    )
    r["score_tps"] = hf_score(models[pre], w.doc_ids[:SCORED_DOCS])
    r["batch_tps"] = hf_batch(models[pre], w.doc_ids, s.summary, w.pad_id)  # last (BATCH_LAST)
    progress(r, "rounds", "rounds_resend", "batch_tps")
    return r


# --- llama.cpp --------------------------------------------------------------------------------


def llama_greedy(llm: Any, ids: list[int], n: int) -> tuple[float, float, list[int]]:
    """Greedy ``n`` tokens (EOS ignored); llama.cpp reuses the longest cached token prefix."""
    t0, times, out = perf_counter(), [], []
    for tok in llm.generate(ids, temp=0.0):
        out.append(tok)
        times.append(perf_counter())
        if len(out) == n:
            break
    return (*timing(t0, times), out)


def run_llama(w: Workload) -> Result:
    from llama_cpp import Llama

    s = w.sizes
    n = w.threads
    llm = Llama(model_path=w.gguf, n_ctx=4096, n_threads=n, n_threads_batch=n, verbose=False)
    r: Result = {"label": LLAMA, "setup": "Q4_1 GGUF", "bytes_per_token": os.path.getsize(w.gguf)}
    llama_greedy(llm, w.short_ids, 4)  # warm-up
    r["short_ttft"], r["short_tps"], _ = llama_greedy(llm, w.short_ids, s.short)
    r["long_tps"] = llama_greedy(llm, w.short_ids, s.long)[1]
    progress(r, "short_ttft", "short_tps", "long_tps")
    runs = []
    for turns in w.turn_ids:
        history = list(w.system_ids)
        llama_greedy(llm, history, 1)  # resident: the next prompt reuses it as its prefix
        runs.append([])
        for turn in turns:  # re-send the history; the prompt-prefix cache does the rest
            ttft, _, out = llama_greedy(llm, history + turn, s.reply)
            history += turn + out
            runs[-1].append(ttft)
    r["rounds"] = per_round(runs)
    t0 = perf_counter()
    for ids in w.doc_ids:  # one sequence at a time, last (BATCH_LAST)
        llama_greedy(llm, ids, s.summary)
    r["batch_tps"] = len(w.doc_ids) * s.summary / (perf_counter() - t0)
    progress(r, "rounds", "batch_tps")
    return r


# --- report -----------------------------------------------------------------------------------


def isolated(fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh process (its own torch threads and memory)."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def compare(title: str, unit: str, figs: dict[str, float], scale: float = 1.0) -> None:
    """One figure per backend and Parley's speed-up over each; ``unit`` ms = lower is better."""
    print(f"\n## {title}")
    ours = figs.get(PARLEY)
    for name, value in figs.items():
        ratio = ""
        if ours and name != PARLEY:
            x = value / ours if unit == "ms" else ours / value
            ratio = f"Parley {x:.2f}x faster" if x >= 1 else f"Parley {1 / x:.2f}x slower"
        print(f"  {name:22} {value * scale:9.1f} {unit:6} {ratio}")


def figures(results: list[Result], key: str) -> dict[str, Any]:
    return {r["label"]: r[key] for r in results if key in r}


def report_rounds(w: Workload, results: list[Result], n: int) -> None:
    cols = figures(results, "rounds")
    cols.update((PARLEY_API, r["rounds_api"]) for r in results if "rounds_api" in r)
    cols.update((HF_RESEND, r["rounds_resend"]) for r in results if "rounds_resend" in r)
    history = results[0]["history"]  # Parley's tokens before each round
    print(f"\n## 4. Conversation: time to first token per round, ms (median of {n} conversations)")
    print("  (target: p50 <= 60 ms, last/1st <= 1.2)")
    print("  round  history" + "".join(f"{name:>20}" for name in cols))
    for i, hist in enumerate(history):
        print(f"  {i + 1:5}  {hist:7}" + "".join(f"{c[i] * 1e3:20.0f}" for c in cols.values()))
    print("  last/1st      " + "".join(f"{c[-1] / c[0]:20.2f}" for c in cols.values()))
    print("  (history: Parley's tokens before the round; the baselines' differ by a few)")
    ours = next((r for r in results if r["label"] == PARLEY), None)
    if ours:
        attention_bound(w, ours)
    p50 = {name: statistics.median(c) for name, c in cols.items()}
    compare("4. Conversation: p50 time to first token", "ms", p50, 1e3)


def attention_bound(w: Workload, ours: Result) -> None:
    """How much more work the last round's first token takes than the first's: its turn
    attends to the whole history, at the same FLOPs per token pair as any other (and it also
    closes the previous reply, so it is a few tokens longer). Costs that do not grow with the
    history (a step's fixed overhead, the head, sampling) bring the measured ratio below it."""
    n1, n = (statistics.mean(len(c[i]) for c in w.turn_ids) for i in (0, -1))  # tokens prefilled
    first, last = ours["history"][0] + n1 / 2, ours["history"][-1] + n / 2  # keys per query
    proj, attn = ours["prefill_flop"], ours["attn_flop"]
    bound = n * (proj + attn * last) / (n1 * (proj + attn * first))
    print(
        f"  attention bound: round 1 prefills ~{n1:.0f} tokens attending to ~{first:.0f} keys"
        f" each, round {len(ours['history'])} ~{n:.0f} attending to ~{last:.0f}; at one FLOP"
        f" rate for projections ({proj / 1e6:.0f} MFLOP a token) and attention"
        f" ({attn / 1e3:.0f} kFLOP a token pair), its FLOPs grow {bound:.2f}x (fixed costs"
        " per step lower the ratio)"
    )


def prefill_bound(w: Workload, ours: Result) -> None:
    """The batch at the CPU's GEMM rate: how far batching can go here. Its prompts alone; and
    with its generated tokens, each a row of every projection and of the output head."""
    rate, dtype = isolated(gemm_rate, w.threads, ours["layer_shapes"])
    prompt = sum(len(ids) for ids in w.doc_ids)
    flop = ours["prefill_flop"]
    floor_s = prompt * flop / rate
    generated = len(w.doc_ids) * w.sizes.summary
    best = generated / floor_s
    print(
        f"  prefill bound: {prompt} prompt tokens x {flop / 1e6:.0f} MFLOP at the measured "
        f"{rate / 1e9:.0f} GFLOP/s ({dtype} GEMM, 256 rows) take >= {floor_s:.1f} s, so even "
        f"with free decoding the batch reaches at most {best:.0f} tok/s = "
        f"{best / ours['batch1_tps']:.2f}x batch-1"
    )
    per_token = flop + ours["head_flop"]
    whole_s = floor_s + generated * per_token / rate
    best = generated / whole_s
    print(
        f"  FLOP bound: with its {generated} generated tokens ({per_token / 1e6:.0f} MFLOP"
        f" each, the output head included) the batch takes >= {whole_s:.1f} s at that rate:"
        f" at most {best:.0f} tok/s = {best / ours['batch1_tps']:.2f}x batch-1 "
        f"(measured {ours['batch_tps'] / best:.0%} of it)"
    )


def report(w: Workload, results: list[Result], bandwidth: float) -> None:
    compare("1. Short reply: time to first token", "ms", figures(results, "short_ttft"), 1e3)
    target = "(target: >= llama.cpp, >= 3x HF)"
    compare(f"1. Short reply: decode {target}", "tok/s", figures(results, "short_tps"))
    compare(f"2. Long reply: decode {target}", "tok/s", figures(results, "long_tps"))
    compare("3. Batch of summaries: total", "tok/s", figures(results, "batch_tps"))
    ours = next((r for r in results if r["label"] == PARLEY), None)
    if ours:
        gain = ours["batch_tps"] / ours["batch1_tps"]
        batch1 = f"its own batch-1 ({ours['batch1_tps']:.1f} tok/s)"
        print(f"  Parley vs {batch1}: {gain:.2f}x (target >= 5x)")
        prefill_bound(w, ours)
    report_rounds(w, results, w.sizes.conversations)
    compare(f"5. Scoring {SCORED_DOCS} texts (every token's logprob, as echo + logprobs asks),"
            " one at a time: prompt", "tok/s", figures(results, "score_tps"))  # fmt: skip
    print(f"\n## Memory-bandwidth ceiling (read bandwidth {bandwidth / 1e9:.1f} GB/s)")
    for r in results:
        ceiling = bandwidth / r["bytes_per_token"]
        best = max(r["short_tps"], r["long_tps"])
        print(
            f"  {r['label']:22} {r['bytes_per_token'] / 1e6:6.1f} MB/token ({r['setup']}): "
            f"ceiling {ceiling:6.1f} tok/s, decode {best:6.1f} = {best / ceiling:4.0%}"
        )
    if ours:
        report_sampling(w, ours)
        base, after = ours["blocks"]
        print(
            f"\n## Abort: engine stopped {ours['abort_s'] * 1e3:.1f} ms after the cancel, "
            f"{ours['abort_extra']} token(s) past it (one decode step "
            f"≈ {1e3 / ours['short_tps']:.1f} ms, target: within one); free blocks {after}/{base}"
            " after closing (target: all back)"
        )


def report_sampling(w: Workload, ours: Result) -> None:
    f, b = ours["sampling"], w.sizes.sampled_batch
    print(
        f"\n## Sampled replies (temperature 1, top-p 0.95, as API clients ask), decode tok/s,"
        f" median of 3 interleaved\n"
        f"  1 reply:   Parley's sampler {f['ours']:6.1f}, textbook (sort + multinomial)"
        f" {f['textbook']:6.1f} = {f['ours'] / f['textbook']:.2f}x;"
        f" greedy {ours['short_tps']:.1f}\n"
        f"  {b} replies: Parley's sampler {f['ours_b']:6.1f}, textbook {f['textbook_b']:6.1f}"
        f" = {f['ours_b'] / f['textbook_b']:.2f}x"
    )
    j = ours["json"]
    print(
        "\n## JSON mode (response_format json_object), decode tok/s, median of 3 interleaved\n"
        f"  greedy:  JSON {j['json']:6.1f}, unconstrained {j['plain']:6.1f}"
        f" = {j['json'] / j['plain']:.2f}x\n"
        f"  sampled: JSON {j['json_s']:6.1f}, unconstrained {j['plain_s']:6.1f}"
        f" = {j['json_s'] / j['plain_s']:.2f}x"
    )


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a couple of minutes")
    parser.add_argument("--no-hf", action="store_true", help="skip HF transformers")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    w = make_workload(QUICK if args.quick else Sizes(), args.threads)
    has_llama = importlib.util.find_spec("llama_cpp") is not None
    versions = []
    for dist in ("torch", "transformers", "llama-cpp-python"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions.append(f"{dist} {md.version(dist)}")
    print(f"# bench/llm.py  {MODEL}  threads={args.threads}  {'quick' if args.quick else 'full'}")
    load = os.getloadavg()[0]
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, load {load:.2f}; " + ", ".join(versions))
    print(f"# sizes: {w.sizes}")
    bandwidth = isolated(read_bandwidth, args.threads)
    results = [isolated(run_parley, w)]
    if not args.no_hf:
        results.append(isolated(run_hf, w))
    if has_llama and not args.no_llama_cpp:
        results.append(isolated(run_llama, w))
    elif not has_llama:
        print("# llama-cpp-python is not installed: llama.cpp skipped")
    for r in results:
        print(f"# {r['label']}: {r['setup']}")
    report(w, results, bandwidth)
    print(f"\n# load average at the end {os.getloadavg()[0]:.2f} (figures are noisy when busy)")


if __name__ == "__main__":
    main()
