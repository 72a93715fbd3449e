"""Behaviour labels: exact on synthetic examples with plans, heuristic on real ones."""

from __future__ import annotations

import pytest

from etagent import protocol
from etagent.behaviour import label_behaviour, label_group, normalise_query, surfaces
from etagent.records import Example, PlanStep, ToolCall, Trajectory
from run_env import ENV, GRAMMAR

MATH = Example(
    id="m", question="What is 8453 * 89 ?", answers=["752317"], domain="math", source="syn",
    plan=[PlanStep("python", "print(8453*89)", "752317")],
)
EASY = Example(id="e", question="What is 2 + 3 ?", answers=["5"], domain="math", source="syn", plan=[])
QA = Example(
    id="q", question="Where was the director of Film X born?", answers=["Paris"], domain="qa", source="syn",
    plan=[PlanStep("search", "director of Film X", "Alice Smith"), PlanStep("search", "Alice Smith born", "Paris")],
)
REAL = Example(id="r", question="What is the capital of France?", answers=["Paris"], domain="qa", source="bench")


def traj(example, calls, answer, correct, tid="t"):
    """calls: list of (kind, query, result, status); the text interleaves them like a rollout."""
    text = "<think>let me work</think>"
    tcs = []
    for kind, query, result, status in calls:
        text += protocol.format_call(kind, query) + GRAMMAR.format_result(result) + " ok. "
        tcs.append(ToolCall(kind, query, result, status))
    text += protocol.format_answer(answer)
    return Trajectory(
        id=tid, example_id=example.id, group_id=example.id, response_text=text, tool_calls=tcs,
        answer=answer, score=correct,
    )


def flags(b):
    return {k: b[k] for k in ("n_calls", "n_redundant", "n_aborted", "redundant", "aborted", "insufficient", "erroneous")}


# --------------------------------------------------------------------------- exact


def test_exact_clean_trajectory():
    b = label_behaviour(traj(MATH, [("python", "print(8453*89)", "752317", "ok")], "752317", 1.0), MATH, **ENV)
    assert b["method"] == "exact" and b["n_useful"] == 1
    assert flags(b) == dict(n_calls=1, n_redundant=0, n_aborted=0, redundant=False, aborted=False,
                            insufficient=False, erroneous=False)


def test_exact_duplicate_and_beyond_plan_calls_are_redundant():
    calls = [
        ("python", "print(8453*89)", "752317", "ok"),
        ("python", "print(8453 * 89)", "752317", "ok"),  # same call up to whitespace
        ("python", "print(2+3)", "5", "ok"),  # plan already satisfied
    ]
    b = label_behaviour(traj(MATH, calls, "752317", 1.0), MATH, **ENV)
    assert b["n_redundant"] == 2 and b["redundant_calls"] == [1, 2] and b["redundant"]
    assert not b["insufficient"] and not b["erroneous"]


def test_exact_any_call_on_empty_plan_is_redundant():
    b = label_behaviour(traj(EASY, [("python", "print(2+3)", "5", "ok")], "5", 1.0), EASY, **ENV)
    assert b["n_redundant"] == 1 and not b["erroneous"]
    # wrong without calls on a no-tool question: the reasoning is at fault
    b = label_behaviour(traj(EASY, [], "6", 0.0), EASY, **ENV)
    assert flags(b)["erroneous"] and not b["insufficient"] and b["n_calls"] == 0


def test_exact_aborted_call_leads_to_insufficient():
    b = label_behaviour(traj(MATH, [("python", "print(8453*89", "SyntaxError", "error")], "750000", 0.0), MATH, **ENV)
    assert b["n_aborted"] == 1 and b["aborted"] and b["aborted_calls"] == [0]
    assert b["n_redundant"] == 0 and b["insufficient"] and not b["erroneous"]


def test_exact_erroneous_when_plan_values_were_seen():
    b = label_behaviour(traj(MATH, [("python", "print(8453*89)", "752317", "ok")], "752318", 0.0), MATH, **ENV)
    assert b["erroneous"] and not b["insufficient"] and not b["redundant"]


