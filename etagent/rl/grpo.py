"""GRPO on multi-turn tool rollouts: sample groups, shape rewards, clipped policy-gradient update.

One step = ``prompts_per_step`` questions x ``group_size`` rollouts from the rollout
engine (current weights), rewards over the whole ``[P, G, C]`` batch in one tensor op
(the reward object is called: :class:`etagent.rl.reward.RewardFn`, which owns the sigma
schedule; the sigmas it applied are logged), group-relative
advantages, then ``ppo_epochs`` x ``mini_batches`` clipped updates on model tokens only
(tool-result ids carry loss-mask 0 and get exactly zero gradient).

Choices and departures (all config, all logged):

* Old log-probs: ``old_logprobs=recompute`` (default, like verl) recomputes them with the
  current model before the update, at the sampling temperature, through the same code
  path as the new ones, so the first mini-batch ratio is exactly 1; ``rollout`` uses the
  backend's log-probs (same temperature-scaled convention, see backends/base.py).
* The algorithm is config (``rl.algo``, :class:`etagent.rl.algos.Algorithm`): an advantage
  estimator (:mod:`etagent.rl.advantages`; default GRPO's ``(r - mean_g) / (std_g + eps)``
  with the unbiased group std, as verl) and a policy loss (:mod:`etagent.rl.losses`;
  default PPO clip, token-mean). RLOO, Dr. GRPO and DAPO clip-higher are ``rl/algo=...``.
* Optimizer (AdamW), LoRA, LR warm-up and the bf16 decision come from
  :mod:`etagent.train.optim`, shared with SFT.
* KL: ``kl_coef=0`` (official runs) builds no reference model; otherwise the k3 estimator
  ``exp(ref - new) - (ref - new) - 1`` against a frozen copy (LoRA: the adapter-free base).
* A batch whose gradient is exactly zero (all groups with equal rewards and no KL
  signal) skips the optimizer step, so momentum/weight decay cannot move the policy
  without a learning signal (verl would still step Adam).
* Data order is a pure function of (seed, step): epoch-wise permutations of the
  questions, so a resumed run sees exactly the questions an uninterrupted run would.
  Checkpoints (``out_dir/checkpoints/step-N``, via :mod:`etagent.train.checkpoint`) hold
  the weights (LoRA: adapter only), optimizer, scheduler, step, every RNG state and the
  data-order state (seed, prompts per step, fingerprint of the question list; resume
  refuses a different list). Rollout and mini-batch seeds derive from (seed, stage, step).
* ARPO-style entropy branching is a rollout-engine strategy, not part of this trainer.
"""

from __future__ import annotations

import copy
import hashlib
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch

from etagent.rl import reward as rw
from etagent.rl.algos import Algorithm, instantiate_node
from etagent.rl.logprobs import PackedBatch, pack_trajectories, token_logprobs
from etagent.train import checkpoint as ckpt
from etagent.train.optim import (LoraSettings, build_adamw, build_scheduler, check_bf16_flag, merge_lora,
                                 resolve_bf16, wrap_lora)
from etagent.utils.io import read_json
from etagent.utils.logs import bar_step

OLD_LOGPROBS = ("recompute", "rollout")


