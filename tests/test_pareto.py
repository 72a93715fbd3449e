"""Pareto selection: equal to a straight O(N^2) NSGA-II reference (the official procedure) on
random inputs with many ties, plus hand-checked cases and the samplers."""

from __future__ import annotations

import random

import numpy as np
import pytest

from etagent.rl.pareto import crowding_order, front_ranks, has_mixed_outcomes, pareto_rank, pareto_select
from etagent.rl.sampling import AllSampler, ParetoSampler, RandomSampler
from run_env import GRADER

# --------------------------------------------------------------------------- reference


def reference_rank(a: list[float], b: list[float], count: int) -> tuple[list[int], list[int], dict[int, int]]:
    """Deb's fast non-dominated sort + crowding cut, step by step like the official script.

    Returns (whole-front part in peeling order, cut part in crowding order, rank of each point).
    """
    n = len(a)
    dominated: list[list[int]] = [[] for _ in range(n)]
    dom_count = [0] * n
    fronts: list[list[int]] = [[]]
    for p in range(n):
        for q in range(n):
            if p == q:
                continue
            if a[p] >= a[q] and b[p] >= b[q] and (a[p] > a[q] or b[p] > b[q]):
                dominated[p].append(q)
            elif a[q] >= a[p] and b[q] >= b[p] and (a[q] > a[p] or b[q] > b[p]):
                dom_count[p] += 1
        if dom_count[p] == 0:
            fronts[0].append(p)
    i = 0
    while fronts[i]:
        nxt = []
        for p in fronts[i]:
            for q in dominated[p]:
                dom_count[q] -= 1
                if dom_count[q] == 0:
                    nxt.append(q)
        i += 1
        if not nxt:
            break
        fronts.append(nxt)
    rank = {p: f for f, front in enumerate(fronts) for p in front}
    whole: list[int] = []
    tail: list[int] = []
    needed = count
    for front in fronts:
        if needed <= 0:
            break
        if len(front) <= needed:
            whole.extend(front)
            needed -= len(front)
            continue
        items = [{"i": p, "a": a[p], "b": b[p], "d": 0.0} for p in front]
        for key in ("a", "b"):
            items.sort(key=lambda x: x[key])
            lo, hi = items[0][key], items[-1][key]
            scale = hi - lo
            if scale == 0:
                continue
            items[0]["d"] = float("inf")
            items[-1]["d"] = float("inf")
            for j in range(1, len(items) - 1):
                items[j]["d"] += (items[j + 1][key] - items[j - 1][key]) / scale
        items.sort(key=lambda x: x["d"], reverse=True)
        tail = [x["i"] for x in items[:needed]]
        needed = 0
    return whole, tail, rank


def reference_select(tool_counts, correctness, count, domains, thr=0.75) -> tuple[list[int], list[int], dict]:
    a = [float(np.var(t)) if len(t) else 0.0 for t in tool_counts]
    b = [float(np.var(c)) if len(c) else 0.0 for c in correctness]
    whole, tail, rank = reference_rank(a, b, count)

    def keep(i):
        vals = correctness[i]
        if domains is not None and domains[i] == "math":
            return any(v == 0 for v in vals) and any(v == 1 for v in vals)
        return any(v >= thr for v in vals) and any(v < thr for v in vals)

    return [i for i in whole if keep(i)], [i for i in tail if keep(i)], rank


def canonical(whole: list[int], tail: list[int], rank: dict[int, int]) -> list[int]:
    """Whole fronts listed by (front, index) -- our documented order -- then the cut part."""
    return sorted(whole, key=lambda i: (rank[i], i)) + tail


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_integer_objectives_with_ties(seed):
    rng = random.Random(seed)
    for _ in range(250):
        n = rng.randint(0, 40)
        hi = rng.choice([1, 2, 3, 5, 20])
        a = [float(rng.randint(0, hi)) for _ in range(n)]
        b = [float(rng.randint(0, hi)) for _ in range(n)]
        count = rng.randint(0, n + 2)
        whole, tail, rank = reference_rank(a, b, count)
        assert pareto_rank(a, b, count) == canonical(whole, tail, rank), (a, b, count)
        ranks = front_ranks(np.array(a), np.array(b))
        assert [rank[i] for i in range(n)] == ranks.tolist()


