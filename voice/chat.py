"""``parley chat``: a text console on the engine that prints each turn's latency.

The conversation stays resident across turns, so the time to first token should stay flat as
the history grows; the figures after each reply show it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any


async def chat(
    model_dir: Path, engine_options: dict[str, Any], system: str, max_tokens: int
) -> None:
    from llm_engine import Engine, EngineConfig, SamplingParams

    async with Engine(EngineConfig(model_dir=model_dir, **engine_options)) as engine:
        conv = engine.open_conversation(system)
        print("Parley chat: type a message, an empty line or Ctrl-D to quit.", file=sys.stderr)
        while True:
            try:
                line = await asyncio.to_thread(input, "you> ")
            except EOFError:
                break
            if not line.strip():
                break
            t0 = time.perf_counter()
            await conv.append({"role": "user", "content": line})
            first, n = None, 0
            print("parley> ", end="", flush=True)
            async for delta in conv.generate(SamplingParams(max_tokens=max_tokens)):
                first = first or time.perf_counter()
                n += len(delta.token_ids)
                print(delta.text, end="", flush=True)
            end = time.perf_counter()
            ttft = (first or end) - t0
            rate = (n - 1) / (end - first) if first and n > 1 and end > first else 0.0
            print(
                f"\n  [first token {ttft * 1e3:.0f} ms, {rate:.1f} tok/s, {n} tokens, "
                f"history {len(conv.tokens)} tokens]",
                file=sys.stderr,
            )
