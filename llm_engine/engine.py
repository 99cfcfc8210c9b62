"""The engine: weights, KV pool and scheduler driven by one engine thread.

Callers live on an asyncio loop; the engine thread runs ``step()`` (schedule -> run the model
-> sample -> stream out) and applies commands (append, truncate, generate, abort, close)
between steps, in the order they were submitted. All sequence state is mutated on the engine
thread under ``_lock``; results travel back with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from llm_engine.config import EngineConfig, SamplingParams
from llm_engine.conversation import Conversation, Delta, TokenLogprob, post
from llm_engine.errors import (
    ContextLengthExceeded,
    EngineClosed,
    EngineError,
    InvalidRequest,
    ModelLoadError,
)
from llm_engine.grammar import JsonMatcher
from llm_engine.history import AppendPlan, History, common_prefix_len
from llm_engine.kv_cache import KVCache
from llm_engine.model import Transformer
from llm_engine.model_runner import ModelRunner
from llm_engine.sampling import make_generator, sample, token_logprobs
from llm_engine.scheduler import Scheduler, Sequence
from llm_engine.tokenizer import Message, StreamDecoder, Tokenizer, validate_messages
from llm_engine.weights import load_model

T = TypeVar("T")
log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _Reply:
    """Completes an asyncio future from the engine thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()

    def ok(self, value: Any) -> None:
        post(self.loop, _settle, self.future, value, None)

    def fail(self, err: BaseException) -> None:
        post(self.loop, _settle, self.future, None, err)


def _check_device(device: str) -> None:
    """Raise :class:`ModelLoadError` saying why torch cannot use ``device``, if it cannot."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        why = "no GPU is visible" if torch.version.cuda else "this torch is built without CUDA"
        raise ModelLoadError(f"device {device!r} asked for, but {why} (torch {torch.__version__})")
    if (dev.index or 0) >= torch.cuda.device_count():
        seen = torch.cuda.device_count()
        raise ModelLoadError(f"device {device!r} asked for, but torch sees {seen} CUDA device(s)")


def _settle(fut: asyncio.Future[Any], value: Any, err: BaseException | None) -> None:
    if fut.done():
        return  # the awaiting task was cancelled
    if err is None:
        fut.set_result(value)
    else:
        fut.set_exception(err)


@dataclass(slots=True)
class _Gen:
    """A running generation (engine thread only)."""

    params: SamplingParams
    max_tokens: int
    sink: Callable[[Delta | BaseException], None]
    generator: torch.Generator | None
    decoder: StreamDecoder
    matcher: JsonMatcher | None = None  # JSON mode: which tokens may come next
    n: int = 0


@dataclass(slots=True)
class _Score:
    """Scoring in progress (engine thread only): ``logprobs[i]`` is token ``first + i``'s,
    ``None`` until its row is computed, and for a conversation's very first token."""

    first: int
    top: int
    logprobs: list[TokenLogprob | None]

    @property
    def end(self) -> int:
        return self.first + len(self.logprobs)


@dataclass(slots=True, frozen=True)
class _Later:
    """What a command returns to resolve its caller only once the conversation's tokens so
    far are computed: with ``value()``, or with their count."""

    value: Callable[[], Any] | None = None


_DEFER = _Later()


@dataclass(slots=True, frozen=True)
class EngineStats:
    """What the engine has done since it started (counters) and holds now (gauges)."""

    steps: int  # forward passes
    computed_tokens: int  # tokens the model ran: prefilled and decoded
    generated_tokens: int  # tokens sampled for replies
    conversations: int  # open, resident or evicted
    generating: int  # replies being generated
    free_blocks: int
    total_blocks: int


@dataclass(slots=True, eq=False)
class ConvState:
    """Engine-side state of one conversation."""

    seq: Sequence
    history: History
    gen: _Gen | None = None
    score: _Score | None = None
    # (token count, reply, value): the reply gets value() (or the count) once it is computed
    waiters: list[tuple[int, _Reply, Callable[[], Any] | None]] = field(default_factory=list)
    closed: bool = False
    conv: Conversation | None = None


