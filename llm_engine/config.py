"""Configuration dataclasses: the model's shape, the engine's settings, sampling parameters.

All are plain ``@dataclass(slots=True)`` values validated in ``__post_init__``; nothing here
imports torch, so the scheduler and its tests can use them freely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_engine.errors import InvalidRequest, ModelLoadError
from llm_engine.grammar import JsonSchema

SUPPORTED_ARCHS = ("llama", "qwen2")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTS = ("auto", "none", "int8")
MAX_TOP_LOGPROBS = 20  # alternatives a token's logprobs may list (OpenAI's limit)
DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")  # the devices the engine runs on, as torch names them


@dataclass(slots=True)
class ModelConfig:
    """Shape of a Llama-family decoder (Llama, SmolLM2, Qwen2), read from HF ``config.json``."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.arch not in SUPPORTED_ARCHS:
            raise ModelLoadError(f"unsupported architecture {self.arch!r}; supported: llama, qwen2")
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError("num_attention_heads must be a multiple of num_key_value_heads")
        if min(self.vocab_size, self.hidden_size, self.num_layers, self.head_dim) <= 0:
            raise ModelLoadError("model dimensions must be positive")

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build from a parsed HF ``config.json`` (LlamaConfig or Qwen2Config)."""
        model_type = cfg.get("model_type", "")
        arch = {"llama": "llama", "qwen2": "qwen2", "mistral": "llama"}.get(model_type)
        if arch is None:
            raise ModelLoadError(f"unsupported model_type {model_type!r} in config.json")
        try:
            n_heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            rope = cfg.get("rope_parameters") or {}
            scaling = cfg.get("rope_scaling") or None
            if scaling is None and rope.get("rope_type", "default") != "default":
                scaling = dict(rope)
            eos = cfg.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            return cls(
                arch=arch,
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=n_heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
                head_dim=int(cfg.get("head_dim") or hidden // n_heads),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))),
                rope_scaling=scaling,
                attention_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_ids=eos_ids,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(f"config.json is incomplete or malformed: {err}") from err


@dataclass(slots=True)
class EngineConfig:
    """Settings of one :class:`~llm_engine.engine.Engine`.

    ``model_dir`` is an HF-style directory (config.json, *.safetensors, tokenizer.json) or a
    ``.gguf`` file (converted in memory). ``num_blocks * block_size`` tokens of KV fit in the pool;
    ``max_batch`` sequences decode together; ``max_step_tokens`` bounds the tokens computed per
    step (prefill chunks are cut to fit it). ``device`` is ``"cpu"``, ``"cuda"`` or ``"cuda:N"``;
    one torch cannot use fails the engine's load with a ``ModelLoadError`` saying why.

    ``dtype="auto"``: float32 activations on CPU, bfloat16 on CUDA. ``quant="auto"``:
    int8 weight-only for decode on CPU, none elsewhere. It keeps a float copy of each weight for
    prefill (bfloat16 where the CPU multiplies it natively, else float32) and an fp16 copy for
    the big weights and small batches (see :mod:`llm_engine.quant`); decode steps run in
    :mod:`llm_engine.cpu_kernel` where gcc builds it (up to eight sequences, or any number
    where the CPU has AVX512-BF16), and so do
    prefill's projections (its own bf16 GEMM), attention and norms, in bfloat16 too, where the
    CPU has AVX512-BF16. ``"none"`` gives
    HF-comparable float32 math throughout.
    ``kv_dtype="auto"``: bfloat16 where quantization is int8 on CPU, else the model's dtype.
    A bf16 pool holds twice the tokens in the same memory and halves what attention reads
    (decode at batch 50 was bound by reading a float32 pool); prefill's bf16 attention
    multiplies it as stored, decode widens it to float32. ``"float32"`` keeps exact float32
    K/V (``quant="none"`` does by default). The CPU kernels read float32 or bfloat16 pools; a
    float16 pool attends through torch's SDPA.
    ``compile`` wraps the forward in ``torch.compile`` and falls back to eager if that fails
    (off by default: on the 2-core CPU it compiled for minutes and ran slower).
    """

    model_dir: Path
    dtype: str = "auto"
    device: str = "cpu"
    num_blocks: int = 512
    block_size: int = 16
    max_batch: int = 64
    max_step_tokens: int = 256
    max_model_len: int | None = None
    num_threads: int | None = None
    quant: str = "auto"
    kv_dtype: str = "auto"
    compile: bool = False
    extra_stop_tokens: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)
        if not DEVICE.fullmatch(self.device):
            raise InvalidRequest(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.quant not in QUANTS:
            raise InvalidRequest(f"quant must be one of {QUANTS}, got {self.quant!r}")
        if self.dtype not in DTYPES:
            raise InvalidRequest(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.kv_dtype not in DTYPES:
            raise InvalidRequest(f"kv_dtype must be one of {DTYPES}, got {self.kv_dtype!r}")
        if self.num_blocks < 2 or self.block_size < 1:
            raise InvalidRequest("num_blocks must be >= 2 and block_size >= 1")
        if self.max_batch < 1 or self.max_step_tokens < 1:
            raise InvalidRequest("max_batch and max_step_tokens must be positive")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise InvalidRequest("max_model_len must be >= 2")

    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float32" if self.device.startswith("cpu") else "bfloat16"

    def resolved_quant(self) -> str:
        if self.quant != "auto":
            return self.quant
        return "int8" if self.device.startswith("cpu") else "none"

    def resolved_kv_dtype(self) -> str:
        if self.kv_dtype != "auto":
            return self.kv_dtype
        int8_cpu = self.device.startswith("cpu") and self.resolved_quant() == "int8"
        return "bfloat16" if int8_cpu else self.resolved_dtype()


@dataclass(slots=True)
class SamplingParams:
    """Per-request sampling. ``temperature == 0`` is greedy; ``seed`` makes sampling repeatable.

    Generation stops at ``max_tokens``, at an end-of-turn token (unless ``ignore_eos``; never
    before ``min_tokens``), or when
    the text contains one of ``stop`` (the stop string itself is not emitted).

    ``logit_bias`` adds to the logits of the given token ids before sampling (OpenAI's: -100
    bans a token, 100 all but forces it). ``logprobs`` asks each delta for its tokens'
    log-probabilities and this many most likely alternatives (0 to 20), from the model's own
    distribution: before penalties, bias and temperature.

    ``json_schema`` restricts the reply to JSON of that grammar (:mod:`llm_engine.grammar`;
    ``JsonSchema.any_object()`` for any object): it ends with the end-of-turn token right after
    the value is complete, so ``ignore_eos`` cannot be set with it.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0  # OpenAI's: minus this per earlier use in the reply
    presence_penalty: float = 0.0  # OpenAI's: minus this once a token is in the reply
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None
    json_schema: JsonSchema | None = None
    min_tokens: int = 0

    def __post_init__(self) -> None:
        self.stop = tuple(self.stop)
        if self.max_tokens < 1:
            raise InvalidRequest("max_tokens must be >= 1")
        if self.temperature < 0:
            raise InvalidRequest("temperature must be >= 0")
        if self.top_k < 0:
            raise InvalidRequest("top_k must be >= 0 (0 disables it)")
        if not 0 < self.top_p <= 1:
            raise InvalidRequest("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise InvalidRequest("repetition_penalty must be > 0")
        if not (-2 <= self.frequency_penalty <= 2 and -2 <= self.presence_penalty <= 2):
            raise InvalidRequest("frequency_penalty and presence_penalty must be in [-2, 2]")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise InvalidRequest("seed must fit in 64 bits")
        if any(not s for s in self.stop):
            raise InvalidRequest("stop strings must be non-empty")
        if any(
            isinstance(t, bool) or not isinstance(t, int) or t < 0 or not -100 <= b <= 100
            for t, b in self.logit_bias.items()
        ):
            raise InvalidRequest("logit_bias maps token ids (>= 0) to biases in [-100, 100]")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]")
        if self.json_schema is not None and (self.ignore_eos or self.min_tokens):
            raise InvalidRequest(
                "a JSON reply ends when its value is complete: no ignore_eos or min_tokens"
            )
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidRequest("min_tokens must be in [0, max_tokens]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def plain_greedy(self) -> bool:
        """Whether the pick is the argmax of the model's logits as they are."""
        return (
            self.greedy and not self.penalized and not self.logit_bias and self.json_schema is None
        )

    @property
    def penalized(self) -> bool:
        """Whether the tokens before this one change its logits."""
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )
