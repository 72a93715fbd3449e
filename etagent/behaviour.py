"""Label the four ineffective tool behaviours of a trajectory (paper section 2).

``label_behaviour(traj, example, group, grader=, grammar=)`` returns counts and flags:
``n_calls, n_redundant, n_aborted, n_budget, redundant, aborted, budget_refused,
insufficient, erroneous, method`` plus diagnostics ``n_useful``, ``redundant_calls``,
``aborted_calls`` and ``budget_calls`` (call indices). ``n_calls`` is
``Trajectory.n_calls(grammar)``: paired tags in the text (the official rule; a stray closer is no
call). A trajectory is "wrong" when the run's grader says ``is_success(domain, traj.score)`` is
false (math < 1; QA F1 below ``grading.qa_threshold``).

Calls are taken in order. A call is **aborted** when it ran and failed (tool error, timeout,
invalid call); a call refused by the tool budget is counted apart (``n_budget``: the model
asked for too many calls, nothing failed to execute). Neither is ever counted redundant.
A **duplicate** is an ok call with the same kind and canonical query (the tool's own
``ToolSpec.normalise_query``: python: all whitespace removed; search: lower-cased,
punctuation dropped, whitespace collapsed; a tool without its own: whitespace collapsed) as
an earlier ok call. Calls are recognised with the run's grammar (``grammar``, the rollout's).

Exact method (synthetic tasks: ``example.plan`` is a list of ``PlanStep``; each step's
``expect`` is the value it must surface). A plan step is satisfied once its ``expect``
appears in an ok result (numbers compared numerically, entities after QA normalisation
at word boundaries). Walking the calls:

* duplicate -> redundant;
* surfaces a still-unsatisfied step -> useful (those steps become satisfied);
* otherwise, if every step is already satisfied (always true for ``plan == []``) ->
  redundant (beyond what the plan needs);
* otherwise -> neither (an unproductive attempt while needs remain; it shows up as
  ``insufficient`` or ``erroneous`` if the answer is wrong).

``insufficient``: wrong answer and fewer plan steps satisfied than the plan has.
``erroneous``: wrong answer although every plan step was satisfied. For a wrong answer
exactly one of the two holds.

Heuristic method (real benchmarks, ``example.plan is None``):

* redundant: duplicates, and ok calls whose result is never used later -- none of the
  result's salient tokens (:mod:`etagent.salient`: canonical numbers, so ``1,234,567``
  matches ``1234567``, and content words of 3+ letters; those already in the call's query
  or the question do not count) appears in the later model
  text (reasoning, later calls, answer; tool results excluded). An ok call with an empty
  or salient-free result is unused too;
* aborted: as above (tool errors);
* insufficient: wrong answer and fewer ok calls than every correct sibling in ``group``
  used (in particular: no call at all on a question the group solved only with calls);
  False without a correct sibling; **None (n/a)** for a wrong answer without any sibling
  (one sample and no plan: nothing says which calls were needed);
* erroneous: wrong answer and not insufficient (None when insufficient is None).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from etagent import grading, protocol
from etagent.records import BUDGET, OK, Example, PlanStep, ToolCall, Trajectory
from etagent.salient import salient_tokens

EXACT, HEURISTIC = "exact", "heuristic"

_NUM_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# --------------------------------------------------------------------------- helpers


def normalise_query(kind: str, query: str, grammar: protocol.Grammar) -> str:
    """The canonical query key of a ``kind`` call: the tool's own ``ToolSpec.normalise_query``."""
    return grammar.canonical_query(kind, query)


def _as_number(s: str) -> float | None:
    try:
        return float(s.replace(",", "").strip())
    except ValueError:
        return None


def surfaces(result: str, expect: str) -> bool:
    """Whether a tool result shows the value a plan step must surface."""
    target = _as_number(str(expect))
    if target is not None:
        for m in _NUM_RE.finditer(result):
            v = _as_number(m.group(0))
            if v is not None and abs(v - target) <= 1e-9 * max(1.0, abs(target)):
                return True
        return False
    needle = grading.normalize_answer(expect)
    return bool(needle) and f" {needle} " in f" {grading.normalize_answer(result)} "


# one salient-token notion for labels, the flywheel's redundancy rule and its grounding check
_tokens = salient_tokens


def _salient(result: str, exclude: set[str]) -> set[str]:
    return salient_tokens(result) - exclude


def _later_texts(traj: Trajectory, grammar: protocol.Grammar) -> list[str]:
    """For each tool call, the model text that follows its result (results excluded).

    Calls are aligned with the parsed tool-call segments by order when the counts agree;
    otherwise each query is searched for in order in the response text.
    """
    segs = grammar.parse(traj.response_text).segments
    model = [(s.start, s.end, s.render()) for s in segs if s.kind != protocol.RESULT]
    calls = [s for s in segs if s.kind in grammar.tool_tags]

    def after(pos: int) -> str:
        return "".join(t[max(0, pos - st) :] if st < pos < en else t for st, en, t in model if en > pos)

    if len(calls) == len(traj.tool_calls):
        return [after(s.end) for s in calls]
    out, pos = [], 0
    for c in traj.tool_calls:
        i = traj.response_text.find(c.query, pos) if c.query else -1
        if i < 0:
            out.append(after(0))  # unknown position: the whole model text (lenient)
        else:
            pos = i + len(c.query)
            out.append(after(pos))
    return out


