"""Tool-budget rules per stage (issue 23, N3): ``total`` (released RL rollout: 6 calls in all, the
7th ends the response) and ``per_kind_then_answer`` (released evaluation, flywheel and direct
rollouts: 6 per kind, then ONE more generation without running tools so the model can still
answer), each rollout driven by a scripted fake model that decides its next turn from the
response so far."""

from __future__ import annotations

import dataclasses

import pytest

from etagent import protocol
from etagent.backends.base import Completion, GenerationBackend, SamplingParams, find_stop
from etagent.evaluation.metrics import compute_metrics
from etagent.rollout.engine import RolloutEngine

from conftest import compose
from run_env import ENV, GRADER, GRAMMAR
from test_rollout import MATH, QA, check_invariants, tok, tools  # noqa: F401 - fixtures

PY = "<think>compute</think><python>print(6*7)</python>"
SE = "<think>look up</think><search>Dune author</search>"
ANSWER = "<think>done</think><answer>\\boxed{42}</answer>"


class Policy(GenerationBackend):
    """A fake model: ``fn(response_so_far) -> next turn text``; stops, lengths and eos as a sampler."""

    def __init__(self, tokenizer, fn):
        self.tokenizer, self.fn = tokenizer, fn
        self.log: list[tuple[list[int], list[int]]] = []
        self.turns: list[str] = []  # the response so far at each generation

    def generate(self, prefixes, params):
        out = []
        for prefix in prefixes:
            text = self.tokenizer.decode(prefix, skip_special_tokens=False)
            so_far = text.split("<|im_start|>assistant\n", 1)[1]
            self.turns.append(so_far)
            comps = []
            for _ in range(params.n):
                ids = self.tokenizer.encode(self.fn(so_far), add_special_tokens=False)
                finish, stop, cut = "length", None, len(ids)
                for k in range(1, len(ids) + 1):
                    if ids[k - 1] == self.tokenizer.eos_token_id:
                        cut, finish = k - 1, "eos"
                        break
                    hit = find_stop(self.tokenizer.decode(ids[:k], skip_special_tokens=False), params.stop)
                    if hit:
                        cut, finish, stop = k, "stop", hit[1]
                        break
                if cut > params.max_new_tokens:
                    cut, finish, stop = params.max_new_tokens, "length", None
                comps.append(Completion(ids[:cut], [-0.1] * cut, finish, stop))
                self.log.append((list(prefix), ids[:cut]))
            out.append(comps)
        return out


@pytest.fixture(autouse=True)
def _tok_for_checks(tok):
    check_invariants.tok = tok


def calls_then_answer(plan: list[str], after: str = ANSWER):
    """Write the turns of ``plan`` in order (one per turn: a refused call gets no result, so the
    model's next turn is its next planned one), then ``after`` forever."""

    def fn(so_far: str) -> str:
        done = so_far.count("</python>") + so_far.count("</search>")
        return plan[done] if done < len(plan) else after

    return fn


def roll(tok, tools, fn, budget, prefix=None, extra_calls=0, **kw):
    be = Policy(tok, fn)
    eng = RolloutEngine(be, tools, GRADER, GRAMMAR, system_prompt=None, budget=budget, **kw)
    (t,) = eng.rollout([MATH], 1, SamplingParams(), prefixes=[prefix] if prefix else None, extra_calls=extra_calls)
    if prefix is None:  # ids, masks and result blocks as sampled/injected; a refused call has no block
        shown = dataclasses.replace(t, tool_calls=[c for c in t.tool_calls if c.status != "budget" or c.result])
        check_invariants(shown, be.log)
    return t, be


def statuses(t):
    return [c.status for c in t.tool_calls]


def test_1_seventh_call_of_a_kind_is_refused_and_the_model_still_answers(tok, tools):
    t, be = roll(tok, tools, calls_then_answer([PY] * 7), "per_kind_then_answer")
    assert statuses(t) == ["ok"] * 6 + ["budget"] and t.finish_reason == "answer" and t.score == 1.0
    assert t.response_text.count("<result>") == 6  # the refused call gets no result block
    assert t.response_text.endswith("</python>" + ANSWER)  # the final turn follows the refused call directly
    assert len(be.turns) == 8  # 7 call turns + the final answer turn


def test_2_six_of_each_kind_all_run(tok, tools):
    t, _ = roll(tok, tools, calls_then_answer([PY, SE] * 6), "per_kind_then_answer")
    assert statuses(t) == ["ok"] * 12 and t.finish_reason == "answer"


def test_3_total_ends_at_the_seventh_call_in_all(tok, tools):
    t, _ = roll(tok, tools, calls_then_answer([PY, SE] * 6), "total")
    assert statuses(t) == ["ok"] * 6 + ["budget"] and t.finish_reason == "budget" and t.score == 0.0
    assert t.response_text.endswith("</python>")  # released RL: not run, nothing after


def test_4_a_call_in_the_final_turn_is_not_run(tok, tools):
    t, be = roll(tok, tools, calls_then_answer([PY] * 10), "per_kind_then_answer")
    assert statuses(t) == ["ok"] * 6 + ["budget", "budget"] and t.finish_reason == "budget"
    assert t.response_text.count("<result>") == 6 and len(be.turns) == 8


def test_5_even_a_kind_with_budget_left_is_not_run_in_the_final_turn(tok, tools):
    t, _ = roll(tok, tools, calls_then_answer([PY] * 7 + [SE]), "per_kind_then_answer")
    assert [(c.kind, c.status) for c in t.tool_calls][-2:] == [("python", "budget"), ("search", "budget")]
    assert t.finish_reason == "budget" and t.response_text.count("<result>") == 6


