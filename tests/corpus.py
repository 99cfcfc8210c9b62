"""Speech for tests and benchmarks: a set of sentences spoken by two different synthesizers.

Piper (the product's own voice) and espeak-ng (a very different, formant-based voice) both
speak every sentence, so ASR is checked on more than the voice it was paired with.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np

from audio.wav import read_wav_at

SENTENCES = [
    "Hello there.",
    "What is the weather like in Paris today?",
    "Please book a table for my family tonight.",
    "I think my package was sent to the wrong address.",
    "Can you tell me how to reset my password?",
    "The train to Boston leaves from the north station.",
    "I would like to cancel my subscription.",
    "Turn off the lights in the kitchen.",
    "Which restaurants near me are open late?",
    "Thank you very much, that was helpful.",
    "Read me the latest news about the election.",
    "Remind me to call my sister tomorrow morning.",
]


def espeak(text: str, path: Path, rate: int = 16_000, voice: str = "en-us") -> np.ndarray:
    """Speak ``text`` with espeak-ng into ``path``; return float32 audio at ``rate``.

    At 150 words a minute: espeak's default 175 is faster than people talk to an assistant.
    """
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text], check=True)
    return read_wav_at(path, rate)


def normalize(text: str) -> str:
    """Lower case, digits and apostrophes kept, other punctuation dropped, spaces collapsed."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edit distance, reference word count) after :func:`normalize`."""
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)
