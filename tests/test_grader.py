"""One success policy: every success decision goes through etagent.grading.Grader, and a new
answer domain is one registration in the grader (no other module changes)."""

from __future__ import annotations

import random

import pytest

from etagent import grading
from etagent.evaluation.metrics import compute_metrics
from etagent.flywheel.pool import Pool
from etagent.grading import DomainRule, Grader
from etagent.records import Example, Trajectory
from etagent.rl.pareto import has_mixed_outcomes, pareto_select


@pytest.fixture
def code_domain():
    """A "code" domain graded by exact string match, registered in the grader only."""
    saved = (dict(grading.DOMAIN_RULES), dict(grading.METRIC_FNS), dict(grading.DEFAULT_METRIC))
    grading.register_domain(DomainRule("code", ("exact",), binary=True),
                            {"exact": lambda pred, golds: float(pred.strip() in [g.strip() for g in golds])})
    yield
    for live, old in zip((grading.DOMAIN_RULES, grading.METRIC_FNS, grading.DEFAULT_METRIC), saved):
        live.clear()
        live.update(old)


def _traj(i: int, ex: Example, score: float, text: str = "<answer>x</answer>") -> Trajectory:
    return Trajectory(id=f"t{i}", example_id=ex.id, group_id=ex.id, response_text=text, score=score,
                      meta={"strategy": "sample", "round": 1, "parent_id": None})


def test_new_domain_is_graded_and_decided_everywhere(code_domain):
    ex = Example("c1", "print one", ["print(1)"], "code", "toy")
    g = Grader(qa_metric="f1", qa_threshold=0.5)
    assert g.metric(ex) == "exact"  # the QA metric does not apply to code
    assert g.grade(ex, " print(1) ") == 1.0 and g.grade(ex, "print(2)") == 0.0 and g.grade(ex, None) == 0.0
    assert g.grade_text(ex, "<answer>\\boxed{print(1)}</answer>") == ("print(1)", 1.0)
    assert g.is_success("code", 1.0) and not g.is_success("code", 0.5)  # binary: the threshold does not apply
    # Pareto filter, flywheel pool, metrics: no change outside the grader
    assert has_mixed_outcomes([0.0, 1.0], "code") and not has_mixed_outcomes([1.0, 1.0], "code")
    assert pareto_select([[0, 1], [1, 1]], [[0.0, 1.0], [1.0, 1.0]], 2, domains=["code", "code"]) == [0]
    pool = Pool([_traj(0, ex, 1.0), _traj(1, ex, 0.0, "<answer>y</answer>")])
    assert [t.id for t in pool.select(min_correct=0.8)] == ["t0"]
    m = compute_metrics([_traj(0, ex, 1.0), _traj(1, ex, 0.0, "<answer>y</answer>")], {ex.id: ex}, policy=g)
    assert m["correctness"] == 0.5


def test_unknown_domain_is_refused_by_name():
    with pytest.raises(ValueError, match="domain must be one of"):
        Example("c1", "q", ["a"], "code", "toy")
    with pytest.raises(ValueError, match="unknown domain 'code'"):
        Grader().is_success("code", 1.0)
    with pytest.raises(ValueError, match="needs registered metrics"):
        grading.register_domain(DomainRule("code", ("bleu",)))


def test_success_rules_are_the_former_ones():
    rng = random.Random(0)
    for _ in range(500):
        thr = rng.choice([0.5, 0.75, 0.8, 1.0])
        g = Grader(qa_threshold=thr)
        math = [float(rng.randint(0, 1)) for _ in range(rng.randint(0, 4))]
        qa = [rng.choice([0.0, 0.5, 0.74, 0.75, 0.8, 1.0]) for _ in range(rng.randint(0, 4))]
        for v in qa:
            assert g.is_success("qa", v) == (v >= thr) == g.is_success(None, v)
        for v in math:
            assert g.is_success("math", v) == (v >= 1.0) == g.is_success(None, v)  # 0/1 scores: same rule
        assert g.mixed(math, "math") == (0.0 in math and 1.0 in math)
        assert g.mixed(qa, "qa") == (any(v >= thr for v in qa) and any(v < thr for v in qa))
    assert not Grader().mixed([0.5, 1.0], "math")  # math needs a 0 and a 1


def test_with_threshold_keeps_metric_and_judge():
    judge = object()
    g = Grader("em", 0.75, judge).with_threshold(0.8)
    assert (g.qa_metric, g.qa_threshold, g.math_judge) == ("em", 0.8, judge)
    assert grading.GradingPolicy is Grader


def test_records_written_before_the_rename_still_read(tmp_path):
    from etagent.records import read_jsonl, write_jsonl

    old = ('{"id": "t0", "example_id": "e", "group_id": "e", "response_text": "x", "correct": 0.6, '
           '"finish_reason": "answer"}\n')
    (tmp_path / "old.jsonl").write_text(old)
    (t,) = read_jsonl(tmp_path / "old.jsonl", Trajectory)
    assert t.score == 0.6 and not hasattr(t, "correct")
    write_jsonl(tmp_path / "new.jsonl", [t])
    text = (tmp_path / "new.jsonl").read_text()
    assert '"score": 0.6' in text and '"correct"' not in text
    assert Trajectory.from_json(text) == t
    ex = Example("e", "q", ["a"], "qa", "toy")
    assert Grader(qa_threshold=0.5).succeeded(t, ex) and not Grader().succeeded(t, ex)  # the flag: the grader's call
