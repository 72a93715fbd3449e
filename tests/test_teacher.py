"""Flawed teacher: texts follow the protocol, results come from real tool execution, flaws are
what they claim to be, rates hit their targets, and the defaults reproduce the paper's picture."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import CONF
from etagent import protocol
from etagent.data.synthetic import SyntheticTask
from etagent.seed.teacher import FLAWS, FlawedTeacher, FlawRates, summarize, write_teacher_trajectories
from test_synthetic import make_toolset
from run_env import DOMAINS, ENV, GRADER, GRAMMAR


@pytest.fixture(scope="module")
def task() -> SyntheticTask:
    return SyntheticTask(seed=0, domains=DOMAINS)


@pytest.fixture(scope="module")
def toolset(task, tmp_path_factory):
    ts = make_toolset(task, tmp_path_factory.mktemp("world"))
    yield ts
    ts.close()


@pytest.fixture(scope="module")
def default_trajs(task, toolset):
    """The default teacher on the default train split: exactly what the seed stage trains on."""
    return write_teacher_trajectories(task.load("train"), toolset, rates=None, seed=0)


def test_texts_parse_and_results_are_real(task, toolset, default_trajs):
    examples = {e.id: e for e in task.load("train")}
    by_call: dict[tuple[str, str], str] = {}
    for t in default_trajs:
        parsed = GRAMMAR.parse(t["response_text"])
        # aborted calls still parse; the only grammar error allowed is an aborted empty search
        allowed = {"empty_call"} if any(c["role"] == "aborted" and c["kind"] == "search" for c in t["calls"]) else set()
        assert {e.code for e in parsed.errors} <= allowed, (t["response_text"], parsed.errors)
        assert parsed.answer() == t["answer"]
        calls = parsed.calls()
        assert [(c.kind, c.content) for c in calls] == [(c["kind"], c["query"]) for c in t["calls"]]
        results = [s for s in parsed.segments if s.kind == protocol.RESULT]
        assert len(results) == len(calls)
        for c, r in zip(t["calls"], results):
            by_call.setdefault((c["kind"], c["query"]), r.render())
            assert by_call[(c["kind"], c["query"])] == r.render()  # same call, same result everywhere
        assert t["plan_ok"], t
        ex = examples[t["example_id"]]
        score = GRADER.grade(ex, t["answer"])
        assert (score == 1.0) == t["correct"], (ex.question, ex.answers, t["answer"])
    # re-execute a sample of calls: every result block is the real tool's output
    sample = list(by_call)[:: max(1, len(by_call) // 200)]
    for call, res in zip(sample, toolset.execute(sample)):
        assert by_call[call] == GRAMMAR.format_result(res.output)


def test_flaws_are_what_they_claim(task, default_trajs):
    examples = {e.id: e for e in task.load("train")}
    for t in default_trajs:
        ex = examples[t["example_id"]]
        roles = [c["role"] for c in t["calls"]]
        needed = [(c["kind"], c["query"]) for c in t["calls"] if c["role"] == "needed"]
        plan = [(p.tool, p.query) for p in ex.plan]
        assert needed == plan[: len(needed)]  # needed calls follow the plan, in order
        assert ("redundant" in t["flaws"]) == ("redundant" in roles)
        assert ("aborted" in t["flaws"]) == ("aborted" in roles)
        if "insufficient" in t["flaws"]:
            assert ex.plan and t["missing_calls"] >= 1 and len(needed) < len(plan) and not t["correct"]
            assert "erroneous" not in t["flaws"]
        else:
            assert needed == plan and t["missing_calls"] == 0
        if "erroneous" in t["flaws"]:
            assert not t["correct"]
        if not set(t["flaws"]) & {"insufficient", "erroneous"}:
            assert t["correct"] and t["answer"] == ex.answer
        for c in t["calls"]:
            if c["role"] == "aborted":
                assert c["status"] == "error"  # malformed calls really fail in the tools
        redundant = [(c["kind"], c["query"]) for c in t["calls"] if c["role"] == "redundant"]
        assert not set(redundant) & set(plan[len(needed):])  # a "redundant" call never supplies a missing step


def test_default_rates_reproduce_the_paper_picture(default_trajs):
    s = summarize(default_trajs)
    assert abs(s["math"]["redundant_call_share"] - 0.31) < 0.03, s["math"]  # paper: ~31%
    assert abs(s["qa"]["redundant_call_share"] - 0.52) < 0.03, s["qa"]  # paper: ~52%
    assert s["all"]["fixable_by_one_call"] > 0.58, s["all"]  # paper: > 58% of wrong trajectories
    for domain in ("math", "qa"):
        for flaw in FLAWS:
            assert s[domain][f"{flaw}_rate"] > 0.03, (domain, flaw)  # every behaviour occurs


def test_rates_are_honoured(task, toolset):
    examples = task.load("train")[:1500]
    rates = FlawRates(redundant=0.4, insufficient=0.3, aborted=0.2, erroneous=0.1)
    trajs = write_teacher_trajectories(examples, toolset, rates, seed=1)
    with_plan = [t for t, e in zip(trajs, examples) if e.plan]

    def rate(ts, flaw):
        return sum(flaw in t["flaws"] for t in ts) / len(ts)

    assert abs(rate(with_plan, "insufficient") - 0.3) < 0.04
    assert abs(rate(with_plan, "erroneous") - 0.1) < 0.03
    assert abs(rate([t for t, e in zip(trajs, examples) if not e.plan], "erroneous") - 0.1) < 0.04
    eligible = [t for t, e in zip(trajs, examples) if not e.plan or t["missing_calls"] < len(e.plan)]
    assert abs(rate(eligible, "redundant") - 0.4) < 0.04
    with_calls = [t for t in trajs if any(c["role"] != "aborted" for c in t["calls"])]
    assert abs(rate(with_calls, "aborted") - 0.2) < 0.04


def test_zero_rates_give_the_minimal_plan(task, toolset):
    examples = task.load("train")[:300]
    trajs = write_teacher_trajectories(examples, toolset, FlawRates(), seed=0)
    for t, e in zip(trajs, examples):
        assert t["flaws"] == [] and t["correct"] and t["answer"] == e.answer
        assert [(c["kind"], c["query"]) for c in t["calls"]] == [(p.tool, p.query) for p in e.plan]


def test_deterministic_and_order_free(task, toolset):
    examples = task.load("train")[:200]
    a = write_teacher_trajectories(examples, toolset, seed=5)
    b = write_teacher_trajectories(list(reversed(examples)), toolset, seed=5)
    c = write_teacher_trajectories(examples, toolset, seed=6)
    assert a == list(reversed(b))
    assert [t["response_text"] for t in a] != [t["response_text"] for t in c]
    two = write_teacher_trajectories(examples[:10], toolset, seed=5, samples_per_example=2)
    assert [t["example_id"] for t in two] == [e.id for e in examples[:10] for _ in range(2)]
    assert len({t["id"] for t in two}) == 20


def test_bad_rates_are_named():
    with pytest.raises(ValueError, match="redundant"):
        FlawRates(redundant=1.5)
    with pytest.raises(ValueError, match="qa.*redundnt"):
        FlawedTeacher(rates={"qa": {"redundnt": 0.1}})
    with pytest.raises(ValueError, match="physics"):
        FlawedTeacher(rates={"physics": {}})


def test_config_file_instantiates(task, toolset):
    from hydra.utils import instantiate

    from etagent.config import validate

    cfg = OmegaConf.create({"seed": 0, "seed_agent": OmegaConf.load(CONF / "seed_agent" / "flawed_teacher.yaml")})
    validate(cfg)
    teacher = instantiate(cfg.seed_agent)
    assert isinstance(teacher, FlawedTeacher)
    examples = task.load("train")[:50]
    assert teacher.write(examples, toolset) == write_teacher_trajectories(examples, toolset, None, seed=0)


def test_flaw_labels_agree_with_exact_behaviour_labelling(task, default_trajs):
    """The teacher's own labels equal what etagent.behaviour finds from the text alone."""
    from etagent.behaviour import label_behaviour
    from etagent.records import ToolCall, Trajectory

    examples = {e.id: e for e in task.load("train")}
    for t in default_trajs:
        ex = examples[t["example_id"]]
        results = [s.content.strip() for s in GRAMMAR.parse(t["response_text"]).segments if s.kind == protocol.RESULT]
        calls = [ToolCall(c["kind"], c["query"], r, c["status"]) for c, r in zip(t["calls"], results)]
        traj = Trajectory(id=t["id"], example_id=ex.id, group_id=ex.id, response_text=t["response_text"],
                          tool_calls=calls, answer=t["answer"], score=GRADER.grade(ex, t["answer"]))
        b = label_behaviour(traj, ex, **ENV)
        assert {f for f in FLAWS if b[f]} == set(t["flaws"]), (t["response_text"], b)
        assert b["n_redundant"] == sum(c["role"] == "redundant" for c in t["calls"])
        assert b["n_aborted"] == sum(c["role"] == "aborted" for c in t["calls"])


