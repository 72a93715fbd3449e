"""Policy models: the embedded tiny/small Qwen2 built from a config, or any HF checkpoint.

Scratch models are saved with ``save_pretrained`` right after creation, so later stages
load every policy the same way (``load_policy(path)``), exactly like a hub checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from etagent.models.tokenizer import load_tokenizer

SIZES: dict[str, dict[str, int]] = {
    # ~2.4M params with a 512 vocab: learns single tool calls in minutes on 2 CPU cores.
    "tiny": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=6, intermediate_size=768),
    # ~10M params.
    "small": dict(hidden_size=320, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8, intermediate_size=1280),
}


@dataclass
class ModelSpec:
    """What the `model` config group describes.

    kind=scratch: built here from ``arch`` (tiny/small); kind=pretrained: ``path`` is a
    local directory or hub name loaded with transformers (needs the weights on disk).
    """

    name: str = "tiny"
    kind: Literal["scratch", "pretrained"] = "scratch"
    path: str | None = None
    size: str | None = "tiny"
    arch: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 1024
    max_position_embeddings: int = 1024
    use_system_prompt: bool = False
    dtype: str = "float32"  # weights dtype on load; training uses bf16 autocast where supported

    def __post_init__(self) -> None:
        if self.kind not in ("scratch", "pretrained"):
            raise ValueError(f"model.kind must be 'scratch' or 'pretrained', got {self.kind!r}")
        if self.kind == "pretrained" and not self.path:
            raise ValueError("model.path is required for model.kind=pretrained")
        if self.kind == "scratch" and self.size not in SIZES and not self.arch:
            raise ValueError(f"model.size must be one of {sorted(SIZES)} (or give model.arch), got {self.size!r}")


def build_scratch_model(spec: ModelSpec, vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int = 0) -> Qwen2ForCausalLM:
    shape = dict(SIZES.get(spec.size or "", {}))
    shape.update(spec.arch or {})
    config = Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=eos_token_id,
        **shape,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (model.dtype)") from None


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_policy(path: str | Path, *, dtype: str, device: str, trust_remote_code: bool = False):
    """Load (model, tokenizer) from a local dir or hub name; LoRA adapters are merged by the trainer.
    ``dtype`` and ``device``: the run's (``model.dtype``, ``device``: ``RunEnv.dtype``/``.device``)."""
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code
    )
    tokenizer = load_tokenizer(path)
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
