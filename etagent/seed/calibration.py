"""The mechanism world's teacher (``seed_agent=calibration``): flaws that depend on the question type.

A seed agent imitates its teacher's *mode* per context at greedy decoding, so a flaw injected
at a rate below 0.5 at one decision point mostly vanishes in the greedy seed, while a rate above
0.5 makes it the seed's habit. This teacher therefore takes flaw rates **per question type**
(``rates.<type>``, every type of the world named, no fallback) and, where a flaw should show at
greedy, sets it above 0.5 while keeping 30-45 % of the good behaviour in the data (so
temperature-1 sampling still finds it for the flywheel and RL). The defaults
(``conf/seed_agent/calibration.yaml``): it re-checks easy one-call questions (a python
"verification", a repeated search: redundant, 2 calls where 1 is needed) and stops one call
short on the long ones (a 3-hop chain after the second hop, a search-then-compute question
before the python call: insufficient, a guessed answer).

Per trajectory, with ``r = rates[type]`` (the same dataclass as the default teacher's,
:class:`etagent.seed.teacher.FlawRates`):

* ``insufficient`` (plan non-empty): stop **one call short** of the plan and guess (a 1-call
  plan: answer without a call);
* ``erroneous`` (excludes insufficient): every needed result present, the written answer wrong;
* ``redundant``: after the needed calls, ``1 + k`` unneeded ones (each further one with chance
  ``redundant_extra``, at most 3): a repeat of the last call ("Let me verify." / "Let me check
  again."), or on a question with an empty plan a call that only restates what is known
  (the famous fact's search, a search for the stated name, ``print(<n>)``);
* ``aborted``: a malformed call (python syntax error, empty search) right before a needed call,
  then the corrected call.

Every result is the real tool's output (executed through the run's ``ToolSet``); randomness is
keyed by (seed, example id, sample index). Output rows have the default teacher's schema, so
the seed stage, ``teacher_stats.json`` and the world checks read them unchanged.
"""

from __future__ import annotations

import random
from dataclasses import fields
from typing import Any, Mapping, Sequence

from etagent.records import QA, Example
from etagent.seed.teacher import (
    ABORTED,
    NEEDED,
    REDUNDANT,
    FlawRates,
    _Call,
    _execute,
    _malformed,
    _Script,
    _wrong_answer,
    teacher_row,
)


def _thought(kind: str, query: str, first: bool) -> str:
    if kind == "python":
        return "I will compute this with Python."
    return f"I need to search for {query}." if first else f"Now I search for {query}."


def _unneeded_call(ex: Example) -> tuple[str, str]:
    """A call on a question the model should answer directly: print the stated number, or
    search the famous fact it knows."""
    if ex.domain != QA:
        return "python", f"print({ex.answer})"
    from etagent.data.synthetic.calibration import RELATIONS, query

    entity, relation = str(ex.meta["entities"][0]), str(ex.meta.get("relation"))
    return "search", query(entity, relation) if relation in RELATIONS else entity


def script(ex: Example, r: FlawRates, rng: random.Random) -> _Script:
    """The calls and the answer of one teacher trajectory (module docstring)."""
    plan = list(ex.plan or [])
    sc = _Script()
    u = rng.random()
    insufficient = bool(plan) and u < r.insufficient
    erroneous = not insufficient and u < (r.insufficient if plan else 0.0) + r.erroneous
    keep = len(plan) - 1 if insufficient else len(plan)
    if insufficient:
        sc.flaws.add("insufficient")
        sc.missing = len(plan) - keep
    for i, step in enumerate(plan[:keep]):
        sc.calls.append(_Call(step.tool, step.query, NEEDED, _thought(step.tool, step.query, i == 0)))
    if keep == 0:
        sc.opening = "I know this." if not plan else "I can answer this without a tool."
    if rng.random() < r.redundant and (not plan or keep > 0):
        sc.flaws.add("redundant")
        n_extra = 1
        while n_extra < 3 and rng.random() < r.redundant_extra:
            n_extra += 1
        for j in range(n_extra):
            if not plan:
                kind, q = _unneeded_call(ex)
                think = "Let me check with a tool." if j == 0 else "Let me check again."
            elif plan[keep - 1].tool == "python":
                # the same code again: a re-written (swapped) expression is a new chance to miscopy an
                # operand, which would make the redundant call cost correctness too (measured, WORLD.md)
                kind, q = "python", plan[keep - 1].query
                think = "Let me verify."
            else:
                kind, q = "search", plan[keep - 1].query
                think = "Let me check again."
            sc.calls.append(_Call(kind, q, REDUNDANT, think))
    if sc.calls and rng.random() < r.aborted:
        sc.flaws.add("aborted")
        needed = [i for i, c in enumerate(sc.calls) if c.role == NEEDED] or list(range(len(sc.calls)))
        j = rng.choice(needed)
        target = sc.calls[j]
        sc.calls.insert(j, _Call(target.kind, _malformed(rng, target.kind, target.query), ABORTED, target.think,
                                 after="That failed. Let me fix it."))
        target.think = ""
    if insufficient:
        bridge = plan[keep - 1].expect if keep and ex.domain == QA else None
        sc.answer = _wrong_answer(rng, ex, guess=True, bridge=bridge)
    elif erroneous:
        sc.flaws.add("erroneous")
        bridge = plan[-2].expect if len(plan) > 1 and ex.domain == QA else None
        sc.answer = _wrong_answer(rng, ex, guess=False, bridge=bridge)
    else:
        sc.answer = ex.answer
    return sc


class CalibrationTeacher:
    """Config wrapper (``conf/seed_agent/calibration.yaml``): per-type flaw rates (module docstring)."""

    def __init__(self, rates: Mapping[str, Mapping[str, Any]], samples_per_example: int = 1, seed: int = 0) -> None:
        if samples_per_example < 1:
            raise ValueError(f"seed_agent.samples_per_example must be >= 1, got {samples_per_example}")
        known = [f.name for f in fields(FlawRates)]
        self.rates: dict[str, FlawRates] = {}
        for qtype, r in (rates or {}).items():
            unknown = sorted(set(r) - set(known))
            if unknown:
                raise ValueError(f"seed_agent.rates.{qtype}: unknown keys {unknown} (known: {known})")
            self.rates[str(qtype)] = FlawRates(**{str(k): float(v) for k, v in r.items()})
        if not self.rates:
            raise ValueError("seed_agent.rates: give the flaw rates of every question type")
        self.samples_per_example = int(samples_per_example)
        self.seed = int(seed)

    def write(self, examples: Sequence[Example], toolset: Any) -> list[dict]:
        """One row per (example, sample), the schema of :func:`etagent.seed.teacher.write_teacher_trajectories`."""
        scripts: list[tuple[Example, int, _Script]] = []
        for ex in examples:
            qtype = ex.meta.get("type")
            if ex.plan is None:
                raise ValueError(f"teacher: example {ex.id} has no plan (only synthetic tasks carry plans)")
            if qtype not in self.rates:
                raise ValueError(f"seed_agent.rates has no entry for question type {qtype!r} (example {ex.id}); "
                                 f"configured: {sorted(self.rates)}")
            for k in range(self.samples_per_example):
                rng = random.Random(f"teacher:{self.seed}:{ex.id}:{k}")
                scripts.append((ex, k, script(ex, self.rates[qtype], rng)))
        results = _execute(toolset, [(c.kind, c.query) for _, _, sc in scripts for c in sc.calls])
        return [teacher_row(ex, k, sc, results, toolset.grammar) for ex, k, sc in scripts]
