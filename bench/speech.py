"""Speech services benchmark: ASR and TTS latency on the packaged default models.

Prints, side by side with the baseline of a padded 30 s Whisper window (what faster-whisper does
on every call):
  1. word error rate and mean encode time against the encoder window's margin, per voice;
  2. ASR latency (encode + decode) and real-time factor against utterance length;
  3. TTS time to first chunk and real-time factor against text length.
No asserts: these are figures to read. Run on a quiet machine: `python bench/speech.py`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.corpus import SENTENCES, espeak, word_errors
from voice import assets
from voice.asr import SAMPLE_RATE, AsrConfig, Transcriber
from voice.tts import Synthesizer

FULL = 30.0


def corpus(synth: Synthesizer, tmp: Path) -> list[tuple[str, str, np.ndarray]]:
    items = []
    for i, text in enumerate(SENTENCES):
        items.append((text, "piper", synth.synthesize(text, SAMPLE_RATE)))
        items.append((text, "espeak", espeak(text, tmp / f"{i}.wav")))
    return items


def window_sweep(asr: Transcriber, items: list, margins: list[float]) -> None:
    print("\n## ASR accuracy and encode cost against the encoder window")
    print("window                   WER piper  WER espeak  WER all  enc+dec ms  vs 30 s  retried")

    def fixed(margin: float | None):  # no confidence retry: the window alone
        def run(audio: np.ndarray):
            dur = len(audio) / SAMPLE_RATE
            window = FULL if margin is None else AsrConfig(window_margin_s=margin).window_for(dur)
            return asr.transcribe(audio, window_s=window)

        return run

    rows = [(f"audio + {m:g} s", fixed(m)) for m in margins]
    rows.append((f"default (+{asr.config.window_margin_s:g} s, retry)", asr.transcribe))
    rows.append(("30 s (baseline)", fixed(None)))
    results = []
    for label, run in rows:
        errs = {"piper": [0, 0], "espeak": [0, 0]}
        cost, retried = [], 0
        for text, voice, audio in items:
            r = run(audio)
            e, n = word_errors(text, r.text)
            errs[voice][0] += e
            errs[voice][1] += n
            cost.append(r.encode_s + r.decode_s)
            retried += r.retried
        results.append((label, errs, statistics.mean(cost), retried))
    base = results[-1][2]
    for label, errs, cost, retried in results:
        wer = {v: e / n for v, (e, n) in errs.items()}
        total = sum(e for e, _ in errs.values()) / sum(n for _, n in errs.values())
        print(
            f"{label:24} {wer['piper']:9.1%} {wer['espeak']:11.1%} {total:8.1%} "
            f"{cost * 1e3:10.0f}  {cost / base:6.2f}x  {retried:4}/{len(items)}"
        )


def latency_vs_length(asr: Transcriber, items: list) -> None:
    print("\n## ASR latency against utterance length (piper speech, default window; median of 3)")
    print("audio s  window s  encode ms  decode ms  total ms   RTF   | 30 s window total ms  ratio")
    piper = [a for _, v, a in items if v == "piper"]
    gap = np.zeros(SAMPLE_RATE // 4, np.float32)
    for target in (1, 2, 4, 8, 15, 25):
        parts: list[np.ndarray] = []
        for a in piper * 4:
            if sum(len(p) for p in parts) >= target * SAMPLE_RATE:
                break
            parts += [a, gap]
        audio = np.concatenate(parts)[: target * SAMPLE_RATE]
        dur = len(audio) / SAMPLE_RATE
        short = AsrConfig().window_for(dur)
        runs = [asr.transcribe(audio, window_s=short) for _ in range(3)]
        full = [asr.transcribe(audio, window_s=FULL) for _ in range(3)]
        enc = statistics.median(r.encode_s for r in runs)
        dec = statistics.median(r.decode_s for r in runs)
        tot = statistics.median(r.encode_s + r.decode_s for r in runs)
        ftot = statistics.median(r.encode_s + r.decode_s for r in full)
        print(
            f"{dur:7.1f}  {runs[0].window_s:8.0f}  {enc * 1e3:9.0f}  {dec * 1e3:9.0f}  "
            f"{tot * 1e3:8.0f}  {tot / dur:5.3f} | {ftot * 1e3:20.0f}  {ftot / tot:5.2f}x"
        )


def tts_latency(synth: Synthesizer) -> None:
    print("\n## TTS time to first chunk and real-time factor (median of 3, 24 kHz output)")
    print("words  first chunk ms  total ms  audio s   RTF")
    texts = [
        "Sure.",
        "Sure, I can help with that.",
        "Sure, I can help with that. Your table for two is booked for tonight.",
        " ".join(SENTENCES[:6]),
    ]
    for text in texts:
        firsts, totals, durs = [], [], []
        for _ in range(3):
            t0 = time.perf_counter()
            first = None
            n = 0
            for chunk in synth.stream(text, 24_000):
                first = first or time.perf_counter() - t0
                n += len(chunk)
            totals.append(time.perf_counter() - t0)
            firsts.append(first or 0.0)
            durs.append(n / 24_000)
        tot, dur = statistics.median(totals), statistics.median(durs)
        print(
            f"{len(text.split()):5}  {statistics.median(firsts) * 1e3:14.0f}  {tot * 1e3:8.0f}  "
            f"{dur:7.2f}  {tot / dur:5.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins", default="1,2,3,4,6")
    parser.add_argument("--model", default="whisper-tiny-en")
    args = parser.parse_args()
    registry, cache = assets.load_registry(), assets.default_cache_dir()
    asr = Transcriber(assets.ensure(registry[args.model], cache))
    synth = Synthesizer(assets.ensure(registry["piper-joe-medium"], cache))
    print(f"# bench/speech.py  model={args.model}  threads={asr.config.cpu_threads}")
    with tempfile.TemporaryDirectory() as tmp:
        items = corpus(synth, Path(tmp))
        asr.transcribe(items[0][2])  # warm-up
        window_sweep(asr, items, [float(m) for m in args.margins.split(",")])
        latency_vs_length(asr, items)
    tts_latency(synth)


if __name__ == "__main__":
    main()
