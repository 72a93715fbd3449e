"""Group-wise Pareto selection of RL training questions (method-spec section 5).

For each question we have the K rollouts of the current policy. Two objectives, both
maximised: the population variance of the rollouts' tool-call counts (calls that ran:
``Trajectory.n_executed``, as the released code counts executed calls) and the population
variance of their correctness. Questions are taken front by front of the non-dominated
sort (NSGA-II); the front that does not fit in ``count`` is cut by crowding distance,
largest first; finally questions whose rollouts all succeed or all fail are dropped
(math: needs a 0 and a 1; QA: needs a score >= ``qa_threshold`` and one below it).

Same selection as the official ``pareto/data_process.py`` (an O(N^2) Deb-style sort),
computed in O(N log N) for two objectives:

* Fronts: a sweep over the points sorted by (tool variance desc, correctness variance
  desc). Within a front the correctness variance increases along the sweep, so each
  front is summarised by its last point; a point belongs to the first front whose last
  point does not dominate it (binary search). Identical points never dominate each
  other and share a front, as in the official code.
* Crowding distance of the cut front exactly as the official code computes it: the
  front list is sorted stably by tool variance, then stably by correctness variance;
  per objective with non-zero range the first and last points get +inf and interior
  points add (next - previous) / range; then a stable sort by distance, largest first.

Tie-breaking (explicit, stable by index). A stable sort only ever needs a tie-break
among points with the *same* two objective values, and those have the same dominators,
so the official peeling loop lists them in index order in every front. We therefore
start every front in ascending question index; the selected set and the order of the
cut front are then the official ones on any input, ties included.

Ranking of the result: fronts in order; inside a front taken whole, ascending question
index; then the cut part of the overflowing front in crowding order. (The official loop
lists a whole front 1, 2, ... in the order its peeling discovers it -- an artefact that
never changes which questions are selected; we list by index instead.)

Departures: the mixed-outcome filter runs after the ``count`` cut, as in the official
code, so fewer than ``count`` questions may come back; pass a larger ``count`` or use
``filter_mixed=False`` to change that. Success and failure are the run's grader's (its domain
rules and threshold); ``domains=None`` applies the threshold rule, which on 0/1 correctness is
the math rule.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

import numpy as np

from etagent.grading import Grader


# --------------------------------------------------------------------------- objectives


def group_variances(values: Sequence[Sequence[float]], name: str = "values") -> np.ndarray:
    """Population variance (ddof 0, like ``np.var``) of each question's rollout values.

    An empty group has variance 0 (official behaviour). Rectangular input is computed in
    one vectorised call; ragged input row by row.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        arr = None  # ragged
    if arr is not None and arr.ndim == 2:
        if arr.shape[1] == 0:
            return np.zeros(n, dtype=np.float64)
        _check_finite(arr, name)
        return arr.var(axis=1)
    if arr is not None and arr.ndim != 2:
        raise ValueError(f"pareto: {name} must be a sequence of per-question sequences, got shape {arr.shape}")
    out = np.zeros(n, dtype=np.float64)
    for i, row in enumerate(values):
        r = np.asarray(row, dtype=np.float64)
        if r.ndim != 1:
            raise ValueError(f"pareto: {name}[{i}] must be a flat sequence of numbers")
        _check_finite(r, f"{name}[{i}]")
        out[i] = r.var() if r.size else 0.0
    return out


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"pareto: {name} contains a non-finite value")


# --------------------------------------------------------------------------- sorting