def test_matches_reference_on_real_valued_objectives():
    rng = np.random.default_rng(7)
    for _ in range(150):
        n = int(rng.integers(1, 80))
        a = rng.random(n).round(int(rng.integers(1, 4))).tolist()
        b = rng.random(n).tolist()
        count = int(rng.integers(0, n + 1))
        whole, tail, rank = reference_rank(a, b, count)
        assert pareto_rank(a, b, count) == canonical(whole, tail, rank)


@pytest.mark.parametrize("seed", range(3))
def test_pareto_select_matches_reference_end_to_end(seed):
    rng = random.Random(100 + seed)
    for _ in range(150):
        n = rng.randint(1, 50)
        k = rng.choice([2, 4, 8])
        tools = [[rng.randint(0, 3) for _ in range(k)] for _ in range(n)]
        domains = [rng.choice(["math", "qa"]) for _ in range(n)]
        corr = [
            [float(rng.randint(0, 1)) for _ in range(k)]
            if d == "math"
            else [rng.choice([0.0, 0.5, 0.75, 0.8, 1.0]) for _ in range(k)]
            for d in domains
        ]
        count = rng.randint(0, n)
        whole, tail, rank = reference_select(tools, corr, count, domains)
        assert pareto_select(tools, corr, count, domains, GRADER) == canonical(whole, tail, rank)


def test_ragged_groups_match_reference():
    rng = random.Random(3)
    tools = [[rng.randint(0, 4) for _ in range(rng.randint(0, 6))] for _ in range(40)]
    corr = [[float(rng.randint(0, 1)) for _ in range(rng.randint(0, 6))] for _ in range(40)]
    whole, tail, rank = reference_select(tools, corr, 17, None)
    assert pareto_select(tools, corr, 17, None, GRADER) == canonical(whole, tail, rank)


# --------------------------------------------------------------------------- hand-checked


def test_hand_example_fronts_crowding_and_filter():
    # variances: q0 (1,0.25) q1 (0.25,0.25) q2 (0,0.25) q3 (2.25,0) q4 (0,0) q5 (0.25,0.25)
    tools = [[0, 2], [0, 1], [1, 1], [0, 3], [2, 2], [1, 2]]
    corr = [[0, 1], [1, 0], [0, 1], [1, 1], [0, 0], [0, 1]]
    # front 0: q0, q3 ; front 1: q1, q5 (identical) ; front 2: q2 (dominated by q1) ; front 3: q4
    assert front_ranks(np.array([1, 0.25, 0, 2.25, 0, 0.25]), np.array([0.25] * 3 + [0, 0, 0.25])).tolist() == [
        0, 1, 2, 0, 3, 1,
    ]
    # count 3: front 0 whole (q0, q3), then one of front 1 by crowding: both objectives have
    # zero range there -> all distances 0 -> index order -> q1.
    assert pareto_select(tools, corr, 3, None, None, filter_mixed=False) == [0, 3, 1]
    # filter: q3 all correct -> dropped
    assert pareto_select(tools, corr, 3, None, GRADER) == [0, 1]
    assert pareto_select(tools, corr, 4, None, GRADER) == [0, 1, 5]
    assert pareto_select(tools, corr, 100, None, None, filter_mixed=False) == [0, 3, 1, 5, 2, 4]
    with pytest.raises(ValueError, match="needs the run's grader"):
        pareto_select(tools, corr, 3, None, None)


def test_hand_example_crowding_cut():
    # one front of 4 points on a trade-off: (0,3) (1,2) (2,1.5) (3,0); keep 3
    a, b = [0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.5, 0.0]
    # a range 3: ends q0,q3 inf; q1 += (2-0)/3, q2 += (3-1)/3 ; b range 3: ends inf;
    # q2 += (2-0)/3 = 4/3, q1 += (3-1.5)/3 = 1/6 -> q1 0.8333, q2 1.3333 -> q0, q3, q2
    # exact order: after the b sort the list is q3 (0), q2, q1, q0 ; stable desc -> q3, q0, q2
    assert pareto_rank(a, b, 3) == [3, 0, 2]


