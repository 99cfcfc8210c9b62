"""The ``parley`` command line: the one place flags and TOML profiles are parsed.

Errors a user can cause (a missing model, a bad audio file, a bad profile) print one line,
``parley: error: ...``, and exit with status 1; they never print a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from voice import assets
from voice.config import ParleyConfig, load_config
from voice.errors import ParleyError


class _Bar:
    """A tqdm progress bar per label on stderr (only when stderr is a terminal)."""

    def __init__(self) -> None:
        self._bars: dict[str, object] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self._bars.get(label)
        if bar is None:
            bar = self._bars[label] = tqdm(
                total=total, desc=label, unit="B", unit_scale=True, leave=False, disable=None
            )
        bar.update(done - bar.n)  # type: ignore[attr-defined]
        if done >= total:
            bar.close()  # type: ignore[attr-defined]


def _cache(config: ParleyConfig) -> Path:
    return config.cache_dir or assets.default_cache_dir()


def _registry(config: ParleyConfig) -> dict[str, assets.ModelSpec]:
    try:
        return assets.load_registry(config.registry)
    except OSError as err:
        raise ParleyError(f"cannot read the model registry {config.registry}: {err}") from None
    except (KeyError, ValueError) as err:
        raise ParleyError(f"bad model registry {config.registry}: {err}") from None


def _select(args: argparse.Namespace, config: ParleyConfig) -> list[assets.ModelSpec]:
    registry = _registry(config)
    if args.names:
        unknown = [n for n in args.names if n not in registry]
        if unknown:
            raise ParleyError(
                f"unknown model(s) {', '.join(unknown)}; known: {', '.join(registry)}"
            )
        return [registry[n] for n in args.names]
    wanted = {"default": {"default"}, "optional": {"optional"}, "all": {"default", "optional"}}
    return [s for s in registry.values() if s.set in wanted[args.set]]


def cmd_models(args: argparse.Namespace, config: ParleyConfig) -> int:
    cache = _cache(config)
    specs = _select(args, config)
    if args.action == "list":
        for s in specs:
            state = "ready" if not assets.check_cache(s, cache) else "not prepared"
            print(f"{s.name:30} {s.set:8} {s.kind:4} {s.license:34} {state}")
            print(
                f"{'':30} {s.purpose}; from {', '.join(s.requirements[:2])}"
                + (f" (+{len(s.requirements) - 2} more)" if len(s.requirements) > 2 else "")
            )
        return 0
    if args.action == "install":
        return assets.install(specs)
    failed = 0
    for s in specs:
        if args.action == "verify":
            problems = assets.verify(s, cache, progress=_Bar())
            for p in problems:
                print(f"FAIL {p}")
            if not problems:
                print(f"ok   {s.name}")
            failed += bool(problems)
        else:
            t0 = time.perf_counter()
            path = assets.prepare(s, cache, force=args.force, progress=_Bar())
            print(f"ready {s.name} -> {path} ({time.perf_counter() - t0:.1f} s)")
    return 1 if failed else 0


def _model_dir(config: ParleyConfig, name: str) -> Path:
    registry = _registry(config)
    if name not in registry:
        raise ParleyError(f"unknown model {name!r}; known: {', '.join(registry)}")
    return assets.ensure(registry[name], _cache(config), progress=_Bar())


def cmd_transcribe(args: argparse.Namespace, config: ParleyConfig) -> int:
    from audio.wav import read_wav_at
    from voice.asr import SAMPLE_RATE, Transcriber

    audio = read_wav_at(args.file, SAMPLE_RATE)
    transcriber = Transcriber(_model_dir(config, args.model or config.models.asr), config.asr)
    result = transcriber.transcribe(audio)
    print(result.text)
    if args.verbose:
        print(
            f"# {len(audio) / SAMPLE_RATE:.2f} s audio, window {result.window_s:.0f} s, "
            f"encode {result.encode_s * 1e3:.0f} ms, decode {result.decode_s * 1e3:.0f} ms",
            file=sys.stderr,
        )
    return 0


def cmd_say(args: argparse.Namespace, config: ParleyConfig) -> int:
    from audio.wav import write_wav
    from voice.tts import Synthesizer

    text = " ".join(args.text).strip()
    if not text:
        raise ParleyError("say: nothing to say (the text is empty)")
    synth = Synthesizer(_model_dir(config, config.models.tts), config.tts)
    rate = args.rate or synth.sample_rate
    try:
        audio = synth.synthesize(text, rate)
    except ValueError as err:
        raise ParleyError(f"say: {err}") from None
    if len(audio) == 0:
        raise ParleyError("say: the text produced no speech")
    try:
        write_wav(args.output, audio, rate)
    except OSError as err:
        raise ParleyError(f"say: cannot write {args.output}: {err.strerror}") from None
    print(f"wrote {args.output} ({len(audio) / rate:.2f} s at {rate} Hz)", file=sys.stderr)
    return 0


def _llm_dir(config: ParleyConfig, model: str | None) -> tuple[Path, str]:
    """The engine's model: a registry name (prepared on demand) or a local GGUF/HF path."""
    name = model or config.models.llm
    path = Path(name).expanduser()
    if path.exists():
        return path, path.stem if path.is_file() else path.name
    if "/" in name or name.endswith(".gguf"):
        raise ParleyError(f"model path {name} does not exist")
    return _model_dir(config, name), name