class Engine:
    """One model, one KV pool, one engine thread; conversations are handles into it.

    ``Engine(config)`` starts the engine thread, which loads the model (errors re-raised here,
    e.g. ``ModelLoadError``); ``start()`` lets it accept requests; ``close()`` stops it and
    fails whatever still waits with ``EngineClosed``.
    ``async with Engine(cfg) as engine:`` does both. Conversation methods must be awaited on
    one asyncio loop (any loop; each request remembers its own).
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._commands: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._convs: dict[int, ConvState] = {}
        self._next_id = 0
        self._error: BaseException | None = None
        self._stopped = False
        self._started = False
        self._pauses, self._paused_until = 0, 0.0  # see paused()
        self._steps = self._computed = self._generated = 0  # see stats()
        self._load_error: BaseException | None = None
        loaded = threading.Event()
        # all torch work happens on this one thread, loading included (see _thread_main)
        self._thread: threading.Thread | None = threading.Thread(
            target=self._thread_main, args=(loaded,), name="llm-engine", daemon=True
        )
        self._thread.start()
        loaded.wait()
        if self._load_error is not None:
            self._thread.join()
            self._thread = None
            raise self._load_error

    def _thread_main(self, loaded: threading.Event) -> None:
        """Load the model, then run the engine loop until ``close``.

        libgomp throttles its spin-waiting when more than one thread owns an OpenMP team, and
        a second team made every parallel region ~90 us slower here (decode 2x slower), so the
        engine keeps all of its torch work on this thread. Callers should avoid running torch
        CPU work on other threads of the same process.
        """
        try:
            if self.config.num_threads:
                torch.set_num_threads(self.config.num_threads)
            self._load()
        except BaseException as err:
            self._load_error = err
            return
        finally:
            loaded.set()
        self._loop()

    def _load(self) -> None:
        config = self.config
        _check_device(config.device)
        dtype = _DTYPES[config.resolved_dtype()]
        loaded = load_model(config.model_dir, dtype, config.device)
        mc = self.model_config = loaded.config
        self.tokenizer = Tokenizer(
            loaded.tokenizer_json,
            loaded.tokenizer_config,
            tuple(mc.eos_token_ids) + tuple(config.extra_stop_tokens),
        )
        self.max_context = min(
            config.max_model_len or mc.max_position_embeddings,
            mc.max_position_embeddings,
            config.num_blocks * config.block_size,
        )
        model = Transformer(mc, loaded.weights, self.max_context)
        if config.resolved_quant() == "int8":
            # keep the float weights for prefill on CPU, where the int8 kernel is matrix-vector
            model.quantize_int8(keep_full=torch.device(config.device).type == "cpu")
        model.to_huge_pages()  # decode streams every weight each step
        try:
            kv = KVCache(
                mc.num_layers,
                config.num_blocks,
                config.block_size,
                mc.num_kv_heads,
                mc.head_dim,
                _DTYPES[config.resolved_kv_dtype()],
                config.device,
            )
        except (MemoryError, torch.OutOfMemoryError) as err:  # CPU: committed at once
            raise ModelLoadError(
                f"the KV pool of num_blocks {config.num_blocks} x block_size "
                f"{config.block_size} tokens does not fit ({err}): lower num_blocks"
            ) from err
        self.runner = ModelRunner(model, kv, config.device, compile=config.compile)
        self.scheduler = Scheduler(
            config.num_blocks, config.block_size, config.max_batch, config.max_step_tokens
        )

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Accept requests. (The engine thread already runs; it loaded the model.)"""
        if self._thread is None:
            raise EngineClosed("the engine was closed; create a new one")
        self._started = True

    def close(self) -> None:
        """Stop the engine thread (after the current step) and fail everything still waiting."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._commands.put(None)
        thread.join()
        self._fail_all(EngineClosed("the engine was closed"))

    async def __aenter__(self) -> Engine:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._started and self._error is None

    # --- public queries ------------------------------------------------------------------

    def open_conversation(self, system_prompt: str | None = None) -> Conversation:
        """A new conversation; the system prompt (if any) is prefilled in the background.

        Raises ``InvalidRequest`` (malformed or too long prompt), ``EngineClosed``.
        """
        self._check_running()
        history = History(self.tokenizer.render)
        ids: list[int] = []
        if system_prompt is not None:
            messages = validate_messages([{"role": "system", "content": system_prompt}])
            plan = history.plan_messages(messages, open_last=False)
            ids = self.tokenizer.encode(plan.text)
            if len(ids) + 1 > self.max_context:
                raise ContextLengthExceeded(len(ids) + 1, self.max_context)
            history.add_tokens(ids, self.tokenizer.token_bytes)
            history.add_messages(messages, open_last=False)
        with self._lock:
            state, conv = self._new_state(history)
            self.scheduler.add(state.seq)
            if ids:
                self.scheduler.extend(state.seq, ids)
        self._commands.put(lambda: None)  # wake the engine thread
        return conv

    def free_blocks(self) -> int:
        """Blocks of the KV pool not held by any sequence (a consistent snapshot)."""
        with self._lock:
            return self.scheduler.blocks.num_free

    def stats(self) -> EngineStats:
        """A consistent snapshot of the engine's counters and gauges (for monitoring)."""
        with self._lock:
            return EngineStats(
                steps=self._steps,
                computed_tokens=self._computed,
                generated_tokens=self._generated,
                conversations=len(self._convs),
                generating=sum(st.gen is not None for st in self._convs.values()),
                free_blocks=self.scheduler.blocks.num_free,
                total_blocks=self.scheduler.blocks.num_blocks,
            )

    def cached_prefix(self, tokens: list[int]) -> int:
        """How many leading ``tokens`` the pool's shared-prefix cache already holds."""
        with self._lock:
            return self.scheduler.blocks.match_prefix(tokens)

    def longest_prefix(self, tokens: list[int]) -> tuple[Conversation | None, int]:
        """The open, idle conversation whose tokens share the longest prefix with ``tokens``.

        For callers that re-send whole histories (OpenAI-style APIs): truncate the returned
        conversation to the common length and append the rest.
        """
        best: tuple[ConvState | None, int] = (None, 0)
        with self._lock:
            for st in self._convs.values():
                if st.closed or st.gen is not None:
                    continue
                n = common_prefix_len(st.seq.tokens, tokens)
                if n > best[1]:
                    best = (st, n)
        found = best[0]
        return (found.conv if found else None), best[1]

    async def sync(self) -> None:
        """Wait until every command submitted so far has been applied."""
        await self._call(lambda st: None, None)

    # --- commands (called by Conversation) -------------------------------------------------

    def _check_running(self) -> None:
        if self._error is not None:
            raise EngineClosed(f"the engine failed: {self._error!r}") from self._error
        if self._thread is None or not self._started:
            raise EngineClosed("the engine is not running; call start() first")

    def _call(self, fn: Callable[[ConvState], Any], state: ConvState | None) -> asyncio.Future[Any]:
        """Run ``fn(state)`` on the engine thread; its return value resolves the future, unless
        it is a :class:`_Later`: then the future resolves once the conversation's prefill is
        done."""
        self._check_running()
        reply = _Reply(asyncio.get_running_loop())

        def command() -> None:
            try:
                if self._stopped:
                    raise EngineClosed("the engine was closed")
                if state is not None and state.closed:
                    raise InvalidRequest("the conversation is closed")
                result = fn(state)  # type: ignore[arg-type]
            except Exception as err:
                reply.fail(err)
                return
            if not isinstance(result, _Later):
                reply.ok(result)
            else:
                assert state is not None
                state.waiters.append((len(state.seq.tokens), reply, result.value))
                self._resolve_waiters(state)

        self._commands.put(command)
        return reply.future

    def _busy_check(self, state: ConvState) -> None:
        if state.gen is not None:
            raise InvalidRequest("the conversation is generating; cancel that first")
        if state.score is not None:
            raise InvalidRequest("the conversation is being scored; wait for that first")

    def _apply_plan(self, state: ConvState, plan: AppendPlan, extra: int = 0) -> list[int]:
        ids = self.tokenizer.encode(plan.text) if plan.text else []
        total = plan.keep + len(ids) + extra
        if total > self.max_context:
            raise ContextLengthExceeded(total, self.max_context)
        if plan.keep < len(state.seq.tokens):
            self._truncate(state, plan.keep)
        state.history.add_tokens(ids, self.tokenizer.token_bytes)
        self.scheduler.extend(state.seq, ids)
        return ids

    def _apply_messages(
        self,
        state: ConvState,
        messages: list[Message],
        open_last: bool,
        replace: bool | None,
        wait: bool = True,
    ) -> object:
        self._busy_check(state)
        if replace:
            self._apply_plan(state, state.history.plan_replace(messages))
            state.history.replace_messages(messages)
        else:
            self._apply_plan(state, state.history.plan_messages(messages, open_last))
            state.history.add_messages(messages, open_last)
        return _DEFER if wait else len(state.seq.tokens)

    def _apply_tokens(self, state: ConvState, ids: list[int], wait: bool = True) -> object:
        self._busy_check(state)
        if len(state.seq.tokens) + len(ids) > self.max_context:
            raise ContextLengthExceeded(len(state.seq.tokens) + len(ids), self.max_context)
        state.history.add_tokens(ids, self.tokenizer.token_bytes)
        self.scheduler.extend(state.seq, ids)
        return _DEFER if wait else len(state.seq.tokens)

    def _await_prefill(self, state: ConvState) -> object:
        return _DEFER

    def _apply_score(self, state: ConvState, ids: list[int], top: int) -> object:
        """Append ``ids`` and compute them keeping the logits of every position from the one
        before them on (recomputed if cached): each token gets its logprob given all before."""
        seq = state.seq
        first = len(seq.tokens)
        self._apply_tokens(state, ids, wait=False)
        seq.logits_from = max(first - 1, 0)
        self.scheduler.uncache_from(seq, seq.logits_from)
        score = state.score = _Score(first, top, [None] * len(ids))
        return _Later(lambda: score.logprobs)

    def _stop_scoring(self, state: ConvState) -> None:
        """End a scoring (done, or nobody waits for it: the rest of its tokens are only
        prefilled)."""
        if state.score is not None:
            state.score, state.seq.logits_from = None, None

    def _keep_scores(self, state: ConvState, first: int, hidden: torch.Tensor) -> None:
        """The logprobs of the tokens after positions ``first ..`` from their final hidden
        states, a few hundred rows at a time (each row's logits are the whole vocabulary)."""
        score, seq = state.score, state.seq
        assert score is not None and seq.logits_from is not None
        model = self.runner.model
        for lo in range(0, hidden.shape[0], _SCORE_ROWS):
            rows = hidden[lo : lo + _SCORE_ROWS]
            # row r holds position first + lo + r; it scores the token after it, if wanted
            targets = range(first + lo + 1, first + lo + 1 + rows.shape[0])
            wanted = [i for i, t in enumerate(targets) if score.first <= t < score.end]
            if not wanted:
                continue
            picked = [seq.tokens[targets[i]] for i in wanted]
            found = token_logprobs(model.logits(rows[wanted]), picked, [score.top] * len(wanted))
            for i, tok, (logprob, top) in zip(wanted, picked, found, strict=True):
                score.logprobs[targets[i] - score.first] = TokenLogprob(tok, logprob, top)
        # positions scored so far need not be computed again if the sequence is evicted
        seq.logits_from = max(seq.logits_from, first + hidden.shape[0])

    def _fork(self, state: ConvState, n: int | None) -> Conversation:
        # a generation only appends, so the tokens there are now stay as they are: a
        # generating conversation forks too (at most the tokens it has so far)
        n = len(state.seq.tokens) if n is None else n
        if not 0 <= n <= len(state.seq.tokens):
            raise InvalidRequest(
                f"cannot fork at {n} tokens: conversation has {len(state.seq.tokens)}"
            )
        history = state.history.copy()
        history.truncate(n)
        forked, conv = self._new_state(history)
        self.scheduler.fork(state.seq, forked.seq, n)
        return conv

    def _new_state(self, history: History) -> tuple[ConvState, Conversation]:
        """A conversation registered under a fresh id (with the lock held); the caller adds
        its sequence to the scheduler."""
        self._next_id += 1
        state = ConvState(Sequence(self._next_id), history)
        state.conv = Conversation(self, state)
        self._convs[state.seq.seq_id] = state
        return state, state.conv

    def _truncate(self, state: ConvState, n: int) -> None:
        self._busy_check(state)
        if not 0 <= n <= len(state.seq.tokens):
            raise InvalidRequest(
                f"cannot truncate to {n} tokens: conversation has {len(state.seq.tokens)}"
            )
        self.scheduler.truncate(state.seq, n)
        state.history.truncate(n)

    def _start_generation(
        self,
        state: ConvState,
        params: SamplingParams,
        sink: Callable[[Delta | BaseException], None],
        add_generation_prompt: bool | None,
        messages: list[Message] | None = None,
        replace: bool = False,
        tokens: list[int] | None = None,
    ) -> None:
        self._busy_check(state)
        vocab = self.model_config.vocab_size
        if bad := [t for t in params.logit_bias if t >= vocab]:
            raise InvalidRequest(
                f"logit_bias: token id {bad[0]} is outside the vocabulary (0 to {vocab - 1})",
                "logit_bias",
            )
        if messages is not None:
            self._apply_messages(state, messages, False, replace)
        if tokens:
            self._apply_tokens(state, tokens, wait=False)
        history = state.history
        if add_generation_prompt is None:
            add_generation_prompt = bool(history.messages) and not history.open_reply
        if add_generation_prompt:
            self._apply_plan(state, history.plan_generation_prompt(), extra=1)
            history.begin_reply()
        elif len(state.seq.tokens) + 1 > self.max_context:
            raise ContextLengthExceeded(len(state.seq.tokens) + 1, self.max_context)
        if not state.seq.tokens:
            raise InvalidRequest("nothing to generate from: the conversation is empty")
        room = self.max_context - len(state.seq.tokens)
        tok = self.tokenizer
        state.gen = _Gen(
            params,
            min(params.max_tokens, room),
            sink,
            make_generator(params),
            StreamDecoder(params.stop),
            JsonMatcher(tok.token_bytes, tok.eos_ids, tok.special_ids, params.json_schema)
            if params.json_schema is not None
            else None,
        )
        self.scheduler.uncache_last(state.seq)
        self.scheduler.request(state.seq, generating=True)

    def _post_abort(self, state: ConvState) -> None:
        """Queue an abort without waiting (callable from a cancelled task's ``finally``)."""
        self._commands.put(lambda: self._abort(state))

    def _abort(self, state: ConvState) -> None:
        if state.gen is not None:
            self._finish(state, "abort", closed=False)

    def _close(self, state: ConvState) -> None:
        self._abort(state)
        for _, reply, _ in state.waiters:
            reply.fail(InvalidRequest("the conversation was closed"))
        state.waiters.clear()
        state.score = None
        state.closed = True
        self.scheduler.remove(state.seq)
        del self._convs[state.seq.seq_id]

    @contextlib.contextmanager
    def paused(self, max_s: float) -> Iterator[None]:
        """Inside, the engine runs no step for up to ``max_s``, unless a live turn (a generation
        waiting for its first token) needs one: another component's latency-critical work gets
        the cores. The voice session synthesizes a reply's first chunk so: its caller waits in
        silence, while the reply's later tokens are needed only a sentence later. Any thread."""
        with self._lock:
            self._pauses += 1
            self._paused_until = max(self._paused_until, time.monotonic() + max_s)
        try:
            yield
        finally:
            with self._lock:
                self._pauses -= 1
                if not self._pauses:
                    self._paused_until = 0.0
            self._commands.put(lambda: None)  # wake the engine thread

    def _pause_left(self) -> float:
        if not self._pauses:  # the common case, read without the lock: a pause that begins
            return 0.0  # just after this read holds from the next step on
        with self._lock:
            if not self._pauses or self.scheduler.has_live_turn():
                return 0.0
            return self._paused_until - time.monotonic()

    # --- the engine thread -----------------------------------------------------------------

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while self._drain_commands():
                    self.step()
        except BaseException as err:  # the thread must not die silently
            self._error = err
            self._fail_all(EngineError(f"engine step failed: {err!r}"))

    def _drain_commands(self) -> bool:
        """Apply queued commands; block while there is nothing to compute, or while
        :meth:`paused`. False = stop.

        With work to do, only the commands already queued run before the next step: a stream
        of commands arriving as fast as they are applied must not hold the step back."""
        while True:
            if self._has_work():
                for _ in range(self._commands.qsize()):
                    if not self._apply_command(self._commands.get_nowait()):
                        return False
                left = self._pause_left()
                if left <= 0:
                    return True
                with contextlib.suppress(queue.Empty):  # a command may bring a live turn
                    if not self._apply_command(self._commands.get(timeout=left)):
                        return False
                continue
            if not self._apply_command(self._commands.get()):
                return False

    def _apply_command(self, cmd: Callable[[], None] | None) -> bool:
        if cmd is None:
            return False
        with self._lock:
            cmd()
        return True

    def _has_work(self) -> bool:
        with self._lock:  # open_conversation adds sequences from other threads
            return any(s.pending for s in self.scheduler.seqs.values())

    def step(self) -> None:
        """Schedule, run the model, sample, stream. Engine thread only."""
        with self._lock:
            batch = self.scheduler.schedule()
        if not batch:
            return
        out = self.runner.run(batch)
        with self._lock:
            ready = self.scheduler.complete(batch)
            assert [s.seq_id for s in ready] == [s.seq_id for s in out.seqs]
            self._steps += 1
            self._computed += len(batch.decodes) + sum(n for _, n in batch.prefills)
            for seq in batch.decodes:
                seq.computed += 1
            for seq, n in batch.prefills:
                seq.computed += n
            for seq, first, hidden in out.scored:
                self._keep_scores(self._convs[seq.seq_id], first, hidden)
            if out.logits is not None:
                self._emit(out.seqs, out.logits)
            for seq, _ in batch.prefills:
                self._resolve_waiters(self._convs[seq.seq_id])

    def _emit(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        states = [self._convs[s.seq_id] for s in seqs]
        gens = [st.gen for st in states]
        assert all(g is not None for g in gens)
        params = [g.params for g in gens]  # type: ignore[union-attr]
        seen = [s.tokens if p.penalized else [] for s, p in zip(seqs, params, strict=True)]
        done = [g.n for g in gens]  # type: ignore[union-attr]
        allowed = [self._allowed(g) for g in gens]  # type: ignore[arg-type]
        tokens = sample(logits, params, seen, [g.generator for g in gens], done, allowed)  # type: ignore[union-attr]
        logprobs: list[TokenLogprob | None] = [None] * len(tokens)
        if rows := [i for i, p in enumerate(params) if p.logprobs is not None]:
            picked = [tokens[i] for i in rows]
            counts = [params[i].logprobs or 0 for i in rows]
            found = token_logprobs(logits[rows], picked, counts)
            for i, tok, (logprob, top) in zip(rows, picked, found, strict=True):
                logprobs[i] = TokenLogprob(tok, logprob, top)
        for st, tok, token_logprob in zip(states, tokens, logprobs, strict=True):
            self._take_token(st, tok, token_logprob)

    def _allowed(self, gen: _Gen) -> Callable[[int], bool] | None:
        """What restricts a generation's next token: not the end of turn before ``min_tokens``,
        its JSON grammar, or nothing."""
        if gen.n < gen.params.min_tokens:
            return self._not_end
        return gen.matcher.allows if gen.matcher else None

    def _not_end(self, token: int) -> bool:
        return token not in self.tokenizer.eos_ids

    def _take_token(self, st: ConvState, tok: int, logprob: TokenLogprob | None = None) -> None:
        gen = st.gen
        assert gen is not None
        position = len(st.seq.tokens)
        self.scheduler.append_token(st.seq, tok)
        st.history.add_tokens([tok], self.tokenizer.token_bytes)
        gen.n += 1
        self._generated += 1
        if gen.matcher is not None and not gen.matcher.advance(tok):
            log.error("conversation %d: token %d is not JSON; the reply ends", st.seq.seq_id, tok)
        eos = tok in self.tokenizer.eos_ids and not gen.params.ignore_eos
        text = "" if eos else gen.decoder.feed(self.tokenizer.token_bytes(tok))
        finish = None
        if eos or gen.decoder.stopped:
            finish = "stop"
        elif gen.n >= gen.max_tokens:
            finish = "length"
        logprobs = None if logprob is None else [logprob]
        computed = st.seq.computed
        if finish is None:
            gen.sink(Delta([tok], text, None, position, logprobs, computed))
            return
        gen.sink(Delta([tok], text + gen.decoder.flush(), finish, position, logprobs, computed))
        eos_len = len(self.tokenizer.token_bytes(tok)) if eos else 0
        self._finish(st, finish, closed=eos, eos_bytes=eos_len)

    def _finish(self, st: ConvState, reason: str, closed: bool, eos_bytes: int = 0) -> None:
        st.gen = None
        self.scheduler.stop(st.seq)
        st.history.update_reply(closed=closed, end_token_bytes=eos_bytes)
        self._resolve_waiters(st)

    def _resolve_waiters(self, st: ConvState) -> None:
        """Wake appends whose tokens are computed; a finished plain prefill goes idle."""
        seq = st.seq
        if st.score is not None and seq.num_cached >= st.score.end:
            self._stop_scoring(st)  # done: later prefills of it keep no logits
        if seq.pending and self.scheduler.is_done(seq):
            self.scheduler.stop(seq)
        waiting = []
        for target, reply, value in st.waiters:
            if not seq.pending or seq.num_cached >= min(target, len(seq.tokens)):
                reply.ok(target if value is None else value())
            else:
                waiting.append((target, reply, value))
        st.waiters = waiting

    def _fail_all(self, err: EngineError) -> None:
        with self._lock:
            for st in self._convs.values():
                for _, reply, _ in st.waiters:
                    reply.fail(err)
                st.waiters.clear()
                st.score = None
                if st.gen is not None:
                    st.gen.sink(err)
                    st.gen = None
            self._stopped = True
        # commands that never ran fail with EngineClosed instead of hanging
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if cmd is not None:
                cmd()


_SCORE_ROWS = 256  # positions scored per logits matrix: 256 x 49,152 float32 is 50 MB
