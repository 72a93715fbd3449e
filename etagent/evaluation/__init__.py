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
    ``top_k`` (0 = off) and ``repetition_penalty`` (1.0 = off) complete the released sampling
    (``evaluation/infer_local_sds.sh``: T 0.6, top_p 0.95, top_k 20, penalty 1.1; ``preset=paper``).
    ``budget``: the rollout budget rule of evaluation (released: ``per_kind_then_answer``, 6 per
    kind then one last generation; :mod:`etagent.rollout.engine`). ``answer_extraction``:
    ``strict`` (credit only from a closed answer block's ``\\boxed{}``) or ``official`` (the
    released ``extract_answer`` and the evaluator's last-five-lines fallback:
    :func:`etagent.grading.official_eval_answer`).
    """

    split: str = "test"
    max_examples: int | None = None
    n_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    qa_metric: Literal["f1", "em"] = "f1"
    concise_judge: bool = False
    compare: list[str] = field(default_factory=list)
    budget: Literal["total", "per_kind", "per_kind_then_answer"] = "per_kind_then_answer"
    answer_extraction: Literal["strict", "official"] = "strict"

    def __post_init__(self) -> None:
        if self.answer_extraction not in ("strict", "official"):
            raise ValueError(f"eval.answer_extraction must be 'strict' or 'official', got {self.answer_extraction!r}")
        if self.n_samples < 1:
            raise ValueError(f"eval.n_samples must be >= 1, got {self.n_samples}")
        if self.qa_metric not in ("f1", "em"):
            raise ValueError(f"eval.qa_metric must be 'f1' or 'em', got {self.qa_metric!r}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"eval.max_examples must be >= 1 or null, got {self.max_examples}")
        self.compare = list(self.compare)

    @property
    def engine_extraction(self) -> str:
        """The rollout engine's ``answer_extraction`` for this setting."""
        return "official_eval" if self.answer_extraction == "official" else "strict"