def test_6_a_turn_cut_at_the_turn_cap_gets_the_final_turn(tok, tools):
    ramble = "<think>" + "blah " * 60

    def fn(so_far):
        return ANSWER if "blah" in so_far else ramble

    t, _ = roll(tok, tools, fn, "per_kind_then_answer", max_turn_tokens=20, max_response_tokens=400)
    assert t.finish_reason == "answer" and t.score == 1.0 and t.tool_calls == []
    t, _ = roll(tok, tools, fn, "total", max_turn_tokens=20, max_response_tokens=400)
    assert t.finish_reason == "max_tokens"  # the RL rule: a turn at the cap ends the response


def test_7_the_final_turn_itself_cut_at_the_cap_ends_the_response(tok, tools):
    t, be = roll(tok, tools, lambda so_far: "<think>" + "blah " * 60, "per_kind_then_answer",
                 max_turn_tokens=20, max_response_tokens=400)
    assert t.finish_reason == "max_tokens" and len(t.response_ids) == 40 and len(be.turns) == 2


def test_8_the_response_cap_ends_it_without_a_final_turn(tok, tools):
    t, be = roll(tok, tools, lambda so_far: "<think>" + "blah " * 60, "per_kind_then_answer",
                 max_turn_tokens=30, max_response_tokens=30)
    assert t.finish_reason == "max_tokens" and len(t.response_ids) == 30 and len(be.turns) == 1


def test_9_flywheel_extra_calls_add_to_each_kind(tok, tools):
    t, _ = roll(tok, tools, calls_then_answer([PY] * 11), "per_kind_then_answer", extra_calls=4)
    assert statuses(t) == ["ok"] * 10 + ["budget"] and t.finish_reason == "answer"


def test_10_an_eos_without_an_answer_ends_the_response(tok, tools):
    t, be = roll(tok, tools, lambda so_far: "<think>no idea</think><|endoftext|>", "per_kind_then_answer")
    assert t.finish_reason == "eos" and len(be.turns) == 1


def test_11_calls_in_a_continuation_prefix_count_towards_the_budget(tok, tools):
    prefix = "".join(GRAMMAR.format_tool_turn("python", "print(6*7)", "42") for _ in range(6))
    t, be = roll(tok, tools, lambda so_far: ANSWER if so_far.count("</python>") > 6 else PY,
                 "per_kind_then_answer", prefix=prefix)
    assert statuses(t) == ["ok"] * 6 + ["budget"] and t.finish_reason == "answer"


def test_12_per_kind_answers_an_over_budget_call_with_an_error_result(tok, tools):
    t, _ = roll(tok, tools, calls_then_answer([PY] * 7), "per_kind", budget_grace=2)
    assert statuses(t) == ["ok"] * 6 + ["budget"] and t.finish_reason == "answer"
    assert t.response_text.count("<result>") == 7 and "budget exhausted" in t.tool_calls[-1].result


def test_13_a_call_may_pick_its_budget_rule_over_the_engines(tok, tools):
    be = Policy(tok, calls_then_answer([PY] * 7))
    eng = RolloutEngine(be, tools, GRADER, GRAMMAR, system_prompt=None, budget="total")  # the RL rule by default ...
    (t,) = eng.rollout([MATH], 1, SamplingParams(), budget="per_kind_then_answer")  # ... Pareto sampling's here
    assert statuses(t) == ["ok"] * 6 + ["budget"] and t.finish_reason == "answer"
    (t,) = eng.rollout([MATH], 1, SamplingParams())  # the next call is back on the engine's own rule
    assert statuses(t) == ["ok"] * 6 + ["budget"] and t.finish_reason == "budget"
    with pytest.raises(ValueError, match="budget"):
        eng.rollout([MATH], 1, SamplingParams(), budget="per_call")


def test_14_refusals_are_budget_refusals_not_aborted_calls(tok, tools):
    t, _ = roll(tok, tools, calls_then_answer([PY] * 7), "per_kind_then_answer")
    m = compute_metrics([t], {MATH.id: MATH}, **ENV)
    assert t.behaviour["n_budget"] == 1 and not t.behaviour["aborted"]
    assert m["budget_refusal_rate"] == 1.0 and m["aborted_rate"] == 0.0  # share of trajectories with a refusal


def test_stage_defaults_follow_the_released_scripts(tmp_path):
    cfg = compose([], run_dir=tmp_path)
    # evaluation, flywheel and Pareto sampling: 6 per kind then a final turn; RL training: 6 in all
    assert cfg.eval.budget == cfg.flywheel.budget == cfg.schedule.sample_budget == "per_kind_then_answer"
    assert cfg.rollout.budget == "total" and cfg.rollout.max_calls_total == cfg.rollout.max_calls_per_kind == 6


def test_pareto_sampling_rolls_out_under_the_schedules_budget(tmp_path):
    from etagent.records import Trajectory
    from etagent.rl.curriculum import Schedule, StageSpec, sample_and_select
    from etagent.rl.grpo import GRPOConfig
    from etagent.rl.sampling import AllSampler

    seen = []

    class Engine:
        grader = GRADER

        def rollout(self, examples, n, params, group_prefix="", budget=None):
            seen.append(budget)
            return [Trajectory(id=f"{group_prefix}{e.id}#{k}", example_id=e.id, group_id=f"{group_prefix}{e.id}",
                               response_text="", score=float(k % 2)) for e in examples for k in range(n)]

    sample_and_select(Engine(), [MATH, QA], StageSpec(k=2), AllSampler(qa_threshold=0.75), GRPOConfig(), Schedule(), 1)
    sample_and_select(Engine(), [MATH], StageSpec(k=2), AllSampler(qa_threshold=0.75), GRPOConfig(), Schedule(sample_budget="total"), 1)
    assert seen == ["per_kind_then_answer", "total"]
