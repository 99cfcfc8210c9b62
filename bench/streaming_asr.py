"""Streaming ASR benchmark: partials while a caller speaks, final at the pause.

For a few Piper utterances fed in 20 ms frames, asking for a partial whenever
``partial_due()`` says so, prints per partial interval:
  - how many partials were asked for and their cost (request to result, wall ms);
  - how early the stable text covered 80 % of the final's words (as a word prefix), in audio
    seconds before the end of the utterance ("never": only the final did);
  - the final's latency (wall ms), next to the baseline of one ``Transcriber.transcribe`` call
    on the whole utterance with the worker idle.

Default (audio clock): each partial is awaited before the next frame, so which partials are
asked for, and the stable text's lead, do not depend on the CPU; add a partial's cost to the
lead's moment for the wall-clock view. ``--realtime`` feeds frames at real-time pace instead and
lets partials run alongside (meaningful only on a quiet machine).
No asserts: these are figures to read. Run on a quiet machine: `python bench/streaming_asr.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.corpus import normalize
from voice import assets
from voice.asr import SAMPLE_RATE, Transcriber
from voice.streaming_asr import AsrWorker, Partial, StreamingAsrConfig, StreamingRecognizer
from voice.tts import Synthesizer, TtsConfig

FRAME = SAMPLE_RATE // 50  # 20 ms
TEXTS = [
    "What is the weather like in Paris today?",
    "I think my package was sent to the wrong address.",
    "Can you tell me how to reset my password?",
]


@dataclass(slots=True)
class Run:
    partial_ms: list[float] = field(default_factory=list)
    stable_at: list[tuple[float, str]] = field(default_factory=list)  # (audio s at arrival, stable)
    final_ms: float = 0.0
    final: str = ""


async def timed_partial(rec: StreamingRecognizer, run: Run, clock: list[float]) -> Partial:
    t0 = time.perf_counter()
    p = await rec.partial()
    run.partial_ms.append((time.perf_counter() - t0) * 1e3)
    run.stable_at.append((clock[0], p.stable))
    return p


async def stream(
    worker: AsrWorker, cfg: StreamingAsrConfig, audio: np.ndarray, realtime: bool
) -> Run:
    rec, run, clock = StreamingRecognizer(worker, cfg), Run(), [0.0]
    loop, tasks = asyncio.get_running_loop(), []
    start = loop.time()
    for i in range(0, len(audio), FRAME):
        if realtime:
            await asyncio.sleep(max(0.0, start + i / SAMPLE_RATE - loop.time()))
        rec.add(audio[i : i + FRAME])
        clock[0] = rec.audio_s
        if rec.partial_due():
            tasks.append(asyncio.create_task(timed_partial(rec, run, clock)))
            if not realtime:
                await tasks[-1]
    if realtime:
        await asyncio.sleep(max(0.0, start + len(audio) / SAMPLE_RATE - loop.time()))
    t0 = time.perf_counter()
    final = await rec.final()
    run.final_ms, run.final = (time.perf_counter() - t0) * 1e3, final.text
    await asyncio.gather(*tasks)
    return run


def lead_80(run: Run, end_s: float) -> float | None:
    """Audio seconds before the end when the stable text first held 80 % of the final's words."""
    final = normalize(run.final).split()
    for at, stable in run.stable_at:
        words = normalize(stable).split()
        if words == final[: len(words)] and len(words) >= 0.8 * len(final):
            return end_s - at
    return None


def partial_cost(transcriber: Transcriber, audio: np.ndarray, repeats: int = 5) -> None:
    """The cost of one partial against its audio length: the minimum of ``repeats`` runs (the
    least disturbed by other processes), on prefixes of one utterance, short window only."""
    print(f"\n## partial cost (short window, min of {repeats} runs)")
    print("audio s  window s  encode ms  decode ms  total ms  tokens")
    cfg = transcriber.config
    for seconds in (1.0, 2.0, 3.0, 4.0):
        clip = audio[: round(seconds * SAMPLE_RATE)]
        window = cfg.window_for(len(clip) / SAMPLE_RATE + cfg.lead_silence_s)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = transcriber.transcribe(clip, window_s=window)
            runs.append(((time.perf_counter() - t0) * 1e3, r))
        ms, r = min(runs, key=lambda x: x[0])
        print(
            f"{len(clip) / SAMPLE_RATE:7.2f}  {window:8.1f}  {r.encode_s * 1e3:9.0f}  "
            f"{r.decode_s * 1e3:9.0f}  {ms:8.0f}  {len(r.tokens):6d}"
        )


def baseline_ms(transcriber: Transcriber, audio: np.ndarray) -> float:
    t0 = time.perf_counter()
    transcriber.transcribe(audio)
    return (time.perf_counter() - t0) * 1e3


async def main(intervals: list[float], realtime: bool) -> None:
    cache = assets.default_cache_dir()
    registry = assets.load_registry()
    transcriber = Transcriber(assets.ensure(registry["whisper-tiny-en"], cache))
    synth = Synthesizer(
        assets.ensure(registry["piper-joe-medium"], cache),
        TtsConfig(noise_scale=0, noise_w_scale=0),
    )
    clips = [synth.synthesize(t, SAMPLE_RATE) for t in TEXTS]
    transcriber.transcribe(clips[0])  # warm up
    print(f"load average: {os.getloadavg()[0]:.2f} (2 threads per job; above ~0.5 is not quiet)")
    partial_cost(transcriber, np.concatenate(clips))
    print()
    worker = AsrWorker(transcriber)
    print(f"load average: {os.getloadavg()[0]:.2f} (2 threads per job; above ~0.5 is not quiet)")
    print("interval  utterance  audio s  partials  partial ms (median/max)  stable>=80% lead s"
          "  final ms  baseline ms")  # fmt: skip
    for interval in intervals:
        cfg = StreamingAsrConfig(partial_interval_s=interval)
        for text, clip in zip(TEXTS, clips, strict=True):
            run = await stream(worker, cfg, clip, realtime)
            base = baseline_ms(transcriber, clip)  # the worker is idle now
            lead = lead_80(run, len(clip) / SAMPLE_RATE)
            lead_s = "never" if lead is None else f"{lead:+.2f}"
            print(
                f"{interval:7.2f}  {text[:9]:9}  {len(clip) / SAMPLE_RATE:7.2f}  "
                f"{len(run.partial_ms):8d}  {statistics.median(run.partial_ms):12.0f} /"
                f" {max(run.partial_ms):4.0f}  {lead_s:>18}  {run.final_ms:8.0f}  {base:11.0f}"
            )
            print(f"          final: {run.final!r}; stable: {[s for _, s in run.stable_at]}")
    await worker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--realtime", action="store_true", help="pace frames in real time")
    args = parser.parse_args()
    asyncio.run(main(args.intervals, args.realtime))
