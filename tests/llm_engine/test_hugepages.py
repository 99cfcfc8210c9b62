"""Weights and the KV pool on transparent huge pages."""

from __future__ import annotations

import mmap
import weakref
from pathlib import Path

import pytest
import torch

from llm_engine import hugepages
from tests.llm_engine.test_quant import _greedy_decode, _runner


def _thp_mode() -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), or None."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text.split("[")[1].split("]")[0] if "[" in text else None


def _mapping_of(t: torch.Tensor) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds ``t``'s first byte."""
    addr, fields, inside = t.data_ptr(), {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside:
            fields[head.rstrip(":")] = line.split(":", 1)[1].strip()
    return fields


def test_arena_copies_into_one_mapping() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(300, 7), torch.randint(-127, 128, (5, 33), dtype=torch.int8)
    c = torch.randn(11).to(torch.bfloat16)
    arena = hugepages.Arena([a, b, a, c])
    out = [arena.place(t) for t in (a, b, a, c)]
    for got, want in zip(out, [a, b, a, c], strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and got.is_contiguous()
        assert torch.equal(got, want)
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return  # no huge pages on this OS: the originals come back
    assert out[0].data_ptr() == out[2].data_ptr()  # a tensor listed twice is copied once
    assert out[0].data_ptr() != a.data_ptr()
    ptrs = [t.data_ptr() for t in out]
    assert all(p % 64 == 0 for p in ptrs)  # cache-line aligned, as torch's own
    assert max(ptrs) - min(ptrs) < 2 * 300 * 7 * 4  # one mapping, packed in order
    out[0][0, 0] += 1  # a copy, not a view of the original
    assert out[0][0, 0] != a[0, 0]


def test_zeros_is_a_zeroed_writable_tensor() -> None:
    t = hugepages.zeros((3, 4, 5), torch.bfloat16)
    assert t.shape == (3, 4, 5) and t.dtype == torch.bfloat16
    assert torch.equal(t, torch.zeros(3, 4, 5, dtype=torch.bfloat16))
    t[1, 2, 3] = 7
    assert t.sum().item() == 7


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="no /proc/self/smaps here")
def test_zeros_commits_its_memory_at_once() -> None:
    """The KV pool's pages are faulted in when it is made, not by the first requests' steps."""
    nbytes = 24 << 20
    t = hugepages.zeros((nbytes // 2,), torch.bfloat16)
    rss_kb = int(_mapping_of(t)["Rss"].split()[0])
    assert rss_kb * 1024 >= nbytes
    assert not t.any()


@pytest.mark.skipif(_thp_mode() in (None, "never"), reason="no transparent huge pages here")
def test_engine_weights_and_pool_may_use_huge_pages(smol_dir: Path) -> None:
    runner = _runner(smol_dir, quant=True, kv_dtype=torch.bfloat16)
    runner.model.to_huge_pages()
    for t in (runner.model.w.layers[0].qkv.q, runner.model.w.embed, runner.kv.kv):
        assert _mapping_of(t).get("THPeligible") == "1"


@pytest.mark.parametrize("batch", [1, 3])
def test_moving_the_weights_keeps_every_logit(smol_dir: Path, batch: int) -> None:
    """The one-call decode holds the weights' addresses: moving them must rebind it (decode
    of one and of three sequences), and prefill reads the moved copies too."""
    prompts = [[1, 9690, 1351, 314, 253], [1, 504, 3458, 282, 4114, 314], [1, 22, 28, 30]]
    want_ids, want = _greedy_decode(_runner(smol_dir, quant=True), prompts[:batch], 4)
    runner = _runner(smol_dir, quant=True)
    original = weakref.ref(runner.model.w.layers[0].gate_up.q)
    runner.model.to_huge_pages()
    if hasattr(mmap, "MADV_HUGEPAGE"):  # moved, and the original freed: never two copies
        assert original() is None
    assert runner.model._decode_one is not None
    got_ids, got = _greedy_decode(runner, prompts[:batch], 4)
    assert got_ids == want_ids
    assert torch.equal(got, want)


def test_cgroup_room_reads_a_containers_memory_limit(tmp_path: Path) -> None:
    """A container's memory limit bounds what a pool may commit: cgroup v2 and v1 layouts,
    the cgroup's own directory or the mount's root (a container's namespace), no limit."""
    v2 = tmp_path / "v2"
    (v2 / "svc").mkdir(parents=True)
    (v2 / "svc" / "memory.max").write_text(f"{1 << 30}\n")
    (v2 / "svc" / "memory.current").write_text(f"{256 << 20}\n")
    assert hugepages.cgroup_room(v2, "0::/svc\n") == 768 << 20
    (v2 / "memory.max").write_text(f"{2 << 30}\n")  # a namespace: the cgroup is the root
    (v2 / "memory.current").write_text(f"{1 << 30}\n")
    assert hugepages.cgroup_room(v2, "0::/elsewhere\n") == 1 << 30
    (v2 / "svc" / "memory.max").write_text("max\n")
    assert hugepages.cgroup_room(v2, "0::/svc\n") is None
    v1 = tmp_path / "v1" / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{512 << 20}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{600 << 20}\n")  # over: nothing left
    table = "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n"
    assert hugepages.cgroup_room(tmp_path / "v1", table) == 0
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's unlimited
    assert hugepages.cgroup_room(tmp_path / "v1", table) is None
    assert hugepages.cgroup_room(tmp_path / "none", table) is None


@pytest.mark.skipif(hugepages.available_bytes() is None, reason="not Linux")
def test_available_memory_is_at_most_the_kernels() -> None:
    meminfo = Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]
    assert 0 < hugepages.available_bytes() <= int(meminfo) * 1024 * 1.01  # it moves a little
