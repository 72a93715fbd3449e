"""Policy losses on ``[B, T]`` token tensors (picked by ``rl.algo.loss._target_``).

A loss is a dataclass with ``__call__(new_lp, old_lp, adv, mask, ref_lp, kl_coef, denom)
-> (loss, stats)`` and ``denominator(mask)`` (the whole mini-batch's count, so that
micro-batch losses add up to the mini-batch loss). PPO-clip with ``clip_high >
clip_low`` and ``agg=token-mean`` is DAPO's clip-higher; ``dual_clip_c=3`` is dual-clip PPO (the
released ARPO config, ``ARPO/scripts/config/ppo_trainer.yaml`` ``clip_ratio_c: 3.0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LOSS_AGGS = ("token-mean", "seq-mean-token-mean")


def clipped_pg_loss(
    new_lp: torch.Tensor,
    old_lp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    ref_lp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    agg: str = "token-mean",
    denom: float | None = None,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip surrogate (+ k3 KL) on ``[B, T]`` token tensors, aggregated over ``mask``.

    ``dual_clip_c`` (dual-clip PPO, Ye et al. 2020, arXiv 1912.09729; verl's ``clip_ratio_c``): for a
    negative advantage the clipped loss is capped at ``-A * c``, so a token whose ratio has grown far
    past ``c`` stops pushing (its gradient is 0); positive advantages are unchanged. None = off.

    ``adv`` is per sequence ``[B]`` or per token ``[B, T]``. Masked-out tokens contribute
    exactly zero to the loss and therefore to every gradient. ``denom`` replaces this
    batch's token count (token-mean) or sequence count (seq-mean-token-mean) so that
    micro-batches of one mini-batch sum to the mini-batch loss.
    """
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(new_lp)
    log_ratio = (new_lp - old_lp) * mask
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    tok_loss = torch.maximum(pg1, pg2)
    dual = torch.zeros_like(tok_loss, dtype=torch.bool)
    if dual_clip_c is not None:
        pg3 = -adv * dual_clip_c
        dual = (adv < 0) & (pg3 < tok_loss)
        tok_loss = torch.where(adv < 0, torch.minimum(tok_loss, pg3), tok_loss)
    kl = torch.zeros_like(new_lp)
    if ref_lp is not None and kl_coef > 0:
        d = (ref_lp - new_lp) * mask
        kl = torch.exp(d) - d - 1.0  # k3: unbiased, non-negative
        tok_loss = tok_loss + kl_coef * kl
    tok_loss = tok_loss * mask  # why: masked tokens must add exactly 0 (not just a small value)
    n_tok = mask.sum()
    if agg == "token-mean":
        loss = tok_loss.sum() / (n_tok.clamp(min=1.0) if denom is None else max(float(denom), 1.0))
    elif agg == "seq-mean-token-mean":
        per_seq_n = mask.sum(-1)
        has = per_seq_n > 0
        seq_loss = tok_loss.sum(-1) / per_seq_n.clamp(min=1.0)
        loss = seq_loss[has].sum() / (has.sum().clamp(min=1) if denom is None else max(float(denom), 1.0))
    else:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {agg!r}")
    with torch.no_grad():
        n = n_tok.clamp(min=1.0)  # the stats are token means of this batch whatever ``denom`` is
        stats = {
            "clip_frac": float(((pg2 > pg1).float() * mask).sum() / n),
            "dual_clip_frac": float((dual.float() * mask).sum() / n),
            "ppo_kl": float((-log_ratio * mask).sum() / n),
            "kl": float((kl * mask).sum() / n),
        }
    return loss, stats


@dataclass
class PPOClip:
    """Clipped surrogate ``max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` (+ k3 KL when kl_coef > 0);
    with ``dual_clip_c`` (the released ARPO config's ``clip_ratio_c: 3.0``) also ``min(., -A c)`` where A < 0."""

    clip_low: float = 0.2
    clip_high: float = 0.2  # > clip_low: DAPO's clip-higher
    agg: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"
    dual_clip_c: float | None = None  # None = plain PPO-clip; > 1 caps the loss of negative advantages

    def __post_init__(self) -> None:
        if self.agg not in LOSS_AGGS:
            raise ValueError(f"rl.algo.loss.agg (loss_agg) must be one of {LOSS_AGGS}, got {self.agg!r}")
        if self.clip_low < 0 or self.clip_high < 0:
            raise ValueError(f"rl.algo.loss.clip_low/clip_high must be >= 0, got {self.clip_low}, {self.clip_high}")
        if self.dual_clip_c is not None and not self.dual_clip_c > 1.0:
            raise ValueError(f"rl.algo.loss.dual_clip_c must be > 1 (or null), got {self.dual_clip_c}")

    def denominator(self, mask: torch.Tensor) -> float:
        """Token count (token-mean) or count of sequences with a trained token (seq-mean-token-mean)."""
        return float(mask.sum()) if self.agg == "token-mean" else float((mask.sum(-1) > 0).sum())

    def __call__(self, new_lp, old_lp, adv, mask, ref_lp=None, kl_coef: float = 0.0, denom=None):
        return clipped_pg_loss(new_lp, old_lp, adv, mask, self.clip_low, self.clip_high, ref_lp, kl_coef,
                               self.agg, denom, self.dual_clip_c)
