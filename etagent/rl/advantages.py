"""Advantage estimators: ``[P, G]`` group rewards -> ``[P, G]`` per-rollout advantages.

Each estimator is a small dataclass picked by ``rl.algo.advantage._target_`` (the
``conf/rl/algo/*.yaml`` files); a new one is a class here with ``__call__(rewards)``.
Every estimator gives exactly 0 to a group whose rewards are all equal (no signal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _equal_groups(rewards: torch.Tensor) -> torch.Tensor:
    # why: a float mean of equal values can be off by one ulp; equal groups must give exactly 0
    return rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)


def group_advantages(rewards: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """``(r - mean_g) [/ (std_g + eps)]`` with the unbiased group std (as verl); equal groups give 0."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    equal = _equal_groups(rewards)
    centred = torch.where(equal, torch.zeros_like(centred), centred)
    if not norm_by_std:
        return centred
    std = rewards.std(dim=1, keepdim=True, unbiased=True)
    return torch.where(equal, torch.zeros_like(centred), centred / (std + eps))


@dataclass
class GroupNorm:
    """GRPO: reward minus the group mean, divided by the group std; ``norm_by_std=false`` is Dr. GRPO."""

    norm_by_std: bool = True
    eps: float = 1e-6

    def __call__(self, rewards: torch.Tensor) -> torch.Tensor:
        return group_advantages(rewards, self.norm_by_std, self.eps)


@dataclass
class LeaveOneOut:
    """RLOO: reward minus the mean of the *other* rollouts of its group, ``r_i - (sum_g - r_i) / (G - 1)``."""

    def __call__(self, rewards: torch.Tensor) -> torch.Tensor:
        g = rewards.shape[1]
        if g < 2:
            raise ValueError("RLOO needs rl.group_size >= 2 (a leave-one-out baseline)")
        adv = rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
        return torch.where(_equal_groups(rewards), torch.zeros_like(adv), adv)
