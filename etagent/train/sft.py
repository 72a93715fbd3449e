"""Supervised fine-tuning on masked sequences: the seed agent and action-space-exploration (ASE).

``train_sft`` trains next-token prediction on the tokens whose mask is 1 (the label at
position t is ids[t] and counts iff mask[t] == 1; prompt and tool results are 0), with
length-bucketed micro-batches, AdamW (no decay on norms/biases), linear warm-up then
cosine decay, gradient accumulation, grad clipping, bf16 autocast where supported,
full fine-tuning or LoRA (peft; merged at the end so the output is a plain model),
a step or epoch budget plus a wall-clock budget, atomic checkpoints every N steps and
exact resume (same step count, same data order, same RNG), tqdm progress and per-step
metrics to a :class:`etagent.tracking.Tracker`. The result is saved with
``save_pretrained`` (+ tokenizer) in ``<out_dir>/final``.

Departures from the paper's LLaMA-Factory recipe: tool-result tokens are masked (the
official SFT trains on them); the loss is the mean over all trained tokens of an
optimizer step (accumulated micro-batches weighted by their token counts, not a mean
of per-batch means); bucketing instead of packing (see batching.py).
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from etagent.train.batching import Batch, collate, epoch_plan
from etagent.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_final
from etagent.train.optim import (LoraSettings, build_adamw, build_scheduler, check_bf16_flag, merge_lora,
                                 resolve_bf16, wrap_lora)
from etagent.train.sequences import TrainSequence, truncate
from etagent.utils.io import read_json
from etagent.utils.logs import bar_step

log = logging.getLogger(__name__)

@dataclass
class SFTConfig:
    """SFT hyper-parameters (``conf/train/default.yaml``). Defaults: the tiny model on CPU."""

    lr: float = 1.5e-3
    batch_size: int = 32  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: float = 1.0  # used when max_steps <= 0; fractions allowed
    max_steps: int = 0  # > 0: this many optimizer steps (data cycles over epochs)
    warmup_ratio: float = 0.0  # fraction of the steps, used when warmup_steps is None
    warmup_steps: int | None = 30
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # <= 0: no clipping (the norm is still logged)
    max_len: int = 1024  # tokens per sequence; longer ones keep their start
    bucket_batches: int = 32  # length-sort windows of this many batches (<= 1: no bucketing)
    bf16: Any = "auto"  # auto | true | false: bf16 autocast (auto: CUDA bf16 or a CPU with AMX)
    gradient_checkpointing: bool = False
    lora: Any = field(default_factory=LoraSettings)
    checkpoint_every: int = 200  # optimizer steps; 0 = only when the time budget stops the run
    keep_checkpoints: int = 2
    max_minutes: float | None = None  # wall-clock budget (summed over resumes); stop cleanly and save
    seed: int = 0
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        self.lora = LoraSettings.coerce(self.lora, "train.lora")
        self.adam_betas = [float(b) for b in self.adam_betas]
        check_bf16_flag(self.bf16, "train.bf16")
        for key in ("batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("train.epochs must be > 0 when train.max_steps <= 0")

    @classmethod
    def coerce(cls, cfg: "SFTConfig | dict | Any") -> "SFTConfig":
        if isinstance(cfg, SFTConfig):
            return cfg
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = {k: v for k, v in dict(cfg).items() if k != "_target_"}
        unknown = set(cfg) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown key train.{sorted(unknown)[0]} for SFTConfig")
        return cls(**cfg)


# --------------------------------------------------------------------------- pieces


def masked_nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over trained labels: logits[t-1] predicts ids[t], counted iff mask[t].

    Only the selected rows are gathered (and upcast to fp32), so every other position
    gets an exactly-zero gradient and a 150k vocabulary does not cost a full fp32 copy.
    """
    sel = loss_mask[:, 1:].bool()
    return F.cross_entropy(logits[:, :-1][sel].float(), input_ids[:, 1:][sel], reduction="sum")


