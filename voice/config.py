"""Parley's configuration: dataclasses with defaults, read from a TOML profile at the entry point.

``configs/default.toml`` is the CPU profile on the embedded models. Unknown keys are errors, so a
typo in a profile is reported rather than silently ignored.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from voice.asr import AsrConfig
from voice.chunker import ChunkerConfig
from voice.errors import ParleyError
from voice.remote_llm import RemoteLlmConfig
from voice.session import VoiceConfig
from voice.streaming_asr import StreamingAsrConfig
from voice.tts import TtsConfig
from voice.turns import TurnConfig

API_KEY_ENV = "PARLEY_API_KEY"  # overrides [server] api_key: a secret need not sit in a profile


@dataclass(slots=True)
class ModelChoice:
    """Which registry entry serves each role (names from ``configs/models.toml``)."""

    asr: str = "whisper-tiny-en"
    tts: str = "piper-joe-medium"
    llm: str = "smollm2-135m-instruct"
    vad: str = "silero-vad"


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    default_max_tokens: int = 512
    max_conversations: int = 64
    # when set, /v1/ and the tokenizer routes need it ("Authorization: Bearer <key>"; a
    # browser's WebSocket may offer it as the subprotocol "openai-insecure-api-key.<key>");
    # the environment's PARLEY_API_KEY, when set, overrides it
    api_key: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("server.port must be within 0..65535")
        if self.default_max_tokens < 1 or self.max_conversations < 1:
            raise ValueError("server.default_max_tokens and max_conversations must be positive")


@dataclass(slots=True)
class LlmConfig:
    """``[llm]``: the built-in engine (``local``, the model in ``[models].llm``) or an
    OpenAI-compatible endpoint (``remote``, set in the ``[llm.remote]`` table)."""

    backend: Literal["local", "remote"] = "local"
    remote: RemoteLlmConfig | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("local", "remote"):
            raise ValueError(f"llm.backend must be 'local' or 'remote', not {self.backend!r}")
        if isinstance(self.remote, dict):
            self.remote = _section(RemoteLlmConfig, "llm.remote", self.remote)
        if self.backend == "remote" and self.remote is None:
            raise ValueError("llm.backend = 'remote' needs an [llm.remote] table (base_url, model)")


@dataclass(slots=True)
class ParleyConfig:
    models: ModelChoice = field(default_factory=ModelChoice)
    asr: AsrConfig = field(default_factory=AsrConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    session: VoiceConfig = field(default_factory=VoiceConfig)
    turns: TurnConfig = field(default_factory=TurnConfig)
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)
    streaming_asr: StreamingAsrConfig = field(default_factory=StreamingAsrConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    # EngineConfig's fields but model_dir (the model comes from [models].llm); checked at load
    engine: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None  # None: $PARLEY_CACHE_DIR or the XDG cache
    registry: Path | None = None  # None: the packaged configs/models.toml


_SECTIONS: dict[str, type] = {
    "models": ModelChoice,
    "asr": AsrConfig,
    "tts": TtsConfig,
    "server": ServerConfig,
    "session": VoiceConfig,
    "turns": TurnConfig,
    "chunker": ChunkerConfig,
    "streaming_asr": StreamingAsrConfig,
    "llm": LlmConfig,
}


def _engine_section(values: Any) -> dict[str, Any]:
    from llm_engine.config import EngineConfig
    from llm_engine.errors import EngineError

    if not isinstance(values, dict):
        raise ParleyError("config: [engine] must be a table")
    if "model_dir" in values:
        raise ParleyError("config: [engine] takes no model_dir: choose the model in [models].llm")
    try:
        EngineConfig(model_dir=Path("."), **values)
    except (TypeError, EngineError) as err:
        raise ParleyError(f"config: [engine]: {err}") from None
    return dict(values)


def _section(cls: type, name: str, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ParleyError(f"config: [{name}] must be a table")
    known = {f.name for f in fields(cls)}
    if unknown := set(values) - known:
        raise ParleyError(f"config: unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
    try:
        return cls(**values)
    except ParleyError:
        raise
    except (TypeError, ValueError) as err:
        raise ParleyError(f"config: [{name}]: {err}") from None


def load_config(path: Path | None = None) -> ParleyConfig:
    """Read a TOML profile (``configs/default.toml`` when ``path`` is None)."""
    try:
        if path is None:
            text = resources.files("configs").joinpath("default.toml").read_text()
        else:
            text = path.read_text()
        data = tomllib.loads(text)
    except OSError as err:
        raise ParleyError(f"config: cannot read {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ParleyError(f"config: {path or 'default.toml'} is not valid TOML: {err}") from None
    if unknown := set(data) - {*_SECTIONS, "engine", "cache_dir", "registry"}:
        raise ParleyError(f"config: unknown section(s): {', '.join(sorted(unknown))}")
    sections = {name: _section(cls, name, data.get(name, {})) for name, cls in _SECTIONS.items()}
    cache = Path(data["cache_dir"]).expanduser() if "cache_dir" in data else None
    registry = Path(data["registry"]).expanduser() if "registry" in data else None
    engine = _engine_section(data.get("engine", {}))
    if key := os.environ.get(API_KEY_ENV):
        sections["server"].api_key = key
    return ParleyConfig(cache_dir=cache, registry=registry, engine=engine, **sections)
