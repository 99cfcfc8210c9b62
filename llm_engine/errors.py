"""The engine's public exception hierarchy.

Every error raised across the engine's public API is an :class:`EngineError`. Callers that turn
errors into protocol messages (HTTP 4xx, a Realtime ``error`` event) catch the subclasses:

- :class:`InvalidRequest` -- the caller asked for something malformed (empty messages, invalid
  UTF-8, bad sampling parameters, a conversation that is closed or busy).
- :class:`ContextLengthExceeded` -- a subclass of ``InvalidRequest``: the tokens would not fit
  the model's context or the KV pool.
- :class:`ModelLoadError` -- the model path is missing, unreadable or of an unsupported kind.
- :class:`EngineClosed` -- the engine is not running (never started, closed, or crashed).
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises at its public boundary."""


class InvalidRequest(EngineError, ValueError):
    """The request is malformed; the engine and the conversation are unchanged. ``param``
    names the offending parameter where one does (as OpenAI's errors do)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidRequest):
    """The conversation would exceed the context limit (model length or KV pool capacity)."""

    def __init__(self, n_tokens: int, limit: int) -> None:
        super().__init__(
            f"conversation would hold {n_tokens} tokens, over the context limit of {limit}"
        )
        self.n_tokens = n_tokens
        self.limit = limit


class ModelLoadError(EngineError):
    """The model could not be loaded (missing path, unsupported architecture, bad files)."""


class EngineClosed(EngineError):
    """The engine is not running: start it first, or it was closed or failed."""
