"""CPU tensors on transparent huge pages.

Decode reads every weight once a step, and attention reads KV blocks scattered over the pool:
with 4 KB pages, that is a TLB miss every 4 KB streamed. Linux backs a private anonymous
mapping advised ``MADV_HUGEPAGE`` with 2 MB pages wherever transparent huge pages are not
off ("madvise", a common default, or "always"). torch's allocator asks for them only under
``THP_MEM_ALLOC_ENABLE=1`` and only per allocation of 2 MB or more, so the engine places its
weights and KV pool itself: one mapping each. Where the kernel has no such advice (another
OS, THP off) the tensors are plain memory and nothing else changes.

Measured on the 2-core Zen 4 box, SmolLM2-135M's 30 layers of packed bf16 projection weights
(207 MB), the same GEMMs interleaved in one process, 4 KB vs 2 MB pages: 48 rows 25.3-26.2 vs
24.3-24.6 ms, 4 rows 7.4 vs 6.5, one row 7.7 vs 6.4.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import warnings
from pathlib import Path

import torch
from torch import Tensor

_PAGE = 4096  # bytes: the smallest page a mapping has
_ALIGN = 64  # bytes: each tensor of a mapping starts on a cache line, as torch's own do


def _mapping(nbytes: int) -> Tensor | None:
    """``nbytes`` of zeroed memory advised onto huge pages, as a uint8 tensor that keeps the
    mapping alive; None where huge-page advice does not exist here."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if advice is None or nbytes <= 0:
        return None
    region = mmap.mmap(-1, nbytes, flags=flags)
    with contextlib.suppress(OSError):  # a kernel without THP: a plain mapping all the same
        region.madvise(advice)
    with warnings.catch_warnings():  # the mapping is writable; torch warns for read-only ones
        warnings.simplefilter("ignore")
        return torch.frombuffer(region, dtype=torch.uint8)


def zeros(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A zeroed CPU tensor on huge pages (plain ``torch.zeros`` where there are none), its
    memory committed now (see :func:`_commit`). Raises ``MemoryError`` when it is more than
    the machine has available: committing it would swap, or wake the OOM killer."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    available = available_bytes()
    if available is not None and nbytes > available:
        raise MemoryError(f"{nbytes / 2**30:.1f} GiB asked for, {available / 2**30:.1f} available")
    buf = _mapping(nbytes)
    if buf is None:
        buf = torch.zeros(nbytes, dtype=torch.uint8)
    _commit(buf)
    return buf.view(dtype).view(shape)


def available_bytes() -> int | None:
    """Memory this process could get without swapping: the kernel's ``MemAvailable``, or
    less where its memory cgroup (a container's limit) leaves less; None where neither says
    (not Linux)."""
    found = [n for n in (_mem_available(), cgroup_room()) if n is not None]
    return min(found) if found else None


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_room(root: Path = Path("/sys/fs/cgroup"), table: str | None = None) -> int | None:
    """Bytes this process's memory cgroup still allows (its limit less its usage), from
    ``table`` (``/proc/self/cgroup``'s lines) and the hierarchy mounted at ``root``: v2
    (``memory.max``, ``memory.current``) or v1 (``memory/memory.limit_in_bytes``,
    ``memory.usage_in_bytes``). None without a limit, or where neither can be read. Inside
    a container the cgroup's own directory may be the mount's root, which is read too."""
    if table is None:
        try:
            table = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    for line in table.splitlines():
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and not controllers:
            base, names = root, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, names = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        for folder in (base / path.lstrip("/"), base):
            try:
                limit, usage = ((folder / name).read_text().strip() for name in names)
                if limit == "max" or int(limit) >= 1 << 60:  # v1's "unlimited" is ~2^63
                    return None
                return max(0, int(limit) - int(usage))
            except (OSError, ValueError):
                continue
    return None


def _commit(buf: Tensor) -> None:
    """Fault in every page of ``buf`` (zeroed, untouched memory) by writing a zero to each.
    The kernel zeroes a page on its first write: left to the first requests, that ran inside
    their steps (a batch of 50 summaries on a fresh 660 MB KV pool: 7% of its time in
    ``clear_page``, and memory-bound work slower for seconds after). Committing at start
    also surfaces a pool the machine cannot back there, not in the middle of a call."""
    if buf.numel():
        buf[::_PAGE] = 0


def _key(t: Tensor) -> tuple[int, tuple[int, ...], torch.dtype]:
    return t.data_ptr(), tuple(t.shape), t.dtype


def _footprint(t: Tensor) -> int:
    return -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN


class Arena:
    """One huge-page mapping sized for ``tensors`` (CPU, contiguous), which :meth:`place`
    then copies in one at a time, so a caller that drops each original as it goes never
    holds two copies of everything. A tensor placed twice (the same memory: tied
    embeddings) is copied once. Where there are no huge pages, :meth:`place` returns the
    original."""

    def __init__(self, tensors: list[Tensor]) -> None:
        sizes = {_key(t): _footprint(t) for t in tensors}
        self._buf = _mapping(sum(sizes.values()))
        self._used = 0
        self._placed: dict[tuple[int, tuple[int, ...], torch.dtype], Tensor] = {}

    def place(self, t: Tensor) -> Tensor:
        assert t.device.type == "cpu" and t.layout == torch.strided and t.is_contiguous()
        if self._buf is None:
            return t
        key = _key(t)
        if key not in self._placed:
            nbytes = t.numel() * t.element_size()
            assert self._used + _footprint(t) <= self._buf.numel(), "not sized for this tensor"
            copy = self._buf[self._used : self._used + nbytes].view(t.dtype).view(t.shape)
            copy.copy_(t)
            self._used += _footprint(t)
            self._placed[key] = copy
        return self._placed[key]
