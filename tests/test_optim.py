"""The one optimizer / LoRA / LR-schedule / bf16 module both trainers (SFT and RL) use."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from etagent.train.optim import (LoraSettings, build_adamw, build_scheduler, lr_factor, merge_lora, resolve_bf16,
                                 wrap_lora)


def _model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=32, max_position_embeddings=64))


def test_lr_factor_warmup_then_cosine_or_constant():
    assert [lr_factor(s, 4, 10) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 10) == 1.0 and lr_factor(7, 4, 10) == pytest.approx(0.5)  # cosine half-way
    assert lr_factor(10, 4, 10, min_ratio=0.1) == pytest.approx(0.1)
    assert [lr_factor(s, 2, 10, kind="constant") for s in (0, 1, 2, 50)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0, 10, kind="constant") == 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, "constant", warmup=2)
    assert opt.param_groups[0]["lr"] == 1.0  # warm-up step 0 of 2
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 2.0
    with pytest.raises(ValueError, match="LR schedule"):
        build_scheduler(opt, "linear", 0)


def test_adamw_groups_keep_norms_and_biases_undecayed():
    model = _model()
    params = list(model.parameters())
    split = build_adamw(params, 1e-3, [0.9, 0.99], weight_decay=0.1, eps=1e-6)
    assert [g["weight_decay"] for g in split.param_groups] == [0.1, 0.0]
    assert all(p.ndim >= 2 for p in split.param_groups[0]["params"])
    assert all(p.ndim < 2 for p in split.param_groups[1]["params"])
    assert split.param_groups[0]["betas"] == (0.9, 0.99) and split.param_groups[0]["eps"] == 1e-6
    one = build_adamw(params, 1e-3, [0.9, 0.999], weight_decay=0.0, decay_1d=True)
    assert len(one.param_groups) == 1 and len(one.param_groups[0]["params"]) == len(params)


def test_lora_settings_wrap_and_merge():
    with pytest.raises(ValueError, match="rl.lora.rank"):
        LoraSettings.coerce({"rank": 4}, "rl.lora")
    assert LoraSettings.coerce({}, "rl.lora", target_modules="all-linear").target_modules == "all-linear"
    for targets in (["q_proj", "v_proj"], "all-linear"):
        lora = LoraSettings(enabled=True, r=2, alpha=4, dropout=0.0, target_modules=targets)
        wrapped = wrap_lora(_model(), lora)
        trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
        assert type(merge_lora(wrapped)).__name__ == "Qwen2ForCausalLM"
    plain = _model()
    assert merge_lora(plain) is plain


def test_bf16_decision():
    cpu = torch.device("cpu")
    assert resolve_bf16(True, cpu) and resolve_bf16("true", cpu)
    assert not resolve_bf16(False, cpu) and not resolve_bf16("false", cpu)
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    assert resolve_bf16("auto", cpu) == amx  # auto on CPU: only with AMX tiles