def _is_wrong(traj: Trajectory, example: Example, grader: grading.Grader) -> bool:
    return not grader.is_success(example.domain, float(traj.score))


# --------------------------------------------------------------------------- labelling


def _new_ok_calls(calls: Sequence[ToolCall], redundant: list[int], aborted: list[int], refused: list[int],
                  grammar: protocol.Grammar):
    """Yield (index, call) for calls that ran and repeat no earlier call; failed calls go to
    ``aborted``, calls refused by the budget to ``refused`` (a budget refusal is not a failed
    execution) and repeats (same kind + normalised query) to ``redundant``, in order."""
    seen: set[tuple[str, str]] = set()
    for i, c in enumerate(calls):
        if c.status == BUDGET:
            refused.append(i)
            continue
        if c.status != OK:
            aborted.append(i)
            continue
        key = (c.kind, grammar.canonical_query(c.kind, c.query))
        if key in seen:
            redundant.append(i)
            continue
        seen.add(key)
        yield i, c


def _label_calls_exact(calls: Sequence[ToolCall], plan: Sequence[PlanStep], refused: list[int],
                       grammar: protocol.Grammar) -> tuple[list[int], list[int], int, int]:
    """(redundant indices, aborted indices, n_useful, n_satisfied_steps); fills ``refused``."""
    needed = list(range(len(plan)))
    redundant: list[int] = []
    aborted: list[int] = []
    useful = 0
    for i, c in _new_ok_calls(calls, redundant, aborted, refused, grammar):
        hit = [j for j in needed if surfaces(c.result, plan[j].expect)]
        if hit:
            useful += 1
            needed = [j for j in needed if j not in hit]
        elif not needed:
            redundant.append(i)
    return redundant, aborted, useful, len(plan) - len(needed)


def _label_calls_heuristic(traj: Trajectory, question: str, refused: list[int],
                           grammar: protocol.Grammar) -> tuple[list[int], list[int], int]:
    later = _later_texts(traj, grammar)
    q_tokens = _tokens(question)
    redundant: list[int] = []
    aborted: list[int] = []
    useful = 0
    for i, c in _new_ok_calls(traj.tool_calls, redundant, aborted, refused, grammar):
        sal = _salient(c.result, q_tokens | _tokens(c.query))
        if sal and sal & _tokens(later[i]):
            useful += 1
        else:
            redundant.append(i)
    return redundant, aborted, useful


def label_behaviour(traj: Trajectory, example: Example, group: list[Trajectory] | None = None, *,
                    grader: grading.Grader, grammar: protocol.Grammar) -> dict[str, Any]:
    """Behaviour counts and flags of one trajectory (see module docstring)."""
    if traj.example_id and traj.example_id != example.id:
        raise ValueError(f"label_behaviour: trajectory {traj.id!r} is for {traj.example_id!r}, not {example.id!r}")
    wrong = _is_wrong(traj, example, grader)
    refused: list[int] = []
    insufficient: bool | None
    erroneous: bool | None
    if example.plan is not None:
        redundant, aborted, useful, satisfied = _label_calls_exact(traj.tool_calls, example.plan, refused, grammar)
        complete = satisfied == len(example.plan)
        insufficient, erroneous, method = wrong and not complete, wrong and complete, EXACT
    else:
        redundant, aborted, useful = _label_calls_heuristic(traj, example.question, refused, grammar)
        siblings = [t for t in group or [] if t is not traj and (not t.id or t.id != traj.id)]
        if not wrong:
            insufficient = erroneous = False
        elif not siblings:
            insufficient = erroneous = None  # one sample, no plan: nothing to compare with (n/a)
        else:
            ok_calls = traj.n_ok
            solved = [t.n_ok for t in siblings if not _is_wrong(t, example, grader)]
            insufficient = bool(solved) and ok_calls < min(solved)
            erroneous = not insufficient
        method = HEURISTIC
    return {
        "n_calls": traj.n_calls(grammar),
        "n_redundant": len(redundant),
        "n_aborted": len(aborted),
        "n_budget": len(refused),
        "n_useful": useful,
        "redundant": bool(redundant),
        "aborted": bool(aborted),
        "budget_refused": bool(refused),
        "insufficient": insufficient if insufficient is None else bool(insufficient),
        "erroneous": erroneous if erroneous is None else bool(erroneous),
        "method": method,
        "redundant_calls": redundant,
        "aborted_calls": aborted,
        "budget_calls": refused,
    }


def label_group(group: list[Trajectory], example: Example, *, grader: grading.Grader,
                grammar: protocol.Grammar) -> list[dict[str, Any]]:
    """Label every trajectory of a group (siblings inform the heuristic) and store it."""
    out = []
    for t in group:
        t.behaviour = label_behaviour(t, example, group, grader=grader, grammar=grammar)
        out.append(t.behaviour)
    return out