def front_ranks(obj_a: np.ndarray, obj_b: np.ndarray) -> np.ndarray:
    """Non-dominated front index (0 = best) of every point; both objectives maximised.

    O(N log N): sweep by (a desc, b desc); each front keeps the lexicographic key
    (b, a) of its last point, which is non-increasing over fronts; a point joins the first
    front whose key is <= its own (that front's last point does not dominate it).
    """
    a = np.asarray(obj_a, dtype=np.float64)
    b = np.asarray(obj_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pareto: objectives must be two 1-D arrays of equal length, got {a.shape} and {b.shape}")
    n = a.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    _check_finite(a, "objective 1")
    _check_finite(b, "objective 2")
    # why: identical points share a front, so only distinct (a, b) pairs need the sweep
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    key = ib.astype(np.int64) * len(ua) + ia  # lexicographic (b, a) as one integer
    ukey, inv = np.unique(key, return_inverse=True)
    ka, kb = ukey % len(ua), ukey // len(ua)
    sweep = np.lexsort((-kb, -ka))  # a desc, then b desc
    neg_last: list[int] = []  # -key of each front's last point, non-decreasing
    urank = np.empty(len(ukey), dtype=np.int64)
    for u in sweep.tolist():
        nk = -int(ukey[u])
        f = bisect_left(neg_last, nk)  # first front with key <= this key
        if f == len(neg_last):
            neg_last.append(nk)
        else:
            neg_last[f] = nk
        urank[u] = f
    return urank[inv.reshape(-1)]


def crowding_order(members: np.ndarray, obj_a: np.ndarray, obj_b: np.ndarray) -> np.ndarray:
    """``members`` (one front, in front order) re-ordered by crowding distance, largest first.

    Reproduces the official computation step by step (stable sorts, +inf boundaries only
    for objectives with non-zero range, float operations in the same order).
    """
    cur = np.asarray(members, dtype=np.int64)
    dist = np.zeros(cur.size, dtype=np.float64)
    for obj in (obj_a, obj_b):
        perm = np.argsort(obj[cur], kind="stable")
        cur, dist = cur[perm], dist[perm]
        v = obj[cur]
        scale = v[-1] - v[0] if cur.size else 0.0
        if scale == 0:
            continue  # official: the sort still happens, the objective adds nothing
        dist[0] = np.inf
        dist[-1] = np.inf
        dist[1:-1] += (v[2:] - v[:-2]) / scale
    return cur[np.argsort(-dist, kind="stable")]


def pareto_rank(obj_a: Sequence[float], obj_b: Sequence[float], count: int) -> list[int]:
    """Indices of the ``count`` best points by NSGA-II (fronts, then crowding), ranked.

    No outcome filter: this is the objective-level core of :func:`pareto_select`.
    """
    a = np.asarray(obj_a, dtype=np.float64)
    b = np.asarray(obj_b, dtype=np.float64)
    ranks = front_ranks(a, b)
    n = ranks.size
    if count <= 0 or n == 0:
        return []
    if count >= n:
        return np.lexsort((np.arange(n), ranks)).tolist()
    sizes = np.bincount(ranks)
    cum = np.cumsum(sizes)
    cut = int(np.searchsorted(cum, count, side="right"))  # first front that does not fit whole
    whole = np.flatnonzero(ranks < cut)
    whole = whole[np.argsort(ranks[whole], kind="stable")]  # by front, index inside
    need = count - whole.size
    if need == 0:
        return whole.tolist()
    front = np.flatnonzero(ranks == cut)  # ascending index = official order among ties
    tail = crowding_order(front, a, b)[:need]
    return whole.tolist() + tail.tolist()


# --------------------------------------------------------------------------- entry point


def has_mixed_outcomes(values: Sequence[float], domain: str | None, grader: Grader) -> bool:
    """Whether a question's rollouts both succeed and fail (official filter), by ``grader``'s
    rule of ``domain`` (None: the threshold rule)."""
    return grader.mixed(values, domain)


def mixed_only(
    indices: Sequence[int],
    correctness: Sequence[Sequence[float]],
    domains: Sequence[str] | None,
    grader: Grader,
) -> list[int]:
    """The ``indices`` (order kept) whose question has mixed outcomes (:func:`has_mixed_outcomes`)."""
    return [i for i in indices if has_mixed_outcomes(correctness[i], None if domains is None else domains[i], grader)]


def pareto_select(
    tool_counts: Sequence[Sequence[float]],
    correctness: Sequence[Sequence[float]],
    count: int,
    domains: Sequence[str] | None,
    grader: Grader | None,
    filter_mixed: bool = True,
) -> list[int]:
    """Select up to ``count`` informative questions, ranked (see module docstring).

    ``tool_counts[i]`` / ``correctness[i]``: per-rollout executed tool calls and correctness
    (math 0/1, QA F1) of question ``i``; ``domains[i]``: its answer domain; ``grader``: the
    run's, at the sampler's threshold (needed when ``filter_mixed``).
    """
    if len(tool_counts) != len(correctness):
        raise ValueError(
            f"pareto_select: tool_counts has {len(tool_counts)} questions but correctness has {len(correctness)}"
        )
    if domains is not None and len(domains) != len(correctness):
        raise ValueError(f"pareto_select: domains has {len(domains)} entries for {len(correctness)} questions")
    if int(count) != count:
        raise ValueError(f"pareto_select: count must be an integer, got {count!r}")
    var_tool = group_variances(tool_counts, "tool_counts")
    var_corr = group_variances(correctness, "correctness")
    ranked = pareto_rank(var_tool, var_corr, int(count))
    if not filter_mixed:
        return ranked
    if grader is None:
        raise ValueError("pareto_select: filter_mixed needs the run's grader (what counts as a success)")
    return mixed_only(ranked, correctness, domains, grader)
