"""One success policy: every success decision goes through the run's etagent.grading.Grader, whose
domain rules are config (``task.domains``): a new answer domain is a grading rule plus a config node."""

from __future__ import annotations

import random

import pytest

from etagent.evaluation.metrics import compute_metrics
from etagent.flywheel.pool import Pool
from etagent.grading import DomainRule, Grader, domain_rules
from etagent.records import Example, Trajectory
from etagent.rl.pareto import has_mixed_outcomes, pareto_select
from run_env import DOMAINS, GRAMMAR

CODE = DomainRule("code", ["exact_code"], binary=True, metric_fns={"exact_code": "code_domain.exact_code"})


def _traj(i: int, ex: Example, score: float, text: str = "<answer>x</answer>") -> Trajectory:
    return Trajectory(id=f"t{i}", example_id=ex.id, group_id=ex.id, response_text=text, score=score,
                      meta={"strategy": "sample", "round": 1, "parent_id": None})


def test_new_domain_is_graded_and_decided_everywhere():
    ex = Example("c1", "print one", ["print(1)"], "code", "toy")
    g = Grader({**DOMAINS, "code": CODE}, qa_metric="f1", qa_threshold=0.5)
    assert g.metric(ex) == "exact_code"  # the QA metric does not apply to code
    assert g.grade(ex, " print(1) ") == 1.0 and g.grade(ex, "print(2)") == 0.0 and g.grade(ex, None) == 0.0
    assert g.grade_text(ex, "<answer>\\boxed{print(1)}</answer>", GRAMMAR) == ("print(1)", 1.0)
    assert g.is_success("code", 1.0) and not g.is_success("code", 0.5)  # binary: the threshold does not apply
    # Pareto filter, flywheel pool, metrics: they all ask the grader they are given
    assert has_mixed_outcomes([0.0, 1.0], "code", g) and not has_mixed_outcomes([1.0, 1.0], "code", g)
    assert pareto_select([[0, 1], [1, 1]], [[0.0, 1.0], [1.0, 1.0]], 2, ["code", "code"], g) == [0]
    pool = Pool(GRAMMAR, [_traj(0, ex, 1.0), _traj(1, ex, 0.0, "<answer>y</answer>")])
    assert [t.id for t in pool.select(None, g.with_threshold(0.8))] == ["t0"]
    m = compute_metrics([_traj(0, ex, 1.0), _traj(1, ex, 0.0, "<answer>y</answer>")], {ex.id: ex},
                        grader=g, grammar=GRAMMAR)
    assert m["correctness"] == 0.5


def test_unknown_domain_and_bad_rules_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown domain 'code'"):
        Grader(DOMAINS, "f1", 0.75).is_success("code", 1.0)
    with pytest.raises(ValueError, match=r"domain 'code' needs known metrics.*\['bleu'\]"):
        DomainRule("code", ["bleu"], binary=False)
    with pytest.raises(ValueError, match=r"metric_fns\.exact: cannot import 'nowhere\.fn'"):
        DomainRule("code", ["exact"], binary=True, metric_fns={"exact": "nowhere.fn"})
    with pytest.raises(ValueError, match=r"task\.domains\.program: the rule is named 'code'"):
        domain_rules({"program": CODE})
    with pytest.raises(TypeError, match="binary"):
        DomainRule("code", ["exact_code"])  # noqa - required: say whether a score is 0/1
    with pytest.raises(TypeError, match="qa_threshold"):
        Grader(DOMAINS, "f1")  # noqa - the threshold is the run's, never a module default


def test_success_rules_are_the_former_ones():
    rng = random.Random(0)
    for _ in range(500):
        thr = rng.choice([0.5, 0.75, 0.8, 1.0])
        g = Grader(DOMAINS, "f1", qa_threshold=thr)
        math = [float(rng.randint(0, 1)) for _ in range(rng.randint(0, 4))]
        qa = [rng.choice([0.0, 0.5, 0.74, 0.75, 0.8, 1.0]) for _ in range(rng.randint(0, 4))]
        for v in qa:
            assert g.is_success("qa", v) == (v >= thr) == g.is_success(None, v)
        for v in math:
            assert g.is_success("math", v) == (v >= 1.0) == g.is_success(None, v)  # 0/1 scores: same rule
        assert g.mixed(math, "math") == (0.0 in math and 1.0 in math)
        assert g.mixed(qa, "qa") == (any(v >= thr for v in qa) and any(v < thr for v in qa))
    assert not Grader(DOMAINS, "f1", 0.75).mixed([0.5, 1.0], "math")  # math needs a 0 and a 1


def test_derived_graders_keep_the_rest():
    judge = object()
    g = Grader(DOMAINS, "em", 0.75, judge).with_threshold(0.8)
    assert (g.domains, g.qa_metric, g.qa_threshold, g.math_judge) == (DOMAINS, "em", 0.8, judge)
    m = g.with_metric("f1")
    assert (m.qa_metric, m.qa_threshold, m.math_judge) == ("f1", 0.8, judge)


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
    # the flag is the grader's call
    assert Grader(DOMAINS, "f1", 0.5).succeeded(t, ex) and not Grader(DOMAINS, "f1", 0.75).succeeded(t, ex)
