"""Shared pieces of the synthetic generators: question candidates, recall facts, normalisation.

A *candidate* is a generated question before it gets a split and an id. A *recall fact*
is something the model is meant to memorise (single-digit arithmetic, facts about
famous entities); it comes with several paraphrase templates, and each fact holds one
paraphrase out for dev and another for test, so splits never share a question text
while the fact itself is still learnable from training.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from etagent.records import PlanStep

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise_question(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive key used to dedupe across splits."""
    return _NON_ALNUM.sub(" ", text.lower()).strip()


@dataclass(frozen=True)
class Candidate:
    qtype: str  # math_tool | math_recall | math_copy | qa_recall | qa_1hop | qa_2hop
    domain: str  # math | qa
    question: str
    answers: tuple[str, ...]
    plan: tuple[PlanStep, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class RecallFact:
    key: str
    questions: tuple[str, ...]  # one filled question per paraphrase template (>= 3)
    make: Any  # callable(question) -> Candidate

    def held_out(self, seed: int) -> tuple[int, int]:
        """(dev index, test index): two distinct paraphrases, chosen per fact and seed."""
        n = len(self.questions)
        if n < 3:
            raise ValueError(f"recall fact {self.key!r} needs >= 3 paraphrases, has {n}")
        test = random.Random(f"recall:{seed}:{self.key}").randrange(n)
        return (test + 1) % n, test

    def indices_for(self, split: str, seed: int) -> list[int]:
        dev, test = self.held_out(seed)
        if split == "test":
            return [test]
        if split == "dev":
            return [dev]
        return [i for i in range(len(self.questions)) if i not in (dev, test)]
