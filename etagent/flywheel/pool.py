"""The flywheel data pool: de-duplicated trajectories with provenance, persisted as JSONL.

Every record keeps ``meta = {round, strategy, parent_id, ...}``; ``strategy == "sample"``
marks an unedited policy sample (parent_id None). The pool holds incorrect samples too
(so its share correct is meaningful and reflection parents are traceable); only
:meth:`Pool.select` decides what becomes SFT data: correct trajectories, per question
best first (fewest tool calls, then fewest model tokens), at most ``max_per_question``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Iterable, Iterator

from etagent.flywheel.textops import cost, normalise_response
from etagent.grading import Grader
from etagent.protocol import Grammar
from etagent.records import Trajectory, read_jsonl, write_jsonl

SAMPLE = "sample"
PROVENANCE_KEYS = ("round", "strategy", "parent_id")


def answer_grounded(traj: Trajectory, question: str, group: list[Trajectory], is_correct) -> bool:
    """Grounding check of an unedited sample (edits are checked against their parent's tool
    results by the verifier; a sample has no parent). An answer whose salient tokens
    (:mod:`etagent.salient`) all occur in the question, or a sample with a successful call
    (its answer comes from, or is computed from, its results), is grounded. A sample without
    any successful call is grounded only when the no-call samples of its group are mostly
    correct (a strict majority: the question is reliably answered without tools), so a lone
    correct no-call answer among wrong siblings -- a lucky guess -- is not SFT data."""
    from etagent.salient import salient_tokens

    if not (salient_tokens(traj.answer or "") - salient_tokens(question)):
        return True
    if any(not c.failed for c in traj.tool_calls):
        return True
    no_call = [t for t in group if not any(not c.failed for c in t.tool_calls)]
    right = sum(1 for t in no_call if is_correct(t))
    return 2 * right > len(no_call)


class Pool:
    """``grammar``: the run's (the de-duplication key and the ranking cost parse with it)."""

    def __init__(self, grammar: Grammar, trajectories: Iterable[Trajectory] = ()):
        self.grammar = grammar
        self._items: list[Trajectory] = []
        self._keys: set[tuple[str, str]] = set()
        for t in trajectories:
            self.add(t)

    def key(self, traj: Trajectory) -> tuple[str, str]:
        return traj.example_id, normalise_response(traj.response_text, self.grammar)

    def add(self, traj: Trajectory) -> bool:
        """Add unless an equal response for the same example is already there."""
        missing = [k for k in PROVENANCE_KEYS if k not in traj.meta]
        if missing:
            raise ValueError(f"pool record {traj.id!r} lacks provenance meta {missing}")
        k = self.key(traj)
        if k in self._keys:
            return False
        self._keys.add(k)
        self._items.append(traj)
        return True

    def __contains__(self, traj: Trajectory) -> bool:
        return self.key(traj) in self._keys

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Trajectory]:
        return iter(self._items)

    @property
    def trajectories(self) -> list[Trajectory]:
        return list(self._items)

    # ------------------------------------------------------------------ selection
    def select(self, max_per_question: int | None, grader: Grader, include_unedited: bool = True,
               require_grounded: bool = True) -> list[Trajectory]:
        """SFT data: correct (score >= ``grader``'s threshold, the flywheel's ``min_correct``; math
        scores are 0/1, QA is F1), format-valid and grounded (``meta['grounded']`` not False:
        unedited samples pass the loop's grounding check, see :func:`answer_grounded`)
        trajectories, best first per question."""
        by_q: dict[str, list[Trajectory]] = defaultdict(list)
        for t in self._items:
            # no domain here: the threshold rule (math scores are 0/1)
            if not grader.is_success(None, t.score) or t.format_errors:
                continue
            if not include_unedited and t.meta.get("strategy") == SAMPLE:
                continue
            if require_grounded and t.meta.get("grounded") is False:
                continue
            by_q[t.example_id].append(t)
        out: list[Trajectory] = []
        for qid in sorted(by_q):
            ranked = sorted(by_q[qid], key=lambda t: (cost(t.response_text, self.grammar), t.id))
            out.extend(ranked[:max_per_question] if max_per_question else ranked)
        return out

    # ------------------------------------------------------------------ io
    def save(self, path: str | os.PathLike) -> int:
        return write_jsonl(path, self._items)

    @classmethod
    def load(cls, path: str | os.PathLike, grammar: Grammar) -> "Pool":
        return cls(grammar, read_jsonl(path, Trajectory))
