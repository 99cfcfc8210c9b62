"""What the server measures, in Prometheus' text exposition format (``GET /metrics``).

Counters and histograms live on the server's event loop (the API handlers and the voice
sessions observe them there), so they need no lock. A histogram keeps a count per bucket
upper bound and renders them cumulatively, as Prometheus reads them.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_engine.engine import EngineStats


class Histogram:
    """Observations counted by the smallest bucket bound at or above them."""

    def __init__(self, bounds: Sequence[float]) -> None:
        assert list(bounds) == sorted(bounds) and bounds[-1] < math.inf
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def samples(self, labels: str = "") -> list[tuple[str, float]]:
        """(suffix and labels, value) lines: the cumulative buckets, the sum and the count."""
        join = f"{labels}," if labels else ""
        out, total = [], 0
        for bound, n in zip([*self.bounds, math.inf], self.counts, strict=True):
            total += n
            le = "+Inf" if bound == math.inf else repr(float(bound))
            out.append((f'_bucket{{{join}le="{le}"}}', float(total)))
        braces = f"{{{labels}}}" if labels else ""
        return [*out, (f"_sum{braces}", self.sum), (f"_count{braces}", float(total))]


# seconds: a voice turn's budget is a couple of hundred milliseconds, an API reply's longer
LATENCY_S = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
DURATION_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(slots=True)
class ApiMetrics:
    """The OpenAI-compatible HTTP API's requests."""

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)  # (route, status)
    first_token_s: Histogram = field(default_factory=lambda: Histogram(LATENCY_S))
    duration_s: Histogram = field(default_factory=lambda: Histogram(DURATION_S))
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was already resident
    completion_tokens: int = 0


@dataclass(slots=True)
class VoiceMetrics:
    """The voice sessions' replies, timed from the caller's end of speech."""

    responses: Counter[str] = field(default_factory=Counter)  # by final status
    first_audio_s: Histogram = field(default_factory=lambda: Histogram(LATENCY_S))
    barge_in_stop_s: Histogram = field(default_factory=lambda: Histogram(LATENCY_S))


Row = tuple[str, str, str, list[tuple[str, float]]]  # name, type, help, (suffix, value)


def render(rows: Iterable[Row], prefix: str = "parley_") -> str:
    """Prometheus' text format: each metric's HELP and TYPE, then its samples."""
    lines = []
    for name, kind, about, samples in rows:
        lines += [f"# HELP {prefix}{name} {about}", f"# TYPE {prefix}{name} {kind}"]
        lines += [f"{prefix}{name}{suffix} {_number(value)}" for suffix, value in samples]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def engine_rows(st: EngineStats) -> list[Row]:
    used = st.total_blocks - st.free_blocks
    return [
        ("engine_steps_total", "counter", "Forward passes of the LLM engine.", [("", st.steps)]),
        ("engine_computed_tokens_total", "counter", "Tokens the model ran, prefill and decode.",
         [("", st.computed_tokens)]),
        ("engine_generated_tokens_total", "counter", "Tokens sampled for replies.",
         [("", st.generated_tokens)]),
        ("engine_conversations", "gauge", "Open conversations.", [("", st.conversations)]),
        ("engine_generating", "gauge", "Replies being generated.", [("", st.generating)]),
        ("kv_blocks", "gauge", "KV cache blocks by state.",
         [('{state="free"}', st.free_blocks), ('{state="used"}', used)]),
    ]  # fmt: skip


def api_rows(m: ApiMetrics) -> list[Row]:
    requests = [(f'{{route="{route}",code="{code}"}}', float(n))
                for (route, code), n in sorted(m.requests.items())]  # fmt: skip
    return [
        ("api_requests_total", "counter", "API requests by route and status.", requests),
        ("api_time_to_first_token_seconds", "histogram", "From a completion request's "
         "arrival to its first token.", m.first_token_s.samples()),
        ("api_request_duration_seconds", "histogram", "From a completion request's arrival "
         "to its last token.", m.duration_s.samples()),
        ("api_prompt_tokens_total", "counter", "Prompt tokens of completion requests.",
         [("", float(m.prompt_tokens))]),
        ("api_cached_prompt_tokens_total", "counter", "Prompt tokens whose KV cache was "
         "already resident (not computed again).", [("", float(m.cached_tokens))]),
        ("api_completion_tokens_total", "counter", "Tokens generated for completion requests.",
         [("", float(m.completion_tokens))]),
    ]  # fmt: skip


def voice_rows(m: VoiceMetrics) -> list[Row]:
    responses = [(f'{{status="{status}"}}', float(n)) for status, n in sorted(m.responses.items())]
    return [
        ("voice_responses_total", "counter", "Voice session responses by final status.",
         responses),
        ("voice_first_audio_seconds", "histogram", "From the caller's end of speech to the "
         "reply's first audio sent.", m.first_audio_s.samples()),
        ("voice_barge_in_stop_seconds", "histogram", "From the caller's speech onset to the "
         "interrupted reply's audio stopping.", m.barge_in_stop_s.samples()),
    ]  # fmt: skip