def test_crowding_zero_range_objective_adds_nothing():
    a = np.array([1.0, 1.0, 1.0, 1.0])
    b = np.array([3.0, 1.0, 2.0, 0.0])  # not a real front, but exercises the arithmetic
    # a has zero range: no boundary. b sorted: 3(0.0),1(1.0),2(2.0),0(3.0); boundaries 3,0 inf;
    # interior 1: (2-0)/3, 2: (3-1)/3 -> equal -> stable: 1 before 2
    assert crowding_order(np.arange(4), a, b).tolist() == [3, 0, 1, 2]


def test_mixed_outcome_rules():
    assert has_mixed_outcomes([0, 1, 1], "math", GRADER)
    assert not has_mixed_outcomes([0.5, 1], "math", GRADER)
    assert has_mixed_outcomes([0.5, 1], "qa", GRADER)
    assert not has_mixed_outcomes([0.75, 0.9], "qa", GRADER)
    assert has_mixed_outcomes([0.74, 0.75], "qa", GRADER)
    assert not has_mixed_outcomes([], "qa", GRADER)
    with pytest.raises(ValueError, match="unknown domain"):
        has_mixed_outcomes([0, 1], "code", GRADER)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="tool_counts has 2 questions but correctness has 1"):
        pareto_select([[1], [2]], [[1]], 1, None, GRADER)
    with pytest.raises(ValueError, match="non-finite"):
        pareto_select([[1, float("nan")]], [[1, 0]], 1, None, GRADER)
    with pytest.raises(ValueError, match="domains has 1 entries"):
        pareto_select([[1], [2]], [[1], [0]], 1, ["math"], GRADER)


def test_empty_and_zero_count():
    assert pareto_select([], [], 5, None, GRADER) == []
    assert pareto_select([[1, 2]], [[0, 1]], 0, None, GRADER) == []


# --------------------------------------------------------------------------- samplers


def test_samplers():
    tools = [[0, 2], [0, 1], [1, 1], [0, 3], [2, 2], [1, 2]]
    corr = [[0, 1], [1, 0], [0, 1], [1, 1], [0, 0], [0, 1]]
    assert ParetoSampler(count=4, qa_threshold=0.75).select(tools, corr, None, GRADER) == [0, 1, 5]
    assert AllSampler(qa_threshold=0.75).select(tools, corr, None, GRADER) == list(range(6))
    assert AllSampler(qa_threshold=0.75, filter_mixed=True).select(tools, corr, None, GRADER) == [0, 1, 2, 5]
    r1 = RandomSampler(count=3, qa_threshold=0.75, seed=1).select(tools, corr, None, GRADER)
    assert r1 == RandomSampler(count=3, qa_threshold=0.75, seed=1).select(tools, corr, None, GRADER)
    assert len(r1) == 3 and len(set(r1)) == 3 and all(0 <= i < 6 for i in r1)
    r2 = RandomSampler(count=10, qa_threshold=0.75, seed=0, filter_mixed=True).select(tools, corr, None, GRADER)
    assert sorted(r2) == [0, 1, 2, 5]
    # the sampler's own threshold applies to the run's grader (QA: 0.6 mixed only below 0.75)
    qa = [[0.6, 0.9], [0.6, 0.7]]
    assert AllSampler(qa_threshold=0.75, filter_mixed=True).select([[0, 1]] * 2, qa, ["qa", "qa"], GRADER) == [0]
    assert AllSampler(qa_threshold=0.65, filter_mixed=True).select([[0, 1]] * 2, qa, ["qa", "qa"], GRADER) == [0, 1]


def test_sampling_configs_instantiate():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "sampling"
    for name, cls in (("pareto", ParetoSampler), ("random", RandomSampler), ("all", AllSampler)):
        root = OmegaConf.create({"seed": 3, "grading": {"qa_threshold": 0.75}, "sampling": OmegaConf.load(conf / f"{name}.yaml")})
        sampler = instantiate(root.sampling)
        assert isinstance(sampler, cls)
    assert instantiate(OmegaConf.create({"seed": 3, "grading": {"qa_threshold": 0.75}, "s": OmegaConf.load(conf / "random.yaml")}).s).seed == 3
