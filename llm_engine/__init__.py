"""Parley's LLM engine: conversations whose KV cache stays resident across turns.

Public API::

    from llm_engine import Engine, EngineConfig, SamplingParams

    async with Engine(EngineConfig(model_dir=path)) as engine:
        conv = engine.open_conversation("You are terse.")
        await conv.append({"role": "user", "content": "Hi!"})
        async for delta in conv.generate(SamplingParams(max_tokens=64)):
            print(delta.text, end="")

Importing this package loads nothing heavy; torch is imported with the engine module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_engine.config import EngineConfig, ModelConfig, SamplingParams
from llm_engine.errors import (
    ContextLengthExceeded,
    EngineClosed,
    EngineError,
    InvalidRequest,
    ModelLoadError,
)

if TYPE_CHECKING:
    from llm_engine.conversation import Conversation, Delta, TokenLogprob
    from llm_engine.engine import Engine

__all__ = [
    "ContextLengthExceeded",
    "Conversation",
    "Delta",
    "Engine",
    "EngineClosed",
    "EngineConfig",
    "EngineError",
    "InvalidRequest",
    "ModelConfig",
    "ModelLoadError",
    "SamplingParams",
    "TokenLogprob",
]


def __getattr__(name: str) -> Any:  # lazy: keep `import llm_engine` free of torch
    if name == "Engine":
        from llm_engine.engine import Engine

        return Engine
    if name in ("Conversation", "Delta", "TokenLogprob"):
        from llm_engine import conversation

        return getattr(conversation, name)
    raise AttributeError(name)
