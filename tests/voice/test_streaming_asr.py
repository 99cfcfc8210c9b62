"""Streaming ASR: the pure cores exactly, then the worker and recognizer with the real Whisper
tiny.en on real (Piper) speech fed in 20-32 ms frames. No wall-clock asserts: partials are paced
by the audio clock and awaited in line, so every run asks for the same partials."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import numpy as np
import pytest

from tests.corpus import normalize, word_errors
from voice.asr import SAMPLE_RATE, Transcriber
from voice.streaming_asr import (
    AsrWorker,
    AsrWorkerClosed,
    JobQueue,
    LocalAgreement,
    Partial,
    StreamingAsrConfig,
    StreamingRecognizer,
    check_audio,
    quietest_point,
)

NO_AUDIO = np.zeros(0, np.float32)
T = TypeVar("T")

# -- pure cores ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"partial_interval_s": 0.0}, "partial_interval_s"),
        ({"min_partial_audio_s": -1.0}, "min_partial_audio_s"),
        ({"agreement": 1}, "agreement"),
        ({"holdback_words": -1}, "holdback_words"),
        ({"max_buffer_s": 29.0}, "max_buffer_s"),
        ({"seal_search_s": 20.0}, "seal_search_s"),
        ({"seal_after_s": 1.0}, "seal_after_s"),
        ({"max_buffer_s": 6.0, "seal_search_s": 2.0, "seal_after_s": 6.0}, "seal_after_s"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StreamingAsrConfig(**kwargs)  # type: ignore[arg-type]


def test_local_agreement_holds_back_the_last_word_and_never_retracts() -> None:
    la = LocalAgreement(agreement=2, holdback_words=1)
    assert la.update("What is") == ""  # one hypothesis agrees with nothing
    assert la.update("What is the whether") == "What is"  # "the" agreed? no: absent before
    assert la.update("What is the weather like") == "What is the"  # "weather" disagrees
    assert la.update("what is the weather, like in") == "What is the weather, like"
    # a hypothesis contradicting stable words: stable holds, it does not retract
    assert la.update("Why is the weather like in Paris") == "What is the weather, like"
    assert la.update("Why is the weather like in Paris today") == "What is the weather, like"
    # agreeing again (without case or punctuation), it grows from where it was
    assert la.update("What is the weather like in Paris today?") == "What is the weather, like"
    assert la.update("What is the weather like in Paris today? Thanks") == (
        "What is the weather, like in Paris today?"
    )
    la.reset()
    assert la.stable == "" and la.update("Hello there") == ""


def test_local_agreement_over_three_hypotheses() -> None:
    la = LocalAgreement(agreement=3, holdback_words=0)
    assert la.update("a b") == "" and la.update("a b c") == ""
    assert la.update("a b c d") == "a b"
    assert la.update("a x") == "a b"  # contradicts "b": held


def test_job_queue_runs_finals_first_and_supersedes_partials_per_key() -> None:
    q: JobQueue[str] = JobQueue()
    one, two, three = (np.full(n, n, np.float32) for n in (1, 2, 3))
    q.push(one, final=False, key="a", waiter="a1")
    q.push(one, final=False, key="b", waiter="b1")
    q.push(two, final=False, key="a", waiter="a2")  # supersedes a1, keeps a's place
    q.push(three, final=True, key="c", waiter="c1")
    q.push(one, final=False, key=None, waiter="n1")
    q.push(two, final=False, key=None, waiter="n2")  # no key: never superseded
    assert len(q) == 5
    jobs = [q.pop() for _ in range(5)]
    assert [(j.final, len(j.audio), j.waiters) for j in jobs if j] == [
        (True, 3, ["c1"]),
        (False, 2, ["a1", "a2"]),
        (False, 1, ["b1"]),
        (False, 1, ["n1"]),
        (False, 2, ["n2"]),
    ]
    assert q.pop() is None


def test_job_queue_a_superseding_partial_brings_its_context() -> None:
    q: JobQueue[str] = JobQueue()
    q.push(NO_AUDIO, final=False, key="a", waiter="a1", context="")
    q.push(NO_AUDIO, final=False, key="a", waiter="a2", context="Mm-hmm.")
    q.push(NO_AUDIO, final=True, key="b", waiter="b1", context="Okay.")
    assert [(j.context, j.waiters) for j in (q.pop(), q.pop()) if j] == [
        ("Okay.", ["b1"]),
        ("Mm-hmm.", ["a1", "a2"]),
    ]


def test_job_queue_final_absorbs_the_partial_of_its_key() -> None:
    q: JobQueue[str] = JobQueue()
    q.push(NO_AUDIO, final=False, key="a", waiter="p")
    q.push(NO_AUDIO, final=True, key="a", waiter="f")
    job = q.pop()
    assert job is not None and job.final and job.waiters == ["p", "f"]
    assert q.pop() is None


def test_job_queue_abandon_drops_a_job_only_when_nobody_waits() -> None:
    q: JobQueue[str] = JobQueue()
    q.push(NO_AUDIO, final=False, key="a", waiter="a1")
    q.push(NO_AUDIO, final=False, key="a", waiter="a2")
    q.push(NO_AUDIO, final=True, key=None, waiter="f")
    q.abandon("a1")
    q.abandon("f")
    assert len(q) == 1
    q.abandon("a2")
    q.abandon("unknown")
    assert len(q) == 0 and q.pop() is None


def test_quietest_point_finds_the_gap() -> None:
    audio = np.ones(1000, np.float32)
    audio[620:640] = 0.0
    assert quietest_point(audio, 400, 900, 20) == 630
    assert quietest_point(audio, 0, 500, 20) in range(0, 500)


@pytest.mark.parametrize(
    ("audio", "match"),
    [
        (np.zeros(320, np.int16), "float32"),
        (np.zeros(320, np.float64), "float32"),
        (np.zeros((2, 320), np.float32), "mono"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.array([np.inf], np.float32), "infinite"),
        ([0.0, 0.1], "numpy array"),
    ],
)
def test_bad_audio_is_rejected_clearly(audio: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_audio(audio)


# -- with the real model ------------------------------------------------------------------------


@pytest.fixture
async def worker(transcriber: Transcriber) -> AsyncIterator[AsrWorker]:
    worker = AsrWorker(transcriber)
    yield worker
    await worker.close()  # waits for a job still running: the transcriber is free again


@pytest.fixture(scope="module")
def clips(speech: list[tuple[str, str, np.ndarray]]) -> list[np.ndarray]:
    """Piper speech, 2-4 s each."""
    piper = [a for _, v, a in speech if v == "piper" and len(a) >= 2 * SAMPLE_RATE]
    return piper[:3]


def frames(audio: np.ndarray, ms: int) -> list[np.ndarray]:
    n = SAMPLE_RATE * ms // 1000
    return [audio[i : i + n] for i in range(0, len(audio), n)]


async def feed(rec: StreamingRecognizer, audio: np.ndarray, ms: int) -> list[Partial]:
    """Feed ``audio`` frame by frame, awaiting a partial whenever one is due."""
    partials = []
    for frame in frames(audio, ms):
        rec.add(frame)
        if rec.partial_due():
            partials.append(await rec.partial())
    return partials


def is_word_prefix(prefix: str, text: str) -> bool:
    words = normalize(prefix).split()
    return words == normalize(text).split()[: len(words)]


@pytest.mark.parametrize(("clip", "ms"), [(0, 20), (1, 32)])
async def test_partials_grow_stable_prefixes_of_the_final(
    worker: AsrWorker, transcriber: Transcriber, clips: list[np.ndarray], clip: int, ms: int
) -> None:
    audio, rec = clips[clip], StreamingRecognizer(worker)
    partials = await feed(rec, audio, ms)
    final = await rec.final()
    assert final.text == transcriber.transcribe(audio).text  # the worker is idle: safe to share
    assert len(partials) >= len(audio) / SAMPLE_RATE / rec.config.partial_interval_s - 2
    stables = [p.stable for p in partials]
    for before, after in itertools.pairwise(stables):
        assert after.startswith(before), stables
    assert stables[-1], f"nothing stable in {[p.text for p in partials]}"
    assert is_word_prefix(stables[-1], final.text), (stables, final.text)


async def test_finals_run_before_partials_across_recognizers(
    worker: AsrWorker, transcriber: Transcriber, clips: list[np.ndarray]
) -> None:
    a, b = StreamingRecognizer(worker), StreamingRecognizer(worker)
    a.add(clips[0])
    b.add(clips[1])
    done: list[str] = []

    async def run(name: str, job: Awaitable[T]) -> T:
        result = await job
        done.append(name)
        return result

    # the tasks start in this order: the first partial runs, the second queues behind it, and
    # the final starts beside the first at once (a final never waits for a partial)
    busy = asyncio.create_task(run("busy", worker.transcribe(clips[2], final=False, key="x")))
    part_b = asyncio.create_task(run("partial b", b.partial()))
    await asyncio.sleep(0)
    assert worker.running == 1 and worker.queued == 1  # one partial at a time
    final_a = asyncio.create_task(run("final a", a.final()))
    await asyncio.sleep(0)
    assert worker.running == 2 and worker.queued == 1
    await asyncio.gather(busy, part_b, final_a)
    assert done.index("final a") < done.index("partial b")
    assert done.index("busy") < done.index("partial b")
    assert final_a.result().text == transcriber.transcribe(clips[0]).text
    assert busy.result().text and part_b.result().text


async def test_finals_of_two_callers_run_at_once_and_match_one_at_a_time(
    worker: AsrWorker, transcriber: Transcriber, clips: list[np.ndarray]
) -> None:
    """Two finals share the Transcriber from two threads: each reads exactly what it reads
    alone (no state leaks between concurrent calls), and a partial waits for both."""
    recs = [StreamingRecognizer(worker) for _ in clips]
    for rec, audio in zip(recs, clips, strict=True):
        rec.add(audio)
    for _ in range(3):  # a few rounds: the calls overlap at different points
        finals = [asyncio.create_task(rec.final()) for rec in recs]
        partial = asyncio.create_task(recs[0].partial())
        await asyncio.sleep(0)
        assert worker.running == 2 and worker.queued == len(clips) - 2 + 1
        texts = [t.text for t in await asyncio.gather(*finals)]
        assert texts == [transcriber.transcribe(audio).text for audio in clips]
        assert (await partial).text


async def test_a_superseded_partial_gets_the_newer_result(
    worker: AsrWorker, clips: list[np.ndarray]
) -> None:
    rec = StreamingRecognizer(worker)
    busy = asyncio.create_task(worker.transcribe(clips[1], final=True))
    rec.add(clips[0][:SAMPLE_RATE])
    older = asyncio.create_task(rec.partial())
    await asyncio.sleep(0)  # one loop turn: the tasks have queued their jobs
    assert worker.running == 1 and worker.queued == 1
    rec.add(clips[0][SAMPLE_RATE:])
    newer = asyncio.create_task(rec.partial())
    await asyncio.sleep(0)
    assert worker.queued == 1  # the newer request took the older one's place
    await busy
    assert await older is await newer


async def test_cancelling_waiters_leaves_the_worker_serving(
    worker: AsrWorker, transcriber: Transcriber, clips: list[np.ndarray]
) -> None:
    recs = [StreamingRecognizer(worker) for _ in range(3)]
    for rec, audio in zip(recs, clips, strict=True):
        rec.add(audio)
    running = asyncio.create_task(recs[0].final())
    queued = [asyncio.create_task(recs[1].partial()), asyncio.create_task(recs[2].final())]
    await asyncio.sleep(0)
    assert worker.running == 2 and worker.queued == 1  # the second final runs beside the first
    for task in [running, *queued]:
        task.cancel()
    results = await asyncio.gather(running, *queued, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert worker.queued == 0
    # the cancelled jobs may still be running: the next one waits for a free thread, then runs
    assert (await recs[2].final()).text == transcriber.transcribe(clips[2]).text
    assert recs[1].partial_due()  # the cancelled partial no longer counts as in flight
    assert (await recs[1].partial()).text


async def test_reset_forgets_the_utterance(
    worker: AsrWorker, transcriber: Transcriber, clips: list[np.ndarray]
) -> None:
    rec = StreamingRecognizer(worker)
    rec.add(clips[0])
    await rec.partial()
    assert (await rec.partial()).stable  # two hypotheses of the same audio agree
    stale = asyncio.create_task(rec.partial())
    await asyncio.sleep(0)  # queued on the old audio
    rec.reset()
    assert (await stale).stable == "" and rec.stable == ""  # not folded into the new utterance
    assert rec.stable == "" and rec.audio_s == 0 and not rec.partial_due()
    rec.add(clips[1])
    assert rec.partial_due()
    partial = await rec.partial()
    assert partial.stable == ""  # one hypothesis of the new utterance agrees with nothing
    final = await rec.final()
    assert final.text == transcriber.transcribe(clips[1]).text


async def test_bad_frames_raise_and_the_recognizer_keeps_working(
    worker: AsrWorker, clips: list[np.ndarray]
) -> None:
    rec = StreamingRecognizer(worker)
    for bad in (np.zeros(320, np.int16), np.zeros((320, 2), np.float32), np.full(4, np.nan)):
        with pytest.raises(ValueError):
            rec.add(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        await worker.transcribe(np.full(4, np.nan, np.float32), final=True)
    assert rec.audio_s == 0
    rec.add(clips[0])
    assert (await rec.final()).text


async def test_long_utterances_are_sealed_and_the_buffer_stays_bounded(
    worker: AsrWorker, speech: list[tuple[str, str, np.ndarray]]
) -> None:
    items = [(t, a) for t, v, a in speech if v == "piper"][1:5]
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    audio = np.concatenate([x for _, a in items for x in (a, gap)])
    config = StreamingAsrConfig(max_buffer_s=5.0, seal_search_s=2.0, partial_interval_s=2.0)
    rec = StreamingRecognizer(worker, config)
    stables, most = [], 0.0
    for frame in frames(audio, 20):
        rec.add(frame)
        if rec.partial_due():
            stables.append((await rec.partial()).stable)
            most = max(most, rec.buffered_s)
    assert rec.audio_s > 2 * config.max_buffer_s
    assert most <= config.max_buffer_s
    final = await rec.final()
    errors, _ = word_errors(" ".join(t for t, _ in items), final.text)
    assert errors <= 3, final.text
    for before, after in itertools.pairwise(stables):
        assert after.startswith(before)


async def test_partials_seal_a_long_turn_early_so_the_final_hears_only_the_rest(
    worker: AsrWorker, recorded
) -> None:
    """A 7 s recorded sentence: by its end the partials have sealed its head, and the final
    (the head's text, then the rest's) still reads it right (measured: one word lost, the
    leading "And", which the whole sentence's transcription keeps)."""
    r = recorded["librivox-0870"]
    rec = StreamingRecognizer(worker)
    assert rec.config.seal_after_s is not None
    stables = [p.stable for p in await feed(rec, r.audio, 32)]
    assert rec.audio_s == pytest.approx(len(r.audio) / SAMPLE_RATE)
    assert rec.buffered_s <= rec.config.seal_after_s + rec.config.partial_interval_s
    assert rec.buffered_s < rec.audio_s - 2  # the final's audio: the rest only
    final = await rec.final()
    assert word_errors(r.text, final.text)[0] <= 2, final.text
    # stable text still only grows (where the sealed head reads a stable word otherwise, it
    # holds: the final is the authority)
    for before, after in itertools.pairwise(stables):
        assert after.startswith(before), stables


async def test_a_final_never_seals_early(worker: AsrWorker, recorded) -> None:
    r = recorded["librivox-0870"]
    rec = StreamingRecognizer(worker)
    rec.add(r.audio)  # no partial ran: the head is not sealed
    final = await rec.final()
    assert rec.buffered_s == rec.audio_s  # one call over all of it
    assert word_errors(r.text, final.text)[0] <= 2, final.text


async def test_a_closed_worker_refuses_and_fails_queued_requests(
    transcriber: Transcriber, clips: list[np.ndarray]
) -> None:
    worker = AsrWorker(transcriber)
    running = asyncio.create_task(worker.transcribe(clips[0], final=True))
    queued = asyncio.create_task(worker.transcribe(clips[1], final=False))
    await asyncio.sleep(0)
    await worker.close()
    assert (await running).text
    with pytest.raises(AsrWorkerClosed):
        await queued
    with pytest.raises(AsrWorkerClosed):
        await worker.transcribe(clips[0], final=True)