def _decoder_and_head(model):
    """(decoder, output head) of a causal LM, through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return (decoder, head) if decoder is not None and head is not None else (None, None)


def batch_nll_sum(model, batch: Batch, bf16: bool) -> torch.Tensor:
    """Summed NLL of the trained labels; the output head runs on trained positions only.

    Prompt and tool-result positions need hidden states (later tokens attend to them) but no
    logits: projecting only the label positions skips most of the vocabulary matmul and its
    backward (measured in experiments/bench/bench_sft.py). Falls back to full logits for a
    model without the decoder/head split.
    """
    device = batch.input_ids.device
    decoder, head = _decoder_and_head(model)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        # No attention mask: batches are right-padded and attention is causal (batching.collate).
        if decoder is None:
            logits = model(input_ids=batch.input_ids, use_cache=False).logits
            return masked_nll_sum(logits, batch.input_ids, batch.loss_mask)
        hidden = decoder(input_ids=batch.input_ids, use_cache=False).last_hidden_state
        sel = batch.loss_mask[:, 1:].bool()
        logits = head(hidden[:, :-1][sel])
    return F.cross_entropy(logits.float(), batch.input_ids[:, 1:][sel], reduction="sum")


def prepare_sequences(sequences: Iterable[TrainSequence], max_len: int, vocab_size: int) -> tuple[list[TrainSequence], int]:
    """Truncate; drop sequences with no trained label left; check ids fit the vocabulary."""
    kept: list[TrainSequence] = []
    dropped = 0
    for i, seq in enumerate(sequences):
        if not isinstance(seq, TrainSequence):
            raise TypeError(f"sequence {i}: expected TrainSequence, got {type(seq).__name__}")
        seq = truncate(seq, max_len)
        if seq.n_loss_tokens == 0:
            dropped += 1
            continue
        top = max(seq.ids)
        if top >= vocab_size or min(seq.ids) < 0:
            raise ValueError(f"sequence {i} ({seq.meta.get('id', '?')}): token id {top} outside the model vocabulary ({vocab_size})")
        kept.append(seq)
    return kept, dropped


def _fingerprint(seqs: list[TrainSequence]) -> str:
    h = hashlib.sha1()
    for s in seqs:
        h.update(repr((s.ids, s.mask)).encode())
    return h.hexdigest()


def _weights_fingerprint(model) -> str:
    """Cheap identity of the frozen base under LoRA (a checkpoint holds only adapters)."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            h.update(name.encode())
            h.update(flat[:: max(1, flat.numel() // 256)].float().cpu().numpy().tobytes())
    return h.hexdigest()


class _Stream:
    """Endless micro-batch stream over epochs; its position is (epoch, index, plan)."""

    def __init__(self, lengths: list[int], cfg: SFTConfig):
        self.lengths, self.cfg = lengths, cfg
        self.epoch, self.index = 0, 0
        self.plan = self._plan(0)

    def _plan(self, epoch: int) -> list[list[int]]:
        return epoch_plan(self.lengths, self.cfg.batch_size, self.cfg.seed, epoch, self.cfg.bucket_batches)

    @property
    def per_epoch(self) -> int:
        return len(self.plan)

    @property
    def consumed(self) -> int:
        return self.epoch * self.per_epoch + self.index

    def next(self) -> list[int]:
        if self.index >= len(self.plan):
            self.epoch, self.index = self.epoch + 1, 0
            self.plan = self._plan(self.epoch)
        self.index += 1
        return self.plan[self.index - 1]

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "plan": self.plan}

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        if self._plan(self.epoch) != state["plan"]:
            raise ValueError("checkpoint data order differs from the one this data and seed give (data or train.seed changed)")
        self.plan = state["plan"]


def _check_same_run(saved: dict[str, Any], now: dict[str, Any], where: Path) -> None:
    for k, v in now.items():
        if saved.get(k) != v:
            raise ValueError(f"cannot resume from {where}: `{k}` was {saved.get(k)!r}, now {v!r} "
                             f"(data or train config changed; train with resume=False to start over)")


def _load_final(final_dir: Path, model):
    from transformers import AutoModelForCausalLM

    param = next(model.parameters())
    loaded = AutoModelForCausalLM.from_pretrained(str(final_dir), dtype=param.dtype)
    return loaded.to(param.device).eval()


# --------------------------------------------------------------------------- trainer


def train_sft(
    model,
    tokenizer,
    sequences: list[TrainSequence],
    cfg: SFTConfig | dict,
    out_dir: str | Path,
    tracker=None,
    stage: str = "sft",
    resume: bool = True,
):
    """Fine-tune ``model`` on ``sequences``; return the trained (merged) model in eval mode.

    ``out_dir/checkpoints/step-N`` hold resumable checkpoints, ``out_dir/final`` the
    ``save_pretrained`` result. With ``resume`` a finished run (``final`` present) is
    loaded instead of retrained and an interrupted one continues from its last
    checkpoint; without it old checkpoints are deleted and training starts over.
    """
    cfg = SFTConfig.coerce(cfg)
    out_dir = Path(out_dir)
    final_dir, ckpt_root = out_dir / "final", out_dir / "checkpoints"

    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    max_len = cfg.max_len
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and max_len > max_pos:
        log.warning("train.max_len=%d exceeds the model's max_position_embeddings=%d; using %d", max_len, max_pos, max_pos)
        max_len = max_pos
    seqs, dropped = prepare_sequences(sequences, max_len, vocab)
    if not seqs:
        raise ValueError(f"{stage}: no training sequence has a trained token (got {len(sequences)}, all dropped)")
    if dropped:
        log.warning("%s: dropped %d sequences with no trained token after truncation to %d", stage, dropped, max_len)
    pad_id = 0
    if tokenizer is not None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    bf16 = resolve_bf16(cfg.bf16, device)

    stream = _Stream([len(s) for s in seqs], cfg)
    limit_micro = math.inf if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * stream.per_epoch))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(limit_micro / cfg.grad_accum)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total_steps)
    warmup = max(0, min(int(warmup), total_steps))
    # What must not change between a run and its resumption (checked against checkpoints and final).
    run_key = {"data": _fingerprint(seqs), "n_sequences": len(seqs), "total_steps": total_steps,
               "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "seed": cfg.seed,
               "lora": cfg.lora.enabled, "base_weights": _weights_fingerprint(model) if cfg.lora.enabled else None,
               "max_len": max_len, "bucket_batches": cfg.bucket_batches}

    if not resume:
        shutil.rmtree(ckpt_root, ignore_errors=True)
    elif (final_dir / "sft_summary.json").exists():
        done = read_json(final_dir / "sft_summary.json")
        _check_same_run(done.get("run", {}), run_key, final_dir)
        more_time = done.get("stopped") == "time_budget" and done.get("elapsed_s", 0) < (cfg.max_minutes or math.inf) * 60
        if not more_time:  # finished (or still out of time): reuse it
            log.info("%s: %s already trained, loading it", stage, final_dir)
            return _load_final(final_dir, model)

    torch.manual_seed(cfg.seed)  # LoRA init and dropout are reproducible
    if cfg.lora.enabled:
        model = wrap_lora(model, cfg.lora)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_adamw(params, cfg.lr, cfg.adam_betas, cfg.weight_decay, eps=cfg.adam_eps)
    scheduler = build_scheduler(optimizer, "cosine", warmup, total_steps, cfg.min_lr_ratio)

    step, elapsed_before = 0, 0.0
    last = latest_checkpoint(ckpt_root) if resume else None
    if last is not None:
        state = load_checkpoint(last, model, optimizer, scheduler, adapter_only=cfg.lora.enabled)
        _check_same_run(state["run"], run_key, last)
        stream.restore(state["stream"])
        step, elapsed_before = int(state["step"]), float(state["elapsed_s"])
        log.info("%s: resumed from %s at step %d/%d", stage, last, step, total_steps)

    n_params = sum(p.numel() for p in params)
    log.info("%s: %d sequences, %d steps (warm-up %d), %d trainable params, bf16=%s, lora=%s",
             stage, len(seqs), total_steps, warmup, n_params, bf16, cfg.lora.enabled)
    t_start = time.monotonic()
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    stopped = "completed"
    bar = tqdm(total=total_steps, initial=step, desc=stage, disable=not cfg.progress, dynamic_ncols=True)

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - t_start

    def save(at_step: int) -> None:
        save_checkpoint(ckpt_root, at_step, model, optimizer, scheduler,
                        {"run": run_key, "stream": stream.state(), "elapsed_s": elapsed()},
                        adapter_only=cfg.lora.enabled, keep_last=cfg.keep_checkpoints)

    try:
        while step < total_steps:
            if elapsed() >= budget_s:
                stopped = "time_budget"
                break
            t0 = time.monotonic()
            n_micro = int(min(cfg.grad_accum, limit_micro - stream.consumed))
            batches = [collate([seqs[i] for i in idx], idx, pad_id) for idx in (stream.next() for _ in range(n_micro))]
            n_loss = sum(b.n_loss_tokens for b in batches)
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for b in batches:
                nll = batch_nll_sum(model, b.to(device), bf16)
                (nll / n_loss).backward()  # token mean over the whole optimizer step
                loss_sum += float(nll.detach())
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            step += 1
            dt = time.monotonic() - t0
            loss = loss_sum / n_loss
            bar_step(bar, loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if tracker is not None and (step % max(1, cfg.log_every) == 0 or step == total_steps):
                tracker.log({"loss": loss, "lr": lr, "grad_norm": float(grad_norm), "loss_tokens": n_loss,
                             "tokens": sum(b.n_tokens for b in batches), "seqs": sum(len(b.lengths) for b in batches),
                             "tok_per_s": sum(b.n_tokens for b in batches) / max(dt, 1e-9),
                             "epoch": stream.consumed / stream.per_epoch, "elapsed_s": elapsed()},
                            step=step, stage=stage)
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and step < total_steps:
                save(step)
        if stopped == "time_budget":
            save(step)  # the budget may be raised and the run resumed from here
            log.warning("%s: time budget of %.1f min reached at step %d/%d", stage, cfg.max_minutes, step, total_steps)
    finally:
        bar.close()

    if cfg.lora.enabled:
        model = merge_lora(model)  # plain model out: later stages load it like any checkpoint
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    summary = {"stage": stage, "steps": step, "total_steps": total_steps, "stopped": stopped,
               "elapsed_s": round(elapsed(), 2), "sequences": len(seqs), "dropped": dropped,
               "trainable_params": n_params, "bf16": bf16, "run": run_key, "config": asdict(cfg)}
    save_final(model, tokenizer, final_dir, summary)
    if tracker is not None:
        tracker.summary({f"{stage}/steps": step, f"{stage}/stopped": stopped})
    return model
