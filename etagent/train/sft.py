"""Supervised fine-tuning on masked sequences: the seed agent and action-space-exploration (ASE).

``train_sft`` trains next-token prediction on the tokens whose mask is 1 (the label at
position t is ids[t] and counts iff mask[t] == 1; prompt and tool results are 0), with
length-bucketed micro-batches, AdamW (no decay on norms/biases), linear warm-up then
cosine decay, gradient accumulation, grad clipping, bf16 autocast where supported,
full fine-tuning or LoRA (peft; merged at the end so the output is a plain model),
a step or epoch budget plus a wall-clock budget, atomic checkpoints every N steps and
exact resume (same step count, same data order, same RNG), tqdm progress and per-step
metrics to a :class:`etagent.tracking.Tracker`. The result is saved with
``save_pretrained`` (+ tokenizer) in ``<out_dir>/final``. The run is a recipe in torchtune's
sense (:class:`SFTRecipe`: setup, step, evaluate, save); ``train_sft`` drives it.

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


class SFTRecipe:
    """One SFT run as torchtune's recipes split it: :meth:`setup` (data, model wrapping, optimizer,
    schedule, resume), :meth:`step` (one optimizer step: micro-batches, clip, update, log,
    checkpoint), :meth:`evaluate` (the run's outcome: steps, stop reason, time) and :meth:`save`
    (LoRA merged, ``final`` + its summary). :func:`train_sft` runs them in that order; a stage that
    needs another loop (an evaluation between steps, a different budget) drives the same pieces.
    """

    def __init__(self, model, tokenizer, sequences: list[TrainSequence], cfg: SFTConfig | dict, out_dir: str | Path,
                 tracker=None, stage: str = "sft", resume: bool = True):
        self.cfg = SFTConfig.coerce(cfg)
        self.model, self.tokenizer, self.sequences = model, tokenizer, sequences
        self.out_dir = Path(out_dir)
        self.final_dir, self.ckpt_root = self.out_dir / "final", self.out_dir / "checkpoints"
        self.tracker, self.stage, self.resume = tracker, stage, resume
        self.step_no, self.elapsed_before, self.stopped = 0, 0.0, "completed"

    # ------------------------------------------------------------------ setup
    def setup(self) -> bool:
        """Prepare a run (or a resumed one); False when a finished run was loaded instead (nothing to train)."""
        cfg, stage, model = self.cfg, self.stage, self.model
        self.device = next(model.parameters()).device
        vocab = model.get_input_embeddings().num_embeddings
        max_len = cfg.max_len
        max_pos = getattr(model.config, "max_position_embeddings", None)
        if max_pos and max_len > max_pos:
            log.warning("train.max_len=%d exceeds the model's max_position_embeddings=%d; using %d", max_len, max_pos,
                        max_pos)
            max_len = max_pos
        seqs, dropped = prepare_sequences(self.sequences, max_len, vocab)
        if not seqs:
            raise ValueError(f"{stage}: no training sequence has a trained token (got {len(self.sequences)}, all dropped)")
        if dropped:
            log.warning("%s: dropped %d sequences with no trained token after truncation to %d", stage, dropped, max_len)
        self.seqs, self.dropped = seqs, dropped
        tokenizer = self.tokenizer
        self.pad_id = 0
        if tokenizer is not None:
            self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.bf16 = resolve_bf16(cfg.bf16, self.device)

        self.stream = _Stream([len(s) for s in seqs], cfg)
        self.limit_micro = math.inf if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * self.stream.per_epoch))
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(self.limit_micro / cfg.grad_accum)
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * self.total_steps)
        warmup = max(0, min(int(warmup), self.total_steps))
        # What must not change between a run and its resumption (checked against checkpoints and final).
        self.run_key = {"data": _fingerprint(seqs), "n_sequences": len(seqs), "total_steps": self.total_steps,
                        "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "seed": cfg.seed,
                        "lora": cfg.lora.enabled,
                        "base_weights": _weights_fingerprint(model) if cfg.lora.enabled else None,
                        "max_len": max_len, "bucket_batches": cfg.bucket_batches}

        if not self.resume:
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
        elif (self.final_dir / "sft_summary.json").exists():
            done = read_json(self.final_dir / "sft_summary.json")
            _check_same_run(done.get("run", {}), self.run_key, self.final_dir)
            more_time = done.get("stopped") == "time_budget" and done.get("elapsed_s", 0) < (cfg.max_minutes or math.inf) * 60
            if not more_time:  # finished (or still out of time): reuse it
                log.info("%s: %s already trained, loading it", stage, self.final_dir)
                self.model = _load_final(self.final_dir, model)
                return False

        torch.manual_seed(cfg.seed)  # LoRA init and dropout are reproducible
        if cfg.lora.enabled:
            model = wrap_lora(model, cfg.lora)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_adamw(self.params, cfg.lr, cfg.adam_betas, cfg.weight_decay, eps=cfg.adam_eps)
        self.scheduler = build_scheduler(self.optimizer, "cosine", warmup, self.total_steps, cfg.min_lr_ratio)

        last = latest_checkpoint(self.ckpt_root) if self.resume else None
        if last is not None:
            state = load_checkpoint(last, model, self.optimizer, self.scheduler, adapter_only=cfg.lora.enabled)
            _check_same_run(state["run"], self.run_key, last)
            self.stream.restore(state["stream"])
            self.step_no, self.elapsed_before = int(state["step"]), float(state["elapsed_s"])
            log.info("%s: resumed from %s at step %d/%d", stage, last, self.step_no, self.total_steps)

        self.n_params = sum(p.numel() for p in self.params)
        log.info("%s: %d sequences, %d steps (warm-up %d), %d trainable params, bf16=%s, lora=%s",
                 stage, len(seqs), self.total_steps, warmup, self.n_params, self.bf16, cfg.lora.enabled)
        self.t_start = time.monotonic()
        self.budget_s = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        return True

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t_start

    @property
    def done(self) -> bool:
        """All steps taken, or the wall-clock budget spent (``stopped`` says which)."""
        if self.step_no >= self.total_steps:
            return True
        if self.elapsed() >= self.budget_s:
            self.stopped = "time_budget"
            return True
        return False

    # ------------------------------------------------------------------ step
    def step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches (token-mean loss over the whole step);
        logs every ``log_every`` steps and checkpoints every ``checkpoint_every``."""
        cfg, model, stream = self.cfg, self.model, self.stream
        t0 = time.monotonic()
        n_micro = int(min(cfg.grad_accum, self.limit_micro - stream.consumed))
        batches = [collate([self.seqs[i] for i in idx], idx, self.pad_id) for idx in (stream.next() for _ in range(n_micro))]
        n_loss = sum(b.n_loss_tokens for b in batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for b in batches:
            nll = batch_nll_sum(model, b.to(self.device), self.bf16)
            (nll / n_loss).backward()  # token mean over the whole optimizer step
            loss_sum += float(nll.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step_no += 1
        step = self.step_no
        dt = time.monotonic() - t0
        metrics = {"loss": loss_sum / n_loss, "lr": lr, "grad_norm": float(grad_norm), "loss_tokens": n_loss,
                   "tokens": sum(b.n_tokens for b in batches), "seqs": sum(len(b.lengths) for b in batches),
                   "tok_per_s": sum(b.n_tokens for b in batches) / max(dt, 1e-9),
                   "epoch": stream.consumed / stream.per_epoch}
        if self.tracker is not None and (step % max(1, cfg.log_every) == 0 or step == self.total_steps):
            self.tracker.log({**metrics, "elapsed_s": self.elapsed()}, step=step, stage=self.stage)
        if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and step < self.total_steps:
            self.checkpoint()
        return metrics

    def checkpoint(self) -> None:
        """A resumable checkpoint at the current step (weights or adapter, optimizer, data position)."""
        save_checkpoint(self.ckpt_root, self.step_no, self.model, self.optimizer, self.scheduler,
                        {"run": self.run_key, "stream": self.stream.state(), "elapsed_s": self.elapsed()},
                        adapter_only=self.cfg.lora.enabled, keep_last=self.cfg.keep_checkpoints)

    # ------------------------------------------------------------------ evaluate, save
    def evaluate(self) -> dict[str, Any]:
        """The run's outcome: steps taken of the total, why it stopped, time, data and model sizes."""
        return {"stage": self.stage, "steps": self.step_no, "total_steps": self.total_steps, "stopped": self.stopped,
                "elapsed_s": round(self.elapsed(), 2), "sequences": len(self.seqs), "dropped": self.dropped,
                "trainable_params": self.n_params, "bf16": self.bf16, "run": self.run_key, "config": asdict(self.cfg)}

    def save(self):
        """Merge LoRA, save ``final`` with the outcome (:meth:`evaluate`); returns the model in eval mode."""
        cfg = self.cfg
        if self.stopped == "time_budget":
            self.checkpoint()  # the budget may be raised and the run resumed from here
            log.warning("%s: time budget of %.1f min reached at step %d/%d", self.stage, cfg.max_minutes, self.step_no,
                        self.total_steps)
        model = self.model
        if cfg.lora.enabled:
            model = merge_lora(model)  # plain model out: later stages load it like any checkpoint
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()
        self.model = model
        summary = self.evaluate()
        save_final(model, self.tokenizer, self.final_dir, summary)
        if self.tracker is not None:
            self.tracker.summary({f"{self.stage}/steps": self.step_no, f"{self.stage}/stopped": self.stopped})
        return model


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
    The recipe (:class:`SFTRecipe`): setup, then steps until done, then save.
    """
    recipe = SFTRecipe(model, tokenizer, sequences, cfg, out_dir, tracker=tracker, stage=stage, resume=resume)
    if not recipe.setup():
        return recipe.model
    bar = tqdm(total=recipe.total_steps, initial=recipe.step_no, desc=stage, disable=not recipe.cfg.progress,
               dynamic_ncols=True)
    try:
        while not recipe.done:
            m = recipe.step()
            bar_step(bar, loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")
    finally:
        bar.close()
    return recipe.save()
