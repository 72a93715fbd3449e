"""ARPO-style entropy-based adaptive branching after tool calls (``rollout.strategy=branching``).

ARPO (arXiv 2507.19849; the ET-Agent RL stage samples with it: 8 initial rollouts, beam 2,
branch probability 0.5, entropy weight 0.2, 16 in total) starts ``initial_rollouts``
chains per question, measures the entropy of the first ``k`` tokens generated after each
tool result, and forks the chain at that point when the entropy rose above the chain's
initial entropy, until the question has ``n`` chains.

What this module does (and how it departs from ARPO / its official code):

* ``H_init`` = mean entropy of the first ``window`` tokens of the chain's first turn;
  ``H_t`` = the same over the first ``window`` tokens sampled right after a tool result.
* Branch probability ``p = clip(branch_prob + entropy_weight * (H_t - H_init) / max(H_init, eps), 0, 1)``
  (ARPO normalises the delta; we normalise by ``H_init``); with probability ``p`` (seeded
  RNG) the chain forks into ``beam - 1`` new chains that restart *from the end of the tool
  result* and sample their own continuation; the original keeps its sampled turn.
  ``threshold`` > 0 additionally requires ``H_t - H_init >= threshold`` (deterministic gate).
* Entropy: the exact entropy of the sampling distribution when the backend reports it
  (``hf``), else the sampled tokens' surprisal ``-log p`` (an unbiased single-sample
  estimate; ``vllm``/``openai``).
* Budget: never more than ``n`` chains per question. If a question finishes with fewer
  (no fork happened), the remaining slots are filled with fresh chains from the prompt, so
  every group has exactly ``n`` trajectories as GRPO expects (ARPO does the same with its
  left-over budget).
* ARPO also attributes advantages to shared prefixes; etagent treats each chain as an
  independent GRPO sample (the shared prefix is duplicated), noted in ``meta.parent``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence


@dataclass
class EntropyBrancher:
    initial_rollouts: int = 8
    beam: int = 2
    branch_prob: float = 0.5
    entropy_weight: float = 0.2
    window: int = 10
    threshold: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.initial_rollouts < 1:
            raise ValueError(f"rollout.branching.initial_rollouts must be >= 1, got {self.initial_rollouts}")
        if self.beam < 2:
            raise ValueError(f"rollout.branching.beam must be >= 2, got {self.beam}")
        if self.window < 1:
            raise ValueError(f"rollout.branching.window must be >= 1, got {self.window}")
        self.rng = random.Random(self.seed)

    def n_initial(self, n: int) -> int:
        return max(1, min(self.initial_rollouts, n))

    def entropy(self, entropies: Sequence[float] | None, logprobs: Sequence[float] | None) -> float | None:
        """Mean entropy over the first ``window`` tokens (surprisal fallback); None if nothing sampled."""
        if entropies:
            vals = list(entropies[: self.window])
        elif logprobs:
            vals = [-lp for lp in logprobs[: self.window]]
        else:
            return None
        vals = [v for v in vals if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else None

    def probability(self, h_t: float, h_init: float) -> float:
        delta = (h_t - h_init) / max(abs(h_init), 1e-6)
        return min(1.0, max(0.0, self.branch_prob + self.entropy_weight * delta))

    def n_branches(self, h_t: float | None, h_init: float | None, room: int) -> int:
        """How many new chains to fork here (0..min(beam-1, room))."""
        if room <= 0 or h_t is None or h_init is None:
            return 0
        if self.threshold > 0 and h_t - h_init < self.threshold:
            return 0
        if self.rng.random() >= self.probability(h_t, h_init):
            return 0
        return min(self.beam - 1, room)