@dataclass
class GRPOConfig:
    """Hyper-parameters of one GRPO stage (``conf/rl/grpo.yaml``)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    group_size: int = 8  # rollouts per question (GRPO's n)
    prompts_per_step: int = 8
    ppo_epochs: int = 1  # passes over one step's rollouts
    mini_batches: int = 2  # optimizer steps per pass
    micro_batch_size: int = 0  # sequences per forward/backward (gradient accumulation); 0 = a whole mini-batch
    kl_coef: float = 0.0  # 0: no reference model (official)
    max_steps: int = 50  # default steps of a stage when the schedule gives none
    temperature: float = 1.0
    top_p: float = 1.0
    max_response_tokens: int | None = None  # None: the rollout engine's own budget
    grad_clip: float = 1.0
    bf16: Any = "auto"  # auto | true | false: autocast (auto: CUDA bf16 or a CPU with AMX); log-probs stay float32
    lora: Any = field(default_factory=lambda: LoraSettings(target_modules="all-linear"))
    checkpoint_every: int = 25  # 0: only at the end of the stage
    keep_checkpoints: int = 2
    algo: Any = field(default_factory=Algorithm)  # advantage estimator + policy loss (conf/rl/algo)
    old_logprobs: Literal["recompute", "rollout"] = "recompute"
    seed: int = 0

    def __post_init__(self) -> None:
        self.lora = LoraSettings.coerce(self.lora, "rl.lora", target_modules="all-linear")
        if not isinstance(self.algo, Algorithm):  # a plain mapping (not built by hydra.utils.instantiate)
            from omegaconf import OmegaConf

            node = OmegaConf.create(self.algo if OmegaConf.is_config(self.algo) else dict(self.algo))
            self.algo = instantiate_node(node, "rl.algo") if "_target_" in node else Algorithm(**node)
        self.betas = list(self.betas)
        checks = [
            (self.group_size >= 2, "rl.group_size must be >= 2 (group-relative advantages)"),
            (self.prompts_per_step >= 1, "rl.prompts_per_step must be >= 1"),
            (self.ppo_epochs >= 1, "rl.ppo_epochs must be >= 1"),
            (1 <= self.mini_batches <= self.group_size * self.prompts_per_step,
             "rl.mini_batches must be in [1, prompts_per_step * group_size]"),
            (self.micro_batch_size >= 0, "rl.micro_batch_size must be >= 0"),
            (self.old_logprobs in OLD_LOGPROBS, f"rl.old_logprobs must be one of {OLD_LOGPROBS}"),
            (self.temperature > 0, "rl.temperature must be > 0 (log-probs divide by it)"),
            (self.kl_coef >= 0, "rl.kl_coef must be >= 0"),
            (self.lr > 0, "rl.lr must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{msg} (got {asdict(self)})")
        check_bf16_flag(self.bf16, "rl.bf16")


# --------------------------------------------------------------------------- pure pieces


def data_order(n: int, seed: int, step: int, per_step: int) -> list[int]:
    """Question indices of ``step``: consecutive slices of per-epoch permutations.

    A pure function of its arguments, which is what makes resume reproduce the order.
    """
    if n <= 0:
        raise ValueError("GRPO needs at least one training question")
    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(perm[i]))
    return out


def fingerprint(examples: Sequence[Any]) -> str:
    h = hashlib.sha1()
    for e in examples:
        h.update(str(e.id).encode() + b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- trainer


class GRPOTrainer:
    """Trains ``model`` in place with rollouts from ``engine`` (see module docstring)."""

    CKPT_DIR = "checkpoints"

    def __init__(self, model, tokenizer, engine, reward_fn: Callable[..., rw.ShapedReward], cfg: GRPOConfig,
                 out_dir: str | Path, tracker=None, ref_model=None) -> None:
        if not isinstance(cfg, GRPOConfig):
            raise TypeError(f"GRPOTrainer: cfg must be a built GRPOConfig (the `rl` node), got {type(cfg).__name__}")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.engine = engine
        # called as reward_fn(groups, step, total_steps, sigma0) -> ShapedReward (etagent.rl.reward.RewardFn)
        self.reward_fn = reward_fn
        self.out_dir = Path(out_dir)
        self.tracker = tracker
        self.algo: Algorithm = self.cfg.algo
        self.lora = bool(self.cfg.lora.enabled)
        self.model = wrap_lora(model, self.cfg.lora) if self.lora else model
        self.device = next(self.model.parameters()).device
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0) if tokenizer is not None else 0
        self.ref_model = None
        if self.cfg.kl_coef > 0 and not self.lora:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model.eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # one AdamW group (decay on every tensor) and warm-up then constant LR, as verl
        self.optimizer = build_adamw(self.params, self.cfg.lr, self.cfg.betas, self.cfg.weight_decay, decay_1d=True)
        self.scheduler = build_scheduler(self.optimizer, "constant", self.cfg.warmup_steps)
        self.step = 0
        self.autocast = torch.bfloat16 if resolve_bf16(self.cfg.bf16, self.device) else None

    # ------------------------------------------------------------------ public
    def train(self, examples: Sequence[Any], stage_name: str = "rl", total_steps: int | None = None,
              sigma0: Mapping[str, float] | None = None, resume: bool = True) -> dict[str, Any]:
        """Run steps until ``total_steps`` (default ``cfg.max_steps``); resumes from ``out_dir``.

        ``sigma0`` overrides the reward config's initial ``sigma_tool``/``sigma_len`` for
        this stage. Returns summary stats with the per-step metric history.
        """
        examples = list(examples)
        total = int(total_steps if total_steps is not None else self.cfg.max_steps)
        fp = fingerprint(examples)
        self.step = 0
        resumed_from = None
        if resume:
            state = self.load_latest(fp)
            if state is not None:
                resumed_from = self.step
        self._sync()  # the backend may hold older weights (fresh start from a loaded checkpoint)
        history: list[dict[str, Any]] = []
        t0 = time.time()
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=self.step, desc=f"GRPO {stage_name}", unit="step", leave=False,
                   dynamic_ncols=True)
        while self.step < total:
            idx = data_order(len(examples), self.cfg.seed, self.step, self.cfg.prompts_per_step)
            batch = [examples[i] for i in idx]
            metrics = self.train_step(batch, self.step, total, stage_name, sigma0)
            self.step += 1
            if self.tracker is not None:
                self.tracker.log(metrics, step=self.step, stage=stage_name)
            history.append({"step": self.step, "example_ids": [e.id for e in batch], **metrics})
            bar_step(bar, reward=f"{metrics.get('reward/mean', float('nan')):.3f}",
                     calls=f"{metrics.get('tool_calls_mean', float('nan')):.2f}")
            every = self.cfg.checkpoint_every
            if self.step == total or (every and self.step % every == 0):
                self.save_checkpoint(fp, total, stage_name)
        bar.close()
        return {
            "stage": stage_name, "steps": self.step, "total_steps": total, "resumed_from": resumed_from,
            "n_questions": len(examples), "wall_s": round(time.time() - t0, 2), "history": history,
            "reward_mean_last": history[-1]["reward/mean"] if history else None,
        }

    # ------------------------------------------------------------------ one step
    def rollout(self, batch: Sequence[Any], step: int, stage_name: str) -> list[list[Any]]:
        """``[P][G]`` trajectories for ``batch`` (grouped by question, engine order kept)."""
        from etagent.backends.base import SamplingParams

        cfg = self.cfg
        seed = (zlib.crc32(stage_name.encode()) * 1_000_003 + cfg.seed * 10_007 + step) % (2**31)
        kw: dict[str, Any] = dict(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed)
        if cfg.max_response_tokens is not None:
            kw["max_new_tokens"] = int(cfg.max_response_tokens)
            if hasattr(self.engine, "max_response_tokens"):
                self.engine.max_response_tokens = int(cfg.max_response_tokens)
        prefix = f"{stage_name}/s{step}/"
        trajs = self.engine.rollout(list(batch), cfg.group_size, SamplingParams(**kw), group_prefix=prefix)
        groups: dict[str, list[Any]] = {}
        for t in trajs:
            groups.setdefault(t.group_id, []).append(t)
        out = []
        for j, ex in enumerate(batch):
            # duplicates of one question in a step share a group id: split them in order
            g = groups.get(f"{prefix}{ex.id}", [])
            take, groups[f"{prefix}{ex.id}"] = g[: cfg.group_size], g[cfg.group_size:]
            if len(take) != cfg.group_size:
                raise RuntimeError(f"engine returned {len(take)} rollouts for question {ex.id!r}, "
                                   f"expected group_size={cfg.group_size}")
            out.append(take)
        return out

    def train_step(self, batch: Sequence[Any], step: int, total: int, stage_name: str = "rl",
                   sigma0: Mapping[str, float] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.time()
        self.model.eval()
        groups = self.rollout(batch, step, stage_name)
        t_roll = time.time() - t0
        shaped = self.reward_fn(groups, step, total, sigma0)
        comps, rewards, sigma_tool, sigma_len = shaped.components, shaped.rewards, shaped.sigma_tool, shaped.sigma_len
        adv = self.algo.advantage(rewards.float())
        flat = [t for g in groups for t in g]
        flat_adv = adv.reshape(-1).to(self.device)

        t1 = time.time()
        packed = pack_trajectories(flat, self.pad_id).to(self.device)
        with torch.no_grad():
            if cfg.old_logprobs == "recompute":
                old_lp = self._chunked_logprobs(self.model, packed)
            else:
                if any(t.logprobs is None for t in flat):
                    raise ValueError("rl.old_logprobs=rollout but the engine returned trajectories without logprobs")
                old_lp = packed.scatter([t.logprobs for t in flat]) * packed.loss_mask
            ref_lp = self._ref_logprobs(packed) if cfg.kl_coef > 0 else None
        upd = self._update(packed, old_lp, ref_lp, flat_adv, step)
        self._sync()
        t_upd = time.time() - t1
        return self._metrics(groups, comps, rewards, adv, sigma_tool, sigma_len, upd,
                             {"time/rollout_s": t_roll, "time/update_s": t_upd, "time/step_s": time.time() - t0})

    # ------------------------------------------------------------------ internals
    def _micro_chunks(self, rows: Sequence[int]) -> list[list[int]]:
        size = self.cfg.micro_batch_size or len(rows)
        rows = list(rows)
        return [rows[i : i + size] for i in range(0, len(rows), size)]

    def _chunked_logprobs(self, model, packed: PackedBatch) -> torch.Tensor:
        """No-grad log-probs ``[B, L-1]`` computed micro-batch by micro-batch (memory bound)."""
        out = torch.zeros_like(packed.loss_mask)
        for rows in self._micro_chunks(range(packed.input_ids.shape[0])):
            sub = packed.select(rows)
            lp, _ = token_logprobs(model, sub, self.cfg.temperature, autocast_dtype=self.autocast)
            out[torch.as_tensor(rows, device=out.device), : lp.shape[1]] = lp
        return out

    def _ref_logprobs(self, packed: PackedBatch) -> torch.Tensor:
        if self.lora:
            with self.model.disable_adapter():
                return self._chunked_logprobs(self.model, packed)
        return self._chunked_logprobs(self.ref_model, packed)

    def _update(self, packed: PackedBatch, old_lp, ref_lp, adv, step: int) -> dict[str, float]:
        cfg = self.cfg
        B = packed.input_ids.shape[0]
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)  # mini-batch split: own RNG
        acc: dict[str, list[float]] = {k: [] for k in ("loss", "clip_frac", "ppo_kl", "kl", "entropy", "grad_norm")}
        skipped = 0
        self.model.train()
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=gen).tolist()
            for mb in np.array_split(np.asarray(perm), cfg.mini_batches):
                mb = [int(i) for i in mb]
                mask_mb = packed.loss_mask[torch.as_tensor(mb, device=self.device)]
                # denominators of the whole mini-batch, so micro-batch losses add up to it
                denom = self.algo.loss.denominator(mask_mb)
                self.optimizer.zero_grad(set_to_none=True)
                mb_stats: dict[str, float] = {"loss": 0.0, "clip_frac": 0.0, "ppo_kl": 0.0, "kl": 0.0, "entropy": 0.0}
                n_mb = max(float(mask_mb.sum()), 1.0)
                for rows in self._micro_chunks(mb):
                    sub = packed.select(rows)
                    T = sub.loss_mask.shape[1]
                    ix = torch.as_tensor(rows, device=self.device)
                    new_lp, ent = token_logprobs(self.model, sub, cfg.temperature, with_entropy=True,
                                                 autocast_dtype=self.autocast)
                    loss, st = self.algo.loss(new_lp, old_lp[ix, :T], adv[ix], sub.loss_mask,
                                              None if ref_lp is None else ref_lp[ix, :T], cfg.kl_coef, denom=denom)
                    loss.backward()
                    w = float(sub.loss_mask.sum()) / n_mb  # token share of this micro-batch
                    mb_stats["loss"] += float(loss.detach())
                    mb_stats["entropy"] += float((ent * sub.loss_mask).sum()) / n_mb
                    for k in ("clip_frac", "ppo_kl", "kl"):
                        mb_stats[k] += st[k] * w
                gn = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                gn = float(gn)
                if gn == 0.0 or not np.isfinite(gn):
                    skipped += 1  # no learning signal (or a bad batch): leave the weights alone
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                for k, v in mb_stats.items():
                    acc[k].append(v)
                acc["grad_norm"].append(gn)
        with warnings.catch_warnings():
            # a skipped (zero-signal) update still advances the schedule, keeping LR a function of the step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.model.eval()
        out = {k: float(np.mean(v)) if v else 0.0 for k, v in acc.items()}
        out["updates_skipped"] = float(skipped)
        out["lr"] = float(self.optimizer.param_groups[0]["lr"])
        return out

    def _sync(self) -> None:
        backend = getattr(self.engine, "backend", None)
        if backend is not None and hasattr(backend, "sync_weights"):
            backend.sync_weights(self.model)

    def _metrics(self, groups, comps, rewards, adv, sigma_tool, sigma_len, upd, timing) -> dict[str, Any]:
        flat = [t for g in groups for t in g]
        m: dict[str, Any] = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std(unbiased=False)),
            "reward/zero_var_groups": float((rewards.std(dim=1, unbiased=False) == 0).float().mean()),
            "sigma_tool": sigma_tool,
            "sigma_len": sigma_len,
            "adv_abs_mean": float(adv.abs().mean()),
            "correct_mean": float(np.mean([t.score for t in flat])),
            "format_error_rate": float(np.mean([bool(t.format_errors) for t in flat])),
            "tool_calls_mean": float(comps[..., rw.N_CALLS].float().mean()),  # official count (Trajectory.n_calls)
            "model_tokens_mean": float(np.mean([t.model_tokens for t in flat])),
            "response_tokens_mean": float(np.mean([len(t.response_ids) for t in flat])),
        }
        for c, name in enumerate(rw.COMPONENTS):
            m[f"reward/{name}_mean"] = float(comps[..., c].float().mean())
        f_tool, f_len = rw.shaping_factors(comps, sigma_tool, sigma_len)
        m["reward/f_tool_mean"] = float(f_tool.mean())
        m["reward/f_len_mean"] = float(f_len.mean())
        # the mean of f_tool/f_len is ~1 by construction; their spread within a group is the signal
        for fname, f in (("f_tool", f_tool), ("f_len", f_len)):
            m[f"reward/{fname}_min"], m[f"reward/{fname}_max"] = float(f.min()), float(f.max())
            m[f"reward/{fname}_group_std"] = float(f.std(-1, unbiased=False).mean())
        m["reward/format_penalty_mean"] = float((comps[..., rw.FORMAT_OK] - 1.0).mean())
        rates: dict[str, list[float]] = {}
        for t in flat:
            for k, v in (t.behaviour or {}).items():
                if isinstance(v, bool):
                    rates.setdefault(k, []).append(float(v))
        for k, v in rates.items():
            m[f"behaviour/{k}_rate"] = float(np.mean(v))
        m.update(upd)
        m.update({k: round(v, 4) for k, v in timing.items()})
        return m

    # ------------------------------------------------------------------ checkpoints
    def _ckpt_root(self) -> Path:
        return self.out_dir / self.CKPT_DIR

    def save_checkpoint(self, fp: str, total: int, stage_name: str) -> Path:
        """Atomically write ``checkpoints/step-XXXXXX`` (weights, optimizer, RNG, data-order state)."""
        state = {
            "data": {"fingerprint": fp, "seed": self.cfg.seed, "prompts_per_step": self.cfg.prompts_per_step,
                     "next_step": self.step},
            "total_steps": total, "stage": stage_name, "config": asdict(self.cfg),
        }
        return ckpt.save_checkpoint(self._ckpt_root(), self.step, self.model, self.optimizer, self.scheduler,
                                    state, adapter_only=self.lora, keep_last=max(int(self.cfg.keep_checkpoints), 1))

    def load_latest(self, fp: str | None = None) -> dict[str, Any] | None:
        """Restore the newest checkpoint under ``out_dir`` (None if there is none)."""
        path = ckpt.latest_checkpoint(self._ckpt_root())
        if path is None:
            return None
        meta = read_json(path / "state.json")
        data = meta.get("data", {})
        if fp is not None and data.get("fingerprint") != fp:
            raise ValueError(f"{path}: checkpoint was trained on a different question list; "
                             f"use a fresh out_dir or the same questions to resume")
        for k in ("seed", "prompts_per_step"):
            if data.get(k) != getattr(self.cfg, k):
                raise ValueError(f"{path}/state.json: data.{k}={data.get(k)} but rl.{k}={getattr(self.cfg, k)}; "
                                 f"resuming would change the data order")
        state = ckpt.load_checkpoint(path, self.model, self.optimizer, self.scheduler, adapter_only=self.lora)
        self.step = int(state["step"])
        return state

    def save_policy(self, path: str | Path) -> Path:
        """``save_pretrained`` model + tokenizer into ``path`` atomically (LoRA merged first).

        Merging replaces ``self.model`` by the merged base model: call at the end of a stage.
        """
        if self.lora:
            self.model = merge_lora(self.model)
            self.lora = False
        with ckpt.atomic_dir(path) as tmp:
            self.model.save_pretrained(str(tmp))
            if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
                self.tokenizer.save_pretrained(str(tmp))
        return Path(path)
