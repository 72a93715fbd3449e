"""Question selectors for an RL stage (config group ``sampling=pareto|random|all``).

Every selector takes, per question, the K rollouts' executed tool-call counts and correctness
(plus the domain and the run's grader) and returns the indices of the questions to train on,
ranked:

* :class:`ParetoSampler` -- the paper's group-wise Pareto sampling (:mod:`etagent.rl.pareto`).
* :class:`RandomSampler` -- ablation: ``count`` questions uniformly at random (seeded).
* :class:`AllSampler` -- ablation: every question.

``filter_mixed`` drops questions whose rollouts all succeed or all fail (math: needs a 0
and a 1; QA: a score >= ``qa_threshold`` and one below; the run's grader with this threshold
decides). It is part of the paper's
Pareto procedure (on by default there) and off by default for the ablations, so that
"random" and "all" are the plain baselines; turn it on to isolate the Pareto ordering.
For Pareto the filter runs after the ``count`` cut (official order); for random it runs
before drawing, so ``count`` questions come back whenever enough qualify.
"""

from __future__ import annotations

import random
from typing import Sequence

from etagent.grading import Grader
from etagent.rl.pareto import mixed_only, pareto_select


def _check_lengths(tool_counts, correctness, domains) -> None:
    if len(tool_counts) != len(correctness):
        raise ValueError(
            f"sampler: tool_counts has {len(tool_counts)} questions but correctness has {len(correctness)}"
        )
    if domains is not None and len(domains) != len(correctness):
        raise ValueError(f"sampler: domains has {len(domains)} entries for {len(correctness)} questions")


class _Sampler:
    """Shared settings of the selectors (validated once here)."""

    def _setup(self, count: int | None, qa_threshold: float, filter_mixed: bool) -> None:
        if count is not None:
            if count < 0:
                raise ValueError(f"sampling.count must be >= 0, got {count}")
            self.count = int(count)
        self.qa_threshold = float(qa_threshold)
        self.filter_mixed = bool(filter_mixed)

    def _grader(self, grader: Grader) -> Grader:
        """The run's grader at this sampler's threshold (``sampling.qa_threshold``)."""
        if not isinstance(grader, Grader):
            raise TypeError(f"sampler: grader must be the run's etagent.grading.Grader, got {type(grader).__name__}")
        return grader.with_threshold(self.qa_threshold)


class ParetoSampler(_Sampler):
    """NSGA-II over (variance of tool calls, variance of correctness); see :func:`pareto_select`."""

    name = "pareto"

    def __init__(self, count: int, qa_threshold: float, filter_mixed: bool = True) -> None:
        self._setup(count, qa_threshold, filter_mixed)

    def select(
        self,
        tool_counts: Sequence[Sequence[float]],
        correctness: Sequence[Sequence[float]],
        domains: Sequence[str] | None,
        grader: Grader,
    ) -> list[int]:
        return pareto_select(tool_counts, correctness, self.count, domains, self._grader(grader),
                             filter_mixed=self.filter_mixed)


class RandomSampler(_Sampler):
    """``count`` questions drawn uniformly without replacement (same seed, same draw)."""

    name = "random"

    def __init__(self, count: int, qa_threshold: float, seed: int = 0, filter_mixed: bool = False) -> None:
        self._setup(count, qa_threshold, filter_mixed)
        self.seed = int(seed)

    def select(
        self,
        tool_counts: Sequence[Sequence[float]],
        correctness: Sequence[Sequence[float]],
        domains: Sequence[str] | None,
        grader: Grader,
    ) -> list[int]:
        _check_lengths(tool_counts, correctness, domains)
        pool = (
            mixed_only(range(len(correctness)), correctness, domains, self._grader(grader))
            if self.filter_mixed else list(range(len(correctness)))
        )
        # why: a private RNG so selection never depends on (or disturbs) the global stream
        return random.Random(self.seed).sample(pool, min(self.count, len(pool)))


class AllSampler(_Sampler):
    """Every question, in index order."""

    name = "all"

    def __init__(self, qa_threshold: float, filter_mixed: bool = False) -> None:
        self._setup(None, qa_threshold, filter_mixed)

    def select(
        self,
        tool_counts: Sequence[Sequence[float]],
        correctness: Sequence[Sequence[float]],
        domains: Sequence[str] | None,
        grader: Grader,
    ) -> list[int]:
        _check_lengths(tool_counts, correctness, domains)
        if self.filter_mixed:
            return mixed_only(range(len(correctness)), correctness, domains, self._grader(grader))
        return list(range(len(correctness)))
