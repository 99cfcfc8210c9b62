"""``bench/llm.py`` runs end to end at its quick sizes, Parley alone: a benchmark that stops
running measures nothing (a sampler signature change once broke its swap of samplers, unseen
until the next run). Its figures are timings, so only what is not a timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = [
    "## 1. Short reply: time to first token",
    "## 2. Long reply: decode",
    "## 3. Batch of summaries: total",
    "## 4. Conversation: time to first token per round",
    "## 5. Scoring",
    "## Memory-bandwidth ceiling",
    "## Sampled replies",
    "## JSON mode",
    "## Abort",
]


def test_llm_bench_runs_and_every_block_comes_back(smol_dir: Path) -> None:
    # smol_dir: the model prepared, as the bench expects it
    run = subprocess.run(
        [sys.executable, "bench/llm.py", "--quick", "--no-hf", "--no-llama-cpp"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for section in SECTIONS:
        assert section in run.stdout, f"{section!r} missing:\n{run.stdout}"
    free, total = re.search(r"free blocks (\d+)/(\d+) after closing", run.stdout).groups()
    assert free == total and int(total) > 0
