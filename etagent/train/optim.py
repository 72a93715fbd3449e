"""What SFT (:mod:`etagent.train.sft`) and RL (:mod:`etagent.rl.grpo`) share about updating weights.

AdamW parameter groups, LoRA wrapping/merging (peft), the warm-up + cosine/constant LR
schedule and the bf16 autocast decision. Change one of these here and both trainers follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, Iterable, Literal

import torch

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class LoraSettings:
    """``train.lora`` / ``rl.lora``: peft LoRA adapters, merged into the saved model."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))  # a list or "all-linear"

    @classmethod
    def coerce(cls, value: Any, key: str, **defaults: Any) -> "LoraSettings":
        """``value`` (LoraSettings, mapping or OmegaConf node) as LoraSettings; unknown keys name ``key``."""
        if isinstance(value, LoraSettings):
            out = value
        else:
            from omegaconf import OmegaConf

            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
            value = dict(value or {})
            allowed = [f.name for f in fields(cls)]
            unknown = sorted(set(value) - set(allowed))
            if unknown:
                raise ValueError(f"unknown key(s) {key}.{unknown[0]} (allowed: {allowed})")
            out = cls(**{**defaults, **value})
        if not isinstance(out.target_modules, str):
            out.target_modules = list(out.target_modules)
        return out


def wrap_lora(model, lora: LoraSettings):
    """``model`` with trainable LoRA adapters (everything else frozen)."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(r=int(lora.r), lora_alpha=int(lora.alpha), lora_dropout=float(lora.dropout),
                        target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merge_lora(model):
    """A plain model out of a peft one (adapters merged); other models unchanged."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def build_adamw(params: Iterable[torch.nn.Parameter], lr: float, betas: Iterable[float], weight_decay: float,
                eps: float = 1e-8, decay_1d: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable ``params``.

    ``decay_1d=False`` puts norms and biases (ndim < 2) in a group without weight decay
    (SFT); ``True`` keeps one group decaying everything (RL, as verl; identical when the
    decay is 0, and the group layout is what old checkpoints were saved with).
    """
    params = [p for p in params if p.requires_grad]
    if decay_1d:
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas), eps=eps)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0,
              kind: Literal["cosine", "constant"] = "cosine") -> float:
    """LR multiplier at 0-based ``step``: linear warm-up from lr/warmup to lr, then ``kind``.

    ``cosine`` decays to ``min_ratio * lr`` at ``total``; ``constant`` stays at lr.
    """
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int = 0,
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    if kind not in LR_SCHEDULES:
        raise ValueError(f"LR schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, warmup=max(int(warmup), 0), total=total, min_ratio=min_ratio, kind=kind))


def check_bf16_flag(flag: Any, key: str) -> None:
    if not (isinstance(flag, bool) or str(flag).lower() in ("auto", "true", "false")):
        raise ValueError(f"{key} must be auto|true|false, got {flag!r}")


def resolve_bf16(flag: Any, device: torch.device) -> bool:
    """The ``bf16: auto|true|false`` option on ``device``: whether to autocast to bfloat16."""
    value = str(flag).lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", "none"):
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # Measured: bf16 autocast speeds CPU training only with AMX tiles (avx512_bf16 alone is not faster).
    return device.type == "cpu" and bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())

