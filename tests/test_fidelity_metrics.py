"""Method fidelity, metrics and labels (issue 13): conciseness over all samples, budget
refusals apart from aborted calls, insufficient n/a without siblings or plan, paired-tag
call counts."""

from __future__ import annotations

import pytest

from etagent.behaviour import label_behaviour
from etagent.evaluation.metrics import compute_metrics, metrics_table_markdown
from etagent.records import Example, PlanStep, ToolCall, Trajectory
from run_env import ENV, GRAMMAR

R = GRAMMAR.format_result
EX = Example(id="m", question="What is 2+3?", answers=["5"], domain="math", source="t", plan=[])
REAL = Example(id="r", question="Who wrote Dune?", answers=["Frank Herbert"], domain="qa", source="t")


def _traj(tid, ex, text, calls, correct):
    return Trajectory(id=tid, example_id=ex.id, group_id=ex.id, response_text=text, response_mask=[1] * 5,
                      tool_calls=[ToolCall(*c) for c in calls], score=correct)


def test_conciseness_is_the_redundant_free_share_of_all_samples():
    ok = "<think>2+3=5</think><answer>\\boxed{5}</answer>"
    dup = ("<think>t</think><python>print(2+3)</python>" + R("5") + "<python>print(2+3)</python>" + R("5")
           + "<answer>\\boxed{6}</answer>")
    trajs = [_traj(f"c{i}", EX, ok, [], 1.0) for i in range(2)]
    trajs += [_traj(f"w{i}", EX, dup, [("python", "print(2+3)", "5", "ok")] * 2, 0.0) for i in range(8)]
    m = compute_metrics(trajs, {EX.id: EX}, **ENV)
    assert m["conciseness"] == pytest.approx(0.2)  # official radar: flags / num_samples
    assert m["redundant_rate"] == pytest.approx(0.8)


def test_insufficient_is_na_for_one_sample_without_plan():
    wrong = _traj("a", REAL, "<think>hm</think><answer>\\boxed{Jane Austen}</answer>", [], 0.0)
    b = label_behaviour(wrong, REAL, **ENV)
    assert b["insufficient"] is None and b["erroneous"] is None
    m = compute_metrics([wrong], {REAL.id: REAL}, **ENV)
    assert m["insufficient_rate"] is None and m["erroneous_rate"] is None
    assert m["insufficient_share_of_wrong"] is None
    assert "| - |" in metrics_table_markdown({"x": m})  # shown as n/a, never 0
    right = _traj("b", REAL, "<think>known</think><answer>\\boxed{Frank Herbert}</answer>", [], 1.0)
    m = compute_metrics([right], {REAL.id: REAL}, **ENV)
    assert m["insufficient_rate"] == 0.0  # a correct answer is defined: not insufficient


def test_budget_refusals_have_their_own_counter():
    text = ("<think>t</think><python>print(2+3)</python>" + R("5") + "<python>print(1)</python>"
            + R("Error: tool budget exhausted") + "<python>print(9)</python>" + R("Traceback: error")
            + "<answer>\\boxed{5}</answer>")
    t = _traj("t", EX, text, [("python", "print(2+3)", "5", "ok"), ("python", "print(1)", "budget exhausted", "budget"),
                              ("python", "print(9)", "Traceback", "error")], 1.0)
    b = label_behaviour(t, EX, **ENV)
    assert (b["n_aborted"], b["n_budget"], b["aborted_calls"], b["budget_calls"]) == (1, 1, [2], [1])
    m = compute_metrics([t], {EX.id: EX}, **ENV)
    assert m["budget_refusal_rate"] == 1.0 and m["aborted_rate"] == 1.0


def test_call_counts_follow_paired_tags():
    # a stray closer got an engine error result, but it is no call (official count_valid_tags)
    text = "<think>t</think></python>" + R("Error: no call") + "<answer>\\boxed{5}</answer>"
    t = _traj("t", EX, text, [("python", "", "Error: no call", "invalid")], 1.0)
    assert label_behaviour(t, EX, **ENV)["n_calls"] == 0
    m = compute_metrics([t], {EX.id: EX}, **ENV)
    assert m["mean_calls"] == 0.0 and m["efficiency"] == 1.0
    assert GRAMMAR.parse("<think>t</think><python>print(1)").num_calls == 0  # unclosed: no call


def test_plan_labels_are_unchanged_for_exact_method():
    ex = Example(id="p", question="8453*89?", answers=["752317"], domain="math", source="t",
                 plan=[PlanStep("python", "print(8453*89)", "752317")])
    t = _traj("t", ex, "<think>t</think><answer>\\boxed{1}</answer>", [], 0.0)
    assert label_behaviour(t, ex, **ENV)["insufficient"] is True  # the plan defines it without siblings
