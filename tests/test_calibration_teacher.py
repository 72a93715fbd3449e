"""The mechanism world's teacher (seed_agent=calibration): per-type flaw rates hold by construction,
the flaws are what they claim (insufficient = exactly one call short, redundant = calls after the
plan is done), the exact behaviour labels agree, and the configured habits are the greedy modes."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import CONF
from etagent import protocol
from etagent.data.synthetic.calibration import QTYPES, CalibrationTask
from etagent.seed.calibration import CalibrationTeacher
from etagent.seed.teacher import FLAWS
from test_synthetic import make_toolset
from run_env import DOMAINS, ENV, GRADER, GRAMMAR


@pytest.fixture(scope="module")
def task() -> CalibrationTask:
    return CalibrationTask(seed=0, n_train=2000, n_dev=50, n_test=50, domains=DOMAINS)


@pytest.fixture(scope="module")
def toolset(task, tmp_path_factory):
    ts = make_toolset(task, tmp_path_factory.mktemp("world"))
    yield ts
    ts.close()


def conf_rates() -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "seed_agent" / "calibration.yaml").rates)


@pytest.fixture(scope="module")
def default_trajs(task, toolset):
    """The configured teacher on the train split: what the mechanism seed stage trains on."""
    return CalibrationTeacher(conf_rates(), seed=0).write(task.load("train"), toolset)


def _rate(ts, flaw):
    return sum(flaw in t["flaws"] for t in ts) / len(ts)


def test_texts_parse_and_results_are_real(task, toolset, default_trajs):
    examples = {e.id: e for e in task.load("train")}
    by_call: dict[tuple[str, str], str] = {}
    for t in default_trajs:
        parsed = GRAMMAR.parse(t["response_text"])
        allowed = {"empty_call"} if any(c["role"] == "aborted" and c["kind"] == "search" for c in t["calls"]) else set()
        assert {e.code for e in parsed.errors} <= allowed, (t["response_text"], parsed.errors)
        assert parsed.answer() == t["answer"] and t["plan_ok"]
        assert [(c.kind, c.content) for c in parsed.calls()] == [(c["kind"], c["query"]) for c in t["calls"]]
        results = [s for s in parsed.segments if s.kind == protocol.RESULT]
        for c, r in zip(t["calls"], results):
            assert by_call.setdefault((c["kind"], c["query"]), r.render()) == r.render()
        assert (GRADER.grade(examples[t["example_id"]], t["answer"]) == 1.0) == t["correct"]
    sample = list(by_call)[:: max(1, len(by_call) // 200)]
    for call, res in zip(sample, toolset.execute(sample)):
        assert by_call[call] == GRAMMAR.format_result(res.output)


def test_flaws_are_what_they_claim(task, default_trajs):
    examples = {e.id: e for e in task.load("train")}
    for t in default_trajs:
        ex = examples[t["example_id"]]
        plan = [(p.tool, p.query) for p in ex.plan]
        roles = [c["role"] for c in t["calls"]]
        needed = [(c["kind"], c["query"]) for c in t["calls"] if c["role"] == "needed"]
        assert needed == plan[: len(needed)]
        if "insufficient" in t["flaws"]:  # exactly one call short, then a wrong guess
            assert len(needed) == len(plan) - 1 and t["missing_calls"] == 1 and not t["correct"]
        else:
            assert needed == plan
        # redundant calls come after every needed one and never make a missing step
        last_needed = max((i for i, r in enumerate(roles) if r == "needed"), default=-1)
        for i, c in enumerate(t["calls"]):
            if c["role"] == "redundant":
                assert i > last_needed and (c["kind"], c["query"]) not in plan[len(needed):]
            if c["role"] == "aborted":
                assert c["status"] == "error"
        if not set(t["flaws"]) & {"insufficient", "erroneous"}:
            assert t["correct"] and t["answer"] == ex.answer


def test_flaw_labels_agree_with_exact_behaviour_labelling(task, default_trajs):
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


def test_configured_rates_hold_per_type(default_trajs):
    """By construction, each type's flaw shares match its configured rates (binomial tolerance)."""
    rates = conf_rates()
    assert set(rates) == set(QTYPES)
    for qtype, r in rates.items():
        ts = [t for t in default_trajs if t["type"] == qtype]
        n = len(ts)
        tol = lambda p: 4 * (p * (1 - p) / n) ** 0.5 + 0.01  # noqa: E731
        ins = r.get("insufficient", 0.0)
        assert abs(_rate(ts, "insufficient") - ins) < tol(ins), qtype
        assert abs(_rate(ts, "erroneous") - r.get("erroneous", 0.0)) < tol(r.get("erroneous", 0.0)), qtype
        eligible = [t for t in ts if "insufficient" not in t["flaws"] or any(c["role"] == "needed" for c in t["calls"])]
        red = r.get("redundant", 0.0)
        assert abs(_rate(eligible, "redundant") - red) < tol(red), qtype