def cmd_serve(args: argparse.Namespace, config: ParleyConfig) -> int:
    import asyncio
    import logging

    from voice.server import ModelDirs, serve

    if args.host is not None:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    llm = _llm_dir(config, args.model) if config.llm.backend == "local" else None
    dirs = ModelDirs.for_config(config, lambda name: _model_dir(config, name), llm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop is Linux/macOS only; asyncio's loop works everywhere
        loop_factory = asyncio.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(config, dirs))
    except OSError as err:
        raise ParleyError(
            f"serve: cannot listen on {config.server.host}:{config.server.port}: {err.strerror}"
        ) from None
    return 0


def cmd_chat(args: argparse.Namespace, config: ParleyConfig) -> int:
    import asyncio

    from voice.chat import chat

    model_dir, _ = _llm_dir(config, args.model)
    asyncio.run(chat(model_dir, config.engine, args.system, args.max_tokens))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Parley voice assistant")
    parser.add_argument("--config", type=Path, help="TOML profile (default: configs/default.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list, install, verify and prepare models")
    models.add_argument("action", choices=["list", "install", "verify", "prepare"])
    models.add_argument("names", nargs="*", help="model names (default: the selected set)")
    models.add_argument("--set", choices=["default", "optional", "all"], default="default")
    models.add_argument("--force", action="store_true", help="prepare: rebuild even if intact")
    models.set_defaults(func=cmd_models)

    tr = sub.add_parser("transcribe", help="print the transcript of a WAV file")
    tr.add_argument("file", type=Path)
    tr.add_argument("--model", help="ASR model name from the registry")
    tr.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr")
    tr.set_defaults(func=cmd_transcribe)

    say = sub.add_parser("say", help="speak TEXT into a WAV file")
    say.add_argument("text", nargs="+")
    say.add_argument("-o", "--output", type=Path, required=True)
    say.add_argument("--rate", type=int, help="output sample rate (default: the voice's)")
    say.set_defaults(func=cmd_say)

    srv = sub.add_parser(
        "serve", help="serve the assistant (page, realtime WebSocket, chat API) on one port"
    )
    srv.add_argument("--host", help="address to listen on (default from the profile: 127.0.0.1)")
    srv.add_argument("--port", type=int, help="port (default from the profile: 8000)")
    srv.add_argument("--model", help="LLM: a registry name or a local GGUF file / HF directory")
    srv.set_defaults(func=cmd_serve)

    chat = sub.add_parser("chat", help="text chat with the engine, with per-turn latency")
    chat.add_argument("--model", help="LLM: a registry name or a local GGUF file / HF directory")
    chat.add_argument("--system", default="You are a helpful, concise assistant.")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.set_defaults(func=cmd_chat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, ParleyConfig], int] = args.func
    from audio.wav import AudioFormatError
    from llm_engine.errors import EngineError

    try:
        return func(args, load_config(args.config))
    except (ParleyError, AudioFormatError, EngineError) as err:
        print(f"parley: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
