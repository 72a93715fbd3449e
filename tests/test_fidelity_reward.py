"""Method fidelity, reward and format (issue 13): answer-block-only credit, <think> required,
format rule sets, one grading policy honoured by the RL engine, tool budget semantics and
the marked on_empty fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from etagent import grading, protocol
from etagent.backends.base import SamplingParams
from etagent.export.verl import FALLBACK, VERL_SCHEMA, export_from_run
from etagent.export.verl_reward import compute_score_batch
from etagent.records import Example, Trajectory, write_jsonl
from etagent.rl.reward import RewardFn
from etagent.rollout.engine import RolloutEngine

from conftest import compose
from test_rollout import MATH, QA, Scripted, tok, tools  # noqa: F401 - fixtures
from run_env import ENV, GRADER, GRAMMAR, grader, unused_toolset

RIGHT = "<think>6*7 is 42{pad}</think><answer>\\boxed{{42}}</answer>"
IN_THINK = "<think>6*7 = \\boxed{42}</think><|endoftext|>"  # correct, short, no call, no answer block


def test_a_boxed_answer_outside_an_answer_block_earns_no_correctness(tok, tools):
    """8 correct rollouts; the one that boxes its answer in <think> gets c=0 (reward = -1)."""
    samples = [[RIGHT.format(pad=" " + "really " * k)] for k in range(7)] + [[IN_THINK]]
    engine = RolloutEngine(Scripted(tok, {MATH.question: samples}), tools, GRADER, GRAMMAR, system_prompt=None)
    trajs = engine.rollout([MATH], 8, SamplingParams())
    malformed = [t for t in trajs if "answer_missing" in t.format_errors]
    assert len(malformed) == 1 and malformed[0].score == 0.0 and malformed[0].answer is None
    assert all(t.score == 1.0 for t in trajs if t is not malformed[0])
    fn = RewardFn(grammar=GRAMMAR, mode="efficiency", sigma_tool=0.2, sigma_len=0.5, schedule="constant")
    rewards = fn([trajs]).rewards[0].tolist()
    k = trajs.index(malformed[0])
    assert rewards[k] == pytest.approx(-1.0)  # the format penalty only, never the top advantage
    assert max(rewards) == max(r for i, r in enumerate(rewards) if i != k) > 0
    # the verl reward gives the same scores on the same texts
    out = compute_score_batch(["math_effi_rl"] * 8, [t.response_text for t in trajs], [["42"]] * 8,
                              [{"index": 0, "model_tokens": t.model_tokens} for t in trajs], sigma_tool=0.2,
                              sigma_len=0.5)
    assert [o["score"] for o in out] == pytest.approx(rewards, abs=1e-5)
    assert out[k]["correctness"] == 0.0


def test_block_answer_is_the_last_closed_answer_block():
    assert grading.block_answer("<think>\\boxed{1}</think><answer>so \\boxed{2}</answer>", GRAMMAR) == "2"
    assert grading.block_answer("<think>t</think>The answer is \\boxed{2}", GRAMMAR) is None
    assert grading.block_answer("<think>t</think><answer>\\boxed{2}", GRAMMAR) is None  # unclosed
    assert grading.extract_answer("<think>t</think>The answer is \\boxed{2}", GRAMMAR) == "2"  # lenient reader stays


def test_think_is_required_and_rule_sets():
    assert [e.code for e in GRAMMAR.validate("<answer>\\boxed{1}</answer>")] == ["think_missing"]
    assert GRAMMAR.is_valid("<think>a</think><answer>\\boxed{1}</answer>")
    assert not GRAMMAR.is_valid("<think>a<answer>\\boxed{1}</answer>")  # unbalanced
    trailing = "<think>a</think><answer>\\boxed{1}</answer> and more"
    invented = "<think>a</think><code>x</code><answer>\\boxed{1}</answer>"
    for text, code in ((trailing, "text_after_answer"), (invented, "unknown_tag")):
        assert {e.code for e in GRAMMAR.validate(text)} == {code}
        assert GRAMMAR.is_valid(text, rules="official")
    assert not GRAMMAR.is_valid("<answer>\\boxed{1}</answer>", rules="official")
    with pytest.raises(ValueError, match="format rules"):
        GRAMMAR.validate("x", rules="loose")
    t = Trajectory(id="t", example_id="m1", group_id="g", response_text=trailing, response_mask=[1],
                   score=1.0, format_errors=["text_after_answer"])
    assert RewardFn(grammar=GRAMMAR, format_rules="official").format_ok(t) and not RewardFn(grammar=GRAMMAR).format_ok(t)
    with pytest.raises(ValueError, match="reward.format_rules"):
        RewardFn(grammar=GRAMMAR, format_rules="lenient")


def test_calls_are_paired_tags():
    parsed = GRAMMAR.parse("<think>t</think></python><python>print(1)</python><result>\n1\n</result><python>x")
    assert parsed.num_calls == 1  # a stray closer and an unclosed opener are no calls


def test_grader_threshold_and_metric():
    qa = Example(id="q", question="?", answers=["New York City"], domain="qa", source="t")
    f1, em = grader("f1"), grader("em", qa_threshold=0.5)
    assert f1.grade(qa, "New York") == pytest.approx(0.8) and em.grade(qa, "New York") == 0.0
    assert f1.is_success("qa", 0.75) and not grader(qa_threshold=0.8).is_success("qa", 0.75)
    assert em.is_success("qa", 0.5) and f1.is_success("math", 1.0) and not f1.is_success("math", 0.99)
    text = "<think>t</think><answer>\\boxed{New York City}</answer>"
    assert f1.grade_text(qa, text, GRAMMAR) == ("New York City", 1.0)
    with pytest.raises(ValueError, match="qa_metric"):
        grader("bleu")


def test_rl_stage_engine_grades_with_reward_qa_metric(tmp_path, monkeypatch):
    """reward.qa_metric=em reaches the engine that grades the RL samples (not the task default)."""
    from etagent.pipeline import components, stage_rl
    from etagent.pipeline.context import RunContext

    cfg = compose(["reward.qa_metric=em", "grading.qa_threshold=0.6", "schedule.start=seed"], run_dir=tmp_path)
    ctx = RunContext(cfg, tmp_path, tracker=None)
    ctx.policies = lambda: {"seed": tmp_path / "seed"}  # a seed agent only
    seen = {}

    def fake_curriculum(*args, make_engine, **kw):
        seen["engine"] = make_engine(None, None)
        return {}

    monkeypatch.setattr(components, "load_split", lambda ctx, split: [])
    monkeypatch.setattr(components, "make_toolset", lambda ctx: unused_toolset())
    backend = type("B", (), {"tokenizer": None, "generate": lambda self, prefixes, params: []})()
    monkeypatch.setattr(components, "make_backend", lambda ctx, m, t: backend)
    monkeypatch.setattr("etagent.rl.curriculum.run_curriculum", fake_curriculum)
    stage_rl.run(ctx)
    policy = seen["engine"].grader
    assert isinstance(policy, grading.Grader) and policy.qa_metric == "em" and policy.qa_threshold == 0.6
    qa = Example(id="q", question="?", answers=["New York City"], domain="qa", source="t", meta={"metric": "f1"})
    assert policy(qa, "New York") == 0.0


def test_one_threshold_in_config():
    cfg = compose(["grading.qa_threshold=0.7"])
    assert cfg.sampling.qa_threshold == cfg.flywheel.min_correct == 0.7
    assert cfg.reward.qa_metric == cfg.eval.qa_metric == "f1"
    assert cfg.reward.format_rules == "strict"


# --------------------------------------------------------------------------- tool budget


def test_total_budget_ends_the_response_at_the_call_over_the_limit(tok, tools):
    calls = [f"<python>print({i})</python>" for i in range(4)] + [f"<search>Dune {i}</search>" for i in range(4)]
    be = Scripted(tok, {MATH.question: [["<think>go</think>" + calls[0]] + calls[1:] + ["<answer>\\boxed{42}</answer>"]]})
    (t,) = RolloutEngine(be, tools, GRADER, GRAMMAR, max_calls_total=6, system_prompt=None).rollout([MATH], 1, SamplingParams())
    assert [c.status for c in t.tool_calls] == ["ok"] * 6 + ["budget"] and t.finish_reason == "budget"
    assert t.response_text.endswith("<search>Dune 2</search>")  # not run, no result, nothing after
    (t,) = RolloutEngine(be, tools, GRADER, GRAMMAR, max_calls_total=6, system_prompt=None).rollout([MATH], 1, SamplingParams(), extra_calls=2)
    assert [c.status for c in t.tool_calls] == ["ok"] * 8 and t.finish_reason == "answer"
    # per_kind (etagent's former default): 4 + 4 calls all run under 6 per kind
    (t,) = RolloutEngine(be, tools, GRADER, GRAMMAR, budget="per_kind", max_calls_per_kind=6, system_prompt=None).rollout([MATH], 1, SamplingParams())
    assert [c.status for c in t.tool_calls] == ["ok"] * 8
    with pytest.raises(ValueError, match="rollout.budget"):
        RolloutEngine(be, tools, GRADER, GRAMMAR, budget="per_tool", system_prompt=None)


def test_budget_refusal_is_not_an_aborted_call(tok, tools):
    from etagent.evaluation.metrics import compute_metrics

    calls = [f"<python>print({i})</python>" for i in range(3)]
    be = Scripted(tok, {MATH.question: [["<think>go</think>" + calls[0]] + calls[1:]]})
    (t,) = RolloutEngine(be, tools, GRADER, GRAMMAR, max_calls_total=2, system_prompt=None).rollout([MATH], 1, SamplingParams())
    assert t.behaviour["n_budget"] == 1 and t.behaviour["n_aborted"] == 0 and not t.behaviour["aborted"]
    m = compute_metrics([t], {MATH.id: MATH}, **ENV)
    assert m["budget_refusal_rate"] == 1.0 and m["aborted_rate"] == 0.0


def test_paper_configs_use_the_official_budget(tmp_path):
    for overrides in ([], ["experiment=paper_eval"], ["schedule=three_stage"], ["rollout=branching"]):
        cfg = compose(overrides, run_dir=tmp_path)
        assert cfg.rollout.budget == "total" and cfg.rollout.max_calls_total == 6, overrides


# --------------------------------------------------------------------------- on_empty fallback


class _AllCorrect:
    grader = GRADER

    def rollout(self, examples, n, params, group_prefix="", budget=None):
        return [Trajectory(id=f"{group_prefix}{e.id}#{k}", example_id=e.id, group_id=f"{group_prefix}{e.id}",
                           response_text="", score=1.0) for e in examples for k in range(n)]


def test_fallback_selection_is_marked_in_selection_report_and_verl(tmp_path, shared_dir):
    from etagent.report.report import _rl_section
    from etagent.report.rundata import RunData
    from etagent.rl.curriculum import Schedule, StageSpec, sample_and_select
    from etagent.rl.grpo import GRPOConfig
    from etagent.rl.sampling import ParetoSampler

    pool = [Example(id=f"m{i}", question=f"{i}+1?", answers=[str(i + 1)], domain="math", source="t", split="train")
            for i in range(3)]
    sel = sample_and_select(_AllCorrect(), pool, StageSpec(k=2), ParetoSampler(count=8, qa_threshold=0.75),
                            GRPOConfig(), Schedule(), 1)
    assert sel["selected_by"] == FALLBACK and sel["fallback_all_sampled"] and sel["n_selected"] == 0
    assert len(sel["selected_ids"]) == 3
    run = tmp_path / "run"
    write_jsonl(run / "world" / "train.jsonl", pool)
    for k, s in ((1, sel), (2, {"selected_ids": ["m0"], "selected_by": "pareto"})):
        (run / "rl" / f"stage_{k}").mkdir(parents=True)
        (run / "rl" / f"stage_{k}" / "selection.json").write_text(json.dumps(s))
        summary = {"name": f"rl/stage{k}", **{key: v for key, v in s.items() if key != "selected_ids"}}
        (run / "rl" / f"stage_{k}" / ".done.json").write_text(json.dumps({"summary": summary, "wall_s": 1}))
    written = export_from_run(run, tmp_path / "out.parquet", system_prompt=GRAMMAR.system_prompt)
    flagged, normal = pq.read_table(written[1]), pq.read_table(written[2])
    assert {r["extra_info"]["selection"] for r in flagged.to_pylist()} == {FALLBACK}
    assert normal.schema.equals(VERL_SCHEMA)  # a real selection keeps the reference schema
    assert json.loads(Path(str(written[1]) + ".ids.json").read_text())["selection"] == FALLBACK
    table = _rl_section(RunData(run_dir=run))
    assert "selected_by" in table and FALLBACK in table