def test_configured_habits_are_greedy_modes(default_trajs):
    """The flaws meant to show at greedy decoding are the teacher's majority choice at their decision
    point, and the good choice keeps >= 15 % of the data there (for sampling to find)."""
    def after_plan(qtype):  # trajectories that made every needed call: verify (redundant) or answer?
        ts = [t for t in default_trajs if t["type"] == qtype and "insufficient" not in t["flaws"]]
        return _rate(ts, "redundant")

    def at_last_step(qtype):  # trajectories at the plan's last call: make it or stop short?
        ts = [t for t in default_trajs if t["type"] == qtype]
        return _rate(ts, "insufficient")

    for qtype in ("math_tool", "qa_1hop"):  # the re-check habit: 2 calls where 1 is needed
        assert 0.55 < after_plan(qtype) < 0.85, qtype
    for qtype in ("qa_3hop", "qa_calc"):  # the stop-short habit
        assert 0.55 < at_last_step(qtype) < 0.70, qtype
    for qtype in ("qa_copy", "qa_recall", "qa_2hop"):  # no habit: the good behaviour is the mode
        assert after_plan(qtype) < 0.3 and at_last_step(qtype) < 0.3, qtype
    for qtype in ("qa_copy", "qa_recall"):  # zero-call answers are always right
        assert all(t["correct"] for t in default_trajs if t["type"] == qtype)


def test_rates_are_honoured_and_zero_rates_give_the_plan(task, toolset):
    examples = task.load("train")[:1400]
    rates = {q: {"redundant": 0.4, "insufficient": 0.3, "aborted": 0.2, "erroneous": 0.1} for q in QTYPES}
    trajs = CalibrationTeacher(rates, seed=1).write(examples, toolset)
    with_plan = [t for t, e in zip(trajs, examples) if e.plan]
    assert abs(_rate(with_plan, "insufficient") - 0.3) < 0.05
    assert abs(_rate(with_plan, "erroneous") - 0.1) < 0.04
    eligible = [t for t, e in zip(trajs, examples) if not e.plan or t["missing_calls"] < len(e.plan)]
    assert abs(_rate(eligible, "redundant") - 0.4) < 0.05
    zero = CalibrationTeacher({q: {} for q in QTYPES}, seed=0).write(examples[:300], toolset)
    for t, e in zip(zero, examples[:300]):
        assert t["flaws"] == [] and t["correct"] and t["answer"] == e.answer
        assert [(c["kind"], c["query"]) for c in t["calls"]] == [(p.tool, p.query) for p in e.plan]


def test_deterministic_and_order_free(task, toolset):
    examples = task.load("train")[:200]
    rates = conf_rates()
    a = CalibrationTeacher(rates, seed=5).write(examples, toolset)
    b = CalibrationTeacher(rates, seed=5).write(list(reversed(examples)), toolset)
    c = CalibrationTeacher(rates, seed=6).write(examples, toolset)
    assert a == list(reversed(b))
    assert [t["response_text"] for t in a] != [t["response_text"] for t in c]


def test_bad_config_is_named(task, toolset):
    with pytest.raises(ValueError, match="qa_3hop.*redundnt"):
        CalibrationTeacher({"qa_3hop": {"redundnt": 0.1}})
    with pytest.raises(ValueError, match="every question type"):
        CalibrationTeacher({})
    rates = {q: {} for q in QTYPES if q != "qa_calc"}
    with pytest.raises(ValueError, match="no entry for question type 'qa_calc'"):
        CalibrationTeacher(rates).write([e for e in task.load("train") if e.meta["type"] == "qa_calc"][:1], toolset)


def test_config_file_instantiates(task, toolset):
    from hydra.utils import instantiate

    from etagent.config import validate

    cfg = OmegaConf.create({"seed": 0, "seed_agent": OmegaConf.load(CONF / "seed_agent" / "calibration.yaml")})
    validate(cfg)
    teacher = instantiate(cfg.seed_agent)
    assert isinstance(teacher, CalibrationTeacher) and set(teacher.rates) == set(QTYPES)
    examples = task.load("train")[:50]
    assert teacher.write(examples, toolset) == CalibrationTeacher(conf_rates(), seed=0).write(examples, toolset)
