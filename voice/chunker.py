"""Text chunking for TTS: a stream of LLM text deltas in, speakable chunks out. No I/O.

``SentenceChunker.push(delta)`` returns the chunks that the text so far completes; ``flush()``
returns the rest when the reply ends and readies the chunker for the next reply.

Where chunks end:

- The first chunk comes early, so the first audio does: at the first sentence end, or the first
  clause boundary (``,`` ``;`` ``:`` a spaced dash, an em dash, an ellipsis) with at least
  ``first_min_words`` words before it, or after ``first_max_words`` words with neither.
- After it, whole sentences: ``.`` ``!`` ``?`` (and closing quotes, brackets or markdown) followed
  by whitespace, or a line break. A sentence longer than ``clause_split_words`` words is split at
  its next clause boundary, and at ``max_words`` words regardless.
- A ``.`` does not end a sentence after a known abbreviation ("Dr.", "approx."), an initial
  ("J."), a dotted abbreviation ("e.g.", "U.S.", "p.m."), a list number at the start of a line
  ("2."), or when the next word starts in lower case; it never does inside "3.5" or "x.com"
  since no space follows. An ellipsis ends a sentence before a capital and is a clause boundary
  otherwise. When unsure the chunker does not split: a merged chunk costs nothing but a split
  mid-sentence breaks the voice's prosody.
- Deciding needs at most the first character of the next word, which LLM tokenizers deliver
  with the space, so the wait is rarely a whole token.

What the TTS is not given (each chunk is cleaned on its own): emphasis and code markers (``*``,
backticks, ``~~``, edge ``_``), heading ``#``, bullets (``-``, ``*``, ``+``) and ``>`` at the
start of a line, code-fence lines, link targets (``[text](url)`` reads "text"), and bare URLs,
which read as their host name ("https://www.example.com/a?b" -> "example.com") or, with
``urls="drop"``, not at all. Whitespace is collapsed. A chunk that cleans to nothing is not
emitted. Apart from that removed markup, the chunks' words are the reply's words, in order.

Each ``Chunk`` carries ``[source_start, source_end)``, the character offsets in the cumulative
raw text (everything pushed since the last flush) that it was cut from; ``source_end`` of the
last chunk played is where the caller's heard text ends. Chunks' ranges are contiguous and
increasing; one that follows a skipped (markup-only) stretch starts after it.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["Chunk", "ChunkerConfig", "SentenceChunker"]


@dataclass(slots=True)
class ChunkerConfig:
    """Chunk sizes in words (runs of non-space characters, em dashes aside, holding a letter
    or digit).

    first_min_words:    words needed before a clause boundary ends the first chunk.
    first_max_words:    the first chunk ends after this many words if nothing ended it sooner.
    clause_split_words: later, a sentence this long is split at its next clause boundary.
    max_words:          no chunk runs past this many words.
    urls:               "host" reads a URL as its host name; "drop" leaves it out.
    """

    first_min_words: int = 3
    first_max_words: int = 8
    clause_split_words: int = 20
    max_words: int = 40
    urls: Literal["host", "drop"] = "host"

    def __post_init__(self) -> None:
        if not 1 <= self.first_min_words <= self.first_max_words:
            raise ValueError("chunker: need 1 <= first_min_words <= first_max_words")
        if not 1 <= self.clause_split_words <= self.max_words:
            raise ValueError("chunker: need 1 <= clause_split_words <= max_words")
        if self.urls not in ("host", "drop"):
            raise ValueError(f"chunker.urls must be 'host' or 'drop', not {self.urls!r}")


@dataclass(slots=True, frozen=True)
class Chunk:
    """Text for the TTS, cut from raw characters ``[source_start, source_end)``."""

    text: str
    source_start: int
    source_end: int


_SENTENCE, _CLAUSE, _WAIT = "sentence", "clause", "wait"
_TERMINALS = ".!?…"
_CLOSERS = "\"')]}*_`\u201d\u2019"  # curly closing quotes too
_OPENERS = "\"'([{*_`\u201c\u2018"
_DASHES = "-\u2013"  # hyphen, en dash: clause boundaries only with a space on both sides
_EM_DASH = "\u2014"  # a clause boundary, spaced or not
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "mt", "ft", "approx", "appt",
    "dept", "est", "fig", "inc", "ltd", "co", "corp", "vol", "ca", "cf", "al",
    "jan", "feb", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "tue", "thu",
    "fri",
})  # fmt: skip
_WORD = re.compile(r"[^\s\u2014]*[^\W_][^\s\u2014]*")  # an em dash separates words
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # e.g / U.S / p.m (the last dot not included)
_LINK = re.compile(r"\[([^\]]*)\]\([^)\s]*\)")
_LINK_PIECES = re.compile(r"\]\([^)\s]*\)?|[\[\]]")  # a link cut in two by a word cap
_URL = re.compile(r"(?:\bhttps?://|\bwww\.)[^\s<>\"'()\[\]]+")
_LINE_MARKUP = re.compile(r"^(?:#{1,6}\s+|[-*+]\s+|>\s*)+")
_INLINE_MARKUP = re.compile(r"[*`]+|~~|(?<!\w)_+|_+(?!\w)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")


class SentenceChunker:
    """Streams LLM text into TTS chunks; see the module docstring for the rules."""

    __slots__ = ("_config", "_first", "_pending", "_start")

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        self._config = config if config is not None else ChunkerConfig()
        self._pending = ""  # raw text not yet emitted
        self._start = 0  # offset of _pending in the cumulative raw text
        self._first = True

    @property
    def config(self) -> ChunkerConfig:
        return self._config

    def push(self, text_delta: str) -> list[Chunk]:
        """Add the next piece of the reply; return the chunks it completes (often none)."""
        self._pending += text_delta
        out: list[Chunk] = []
        while (cut := self._find_cut()) is not None:
            self._emit(cut, out)
        return out

    def flush(self) -> list[Chunk]:
        """The reply is complete: return what remains (0 or 1 chunk) and start afresh."""
        out: list[Chunk] = []
        self._emit(len(self._pending), out)
        self._pending, self._start, self._first = "", 0, True
        return out

    def _emit(self, cut: int, out: list[Chunk]) -> None:
        raw, self._pending = self._pending[:cut], self._pending[cut:]
        text = _clean(raw, self._start == 0, self._config.urls)
        start, self._start = self._start, self._start + cut
        if text:
            out.append(Chunk(text, start, self._start))
            self._first = False

    def _find_cut(self) -> int | None:
        """Where the next chunk ends in ``_pending``, or None if that is not yet known."""
        c, s = self._config, self._pending
        word_ends = [m.end() for m in _WORD.finditer(s)]
        cap = c.first_max_words if self._first else c.max_words
        min_clause = c.first_min_words if self._first else c.clause_split_words
        # after the cap-th word, once something after it shows the word is complete
        cap_at = word_ends[cap - 1] if len(word_ends) >= cap else None
        if cap_at == len(s):
            cap_at = None
        for pos, kind in _boundaries(s):
            if cap_at is not None and cap_at < pos:
                return cap_at
            if kind == _WAIT:
                return None
            if pos == 0:
                continue
            words = bisect_right(word_ends, pos)
            if words == 0 or kind == _SENTENCE or words >= min_clause:
                return pos  # a stretch with no words is cut off and dropped
        return cap_at


def _boundaries(s: str) -> Iterator[tuple[int, str]]:
    """Candidate chunk ends in ``s`` in order, as (offset, kind); (offset, _WAIT) and stop where
    the text so far cannot tell."""
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch == "\n":
            yield i, _SENTENCE
            i += 1
        elif ch in _TERMINALS:
            j = _skip(s, i, _TERMINALS)
            k = _skip(s, j, _CLOSERS)
            if k == n:
                yield i, _WAIT
                return
            if s[k].isspace():
                kind = _terminal_kind(s, i, j, k)
                if kind == _WAIT:
                    yield i, _WAIT
                    return
                if kind:
                    yield k, kind
            i = k
        elif ch in ",;:":
            k = _skip(s, i + 1, _CLOSERS)
            if k == n:
                yield i, _WAIT
                return
            if s[k].isspace():
                yield k, _CLAUSE
            i = k
        elif ch == _EM_DASH or (ch in _DASHES and i > 0 and s[i - 1].isspace()):
            if i + 1 == n and ch != _EM_DASH:
                yield i, _WAIT
                return
            if ch == _EM_DASH or s[i + 1].isspace():
                yield i + 1, _CLAUSE
            i += 1
        else:
            i += 1


def _terminal_kind(s: str, i: int, j: int, k: int) -> str:
    """Kind of the boundary after terminal run ``s[i:j]`` (closers to ``k``, then whitespace):
    _SENTENCE, _CLAUSE, _WAIT, or "" for none."""
    run = s[i:j]
    if "!" in run or "?" in run:
        return _SENTENCE
    if run == "." and _dot_continues(s, i):
        return ""
    m = k
    while m < len(s) and s[m].isspace():
        m += 1
    if "\n" in s[k:m]:
        return _SENTENCE
    if m == len(s):
        return _WAIT
    ellipsis = run != "."
    if s[m].islower():
        return _CLAUSE if ellipsis else ""
    return _SENTENCE


def _dot_continues(s: str, i: int) -> bool:
    """Whether the ``.`` at ``s[i]`` belongs to the word before it rather than ending a sentence."""
    j = i
    while j > 0 and not s[j - 1].isspace():
        j -= 1
    word = s[j:i].lstrip(_OPENERS)
    if not word:
        return False
    if word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return True
    if _DOTTED.fullmatch(word):
        return True
    line_start = s.rfind("\n", 0, j) + 1
    return word.isdigit() and not s[line_start:j].strip()  # "2." opening a list item


def _skip(s: str, i: int, chars: str) -> int:
    while i < len(s) and s[i] in chars:
        i += 1
    return i


def _clean(raw: str, at_line_start: bool, urls: str) -> str:
    """The words of ``raw`` for the TTS: markup removed, URLs shortened, whitespace collapsed."""
    text = _LINK.sub(r"\1", raw)
    text = _URL.sub(lambda m: _spoken_url(m.group(), urls), text)
    text = _LINK_PIECES.sub("", text)
    lines = []
    for n, line in enumerate(text.split("\n")):
        if n > 0 or at_line_start:
            line = line.lstrip()
            if line.startswith("```"):
                continue
            line = _LINE_MARKUP.sub("", line)
        lines.append(line)
    text = _INLINE_MARKUP.sub("", " ".join(lines))
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))
    return "" if not any(ch.isalnum() for ch in text) else text


def _spoken_url(url: str, urls: str) -> str:
    stripped = url.rstrip(".,;:!?")
    tail = url[len(stripped) :]
    if urls == "drop":
        return tail
    host = urlsplit(stripped if "://" in stripped else "http://" + stripped).hostname or ""
    return host.removeprefix("www.") + tail