def test_exact_unproductive_call_is_not_redundant_but_answer_is_insufficient():
    b = label_behaviour(traj(MATH, [("python", "print(8453*88)", "743864", "ok")], "743864", 0.0), MATH, **ENV)
    assert b["n_redundant"] == 0 and b["n_useful"] == 0 and b["insufficient"] and not b["erroneous"]


def test_exact_multi_hop_qa_and_partial_plan():
    calls = [
        ("search", "director of Film X", "Film X (2001) was directed by Alice Smith.", "ok"),
        ("search", "Alice Smith born", "Alice Smith was born in Paris, France.", "ok"),
    ]
    b = label_behaviour(traj(QA, calls, "Paris", 1.0), QA, **ENV)
    assert b["n_useful"] == 2 and not b["redundant"]
    b = label_behaviour(traj(QA, calls[:1], "London", 0.0), QA, **ENV)
    assert b["insufficient"] and not b["erroneous"]
    # QA success is F1 >= 0.75: "Paris France" vs "Paris" has F1 2/3 -> wrong, plan complete -> erroneous
    b = label_behaviour(traj(QA, calls, "Paris France", 2 / 3), QA, **ENV)
    assert b["erroneous"]


def test_surfaces_and_normalisation():
    assert surfaces("x = 752317.0\n", "752317")
    assert surfaces("1,234 items", "1234")
    assert not surfaces("7523170", "752317")
    assert surfaces("Born in Paris, France.", "Paris")
    assert not surfaces("A Parisian café", "Paris")
    assert normalise_query("python", "print( 6 * 7 )", GRAMMAR) == normalise_query("python", "print(6*7)", GRAMMAR)
    assert normalise_query("search", "Capital of France?", GRAMMAR) == normalise_query("search", "capital  of france", GRAMMAR)


# --------------------------------------------------------------------------- heuristic


def test_heuristic_used_unused_duplicate_and_aborted():
    calls = [
        ("search", "capital of France", "Paris is the capital and largest city of France.", "ok"),
        ("search", "Capital of France?", "Paris is the capital and largest city of France.", "ok"),  # duplicate
        ("search", "France population", "France has 68 million inhabitants.", "ok"),  # never used later
        ("search", "Eiffel tower", "", "timeout"),
    ]
    b = label_behaviour(traj(REAL, calls, "Paris", 1.0), REAL, **ENV)
    assert b["method"] == "heuristic"
    assert b["redundant_calls"] == [1, 2] and b["aborted_calls"] == [3] and b["n_useful"] == 1
    assert not b["insufficient"] and not b["erroneous"]


def test_heuristic_result_used_in_later_code_counts_as_used():
    ex = Example(id="r2", question="Compute 12 squared plus one.", answers=["145"], domain="math", source="bench")
    calls = [("python", "print(12**2)", "144", "ok"), ("python", "print(144+1)", "145", "ok")]
    b = label_behaviour(traj(ex, calls, "145", 1.0), ex, **ENV)
    assert b["n_redundant"] == 0 and b["n_useful"] == 2


def test_heuristic_insufficient_needs_a_group_that_solved_it_with_calls():
    no_call = traj(REAL, [], "Lyon", 0.0, tid="a")
    with_call = traj(REAL, [("search", "capital of France", "Paris is the capital of France.", "ok")], "Paris", 1.0,
                     tid="b")
    assert label_behaviour(no_call, REAL, [no_call, with_call], **ENV)["insufficient"]
    alone = label_behaviour(no_call, REAL, **ENV)
    assert alone["insufficient"] is None and alone["erroneous"] is None  # one sample, no plan: n/a
    lucky = traj(REAL, [], "Paris", 1.0, tid="c")  # the group also solved it without calls
    b = label_behaviour(no_call, REAL, [no_call, with_call, lucky], **ENV)
    assert not b["insufficient"] and b["erroneous"]
    labels = label_group([no_call, with_call], REAL, **ENV)
    assert labels[0]["insufficient"] and no_call.behaviour is labels[0]


def test_wrong_example_is_named():
    with pytest.raises(ValueError, match="is for 'm', not 'r'"):
        label_behaviour(traj(MATH, [], "1", 0.0), REAL, **ENV)