def test_teacher_restates_the_evidence_it_answers_from(task, toolset, default_trajs):
    examples = {e.id: e for e in task.load("train")}
    searched = [t for t in default_trajs if t["domain"] == "qa" and any(c["role"] == "needed" for c in t["calls"])]
    right = [t for t in searched if t["correct"]]
    wrong = [t for t in searched if "erroneous" in t["flaws"]]
    assert right and wrong
    for t in right:
        ex = examples[t["example_id"]]
        thoughts = [s.content for s in GRAMMAR.parse(t["response_text"]).segments if s.kind == "think"]
        # each needed hop's expected value is restated in a thought right after its result
        for step in ex.plan:
            if any(c["query"] == step.query and c["role"] == "needed" for c in t["calls"]):
                assert any(step.expect in th and th.endswith(".") for th in thoughts), (t["response_text"], step)
    # a wrong conclusion never follows a restated fact: wrong texts are those of the plain teacher
    plain = {t["id"]: t for t in write_teacher_trajectories([examples[t["example_id"]] for t in wrong + right[:5]],
                                                            toolset, rates=None, seed=0, restate_evidence=False)}
    assert all(plain[t["id"]]["response_text"] == t["response_text"] for t in wrong)
    assert all(len(plain[t["id"]]["response_text"]) < len(t["response_text"]) for t in right[:5])
