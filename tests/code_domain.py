"""A user answer domain added the documented way (a grading rule + config, no other file): "code",
graded by exact match after stripping whitespace. Its config node (under ``task.domains``) is
:data:`NODE`; tests/test_domain_extension.py and tests/test_grader.py use it."""

from __future__ import annotations

from typing import Sequence


def exact_code(pred: str, golds: Sequence[str]) -> float:
    """1.0 if the prediction equals a gold program up to surrounding whitespace."""
    return float(pred.strip() in [str(g).strip() for g in golds])


#: the config node (Hydra override syntax) that declares the domain
NODE = ("{_target_: etagent.grading.DomainRule, name: code, metrics: [exact_code], binary: true, "
        "metric_fns: {exact_code: code_domain.exact_code}}")
