"""Evaluation: five-dimension metrics, behaviour rates, radar chart, the evaluate entry point.

:class:`EvalConfig` is the ``eval`` config group (``conf/eval/default.yaml``); the
evaluate stage reads it. Metric definitions live in :mod:`etagent.evaluation.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EvalConfig:
    """How a policy is evaluated (sampling and reporting; the benchmark comes from ``task``).

    ``n_samples`` > 1 averages every metric over samples (see metrics docstring);
    ``temperature`` 0 means greedy. ``qa_metric`` names the QA correctness (f1 | em).
    ``concise_judge`` adds the LLM-judge conciseness (needs ``judge=llm``).
    ``compare`` lists other runs' metrics JSON files to put in the same table and radar.
    """

    split: str = "test"
    max_examples: int | None = None
    n_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    qa_metric: Literal["f1", "em"] = "f1"
    concise_judge: bool = False
    compare: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"eval.n_samples must be >= 1, got {self.n_samples}")
        if self.qa_metric not in ("f1", "em"):
            raise ValueError(f"eval.qa_metric must be 'f1' or 'em', got {self.qa_metric!r}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"eval.max_examples must be >= 1 or null, got {self.max_examples}")
        self.compare = list(self.compare)
