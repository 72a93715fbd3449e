"""experiments/mechanism/world_checks.py on a fabricated run directory with hand-computed answers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from omegaconf import OmegaConf

from conftest import REPO, compose
from etagent import protocol
from run_env import GRAMMAR
from etagent.records import Example, PlanStep, ToolCall, Trajectory, write_jsonl

SCRIPT = REPO / "experiments" / "mechanism" / "world_checks.py"


def _load():
    spec = importlib.util.spec_from_file_location("world_checks", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _traj(ex: Example, calls: list[tuple[str, str, str]], answer: str, score: float, prefix: str = "") -> Trajectory:
    """A trajectory whose text makes ``calls`` (kind, query, result) and answers ``answer``."""
    text = prefix + "".join(GRAMMAR.format_tool_turn(k, q, r) for k, q, r in calls) + protocol.format_answer(answer)
    return Trajectory(id=f"{ex.id}#0", example_id=ex.id, group_id=ex.id, response_text=text,
                      tool_calls=[ToolCall(k, q, r, "ok") for k, q, r in calls], answer=answer, score=score)


def _ex(i: str, qtype: str, answer: str, plan: list[PlanStep], domain: str = "qa") -> Example:
    return Example(id=i, question=f"q {i}?", answers=[answer], domain=domain, source="calibration-" + domain,
                   split="test", plan=plan, meta={"type": qtype})


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """Four test questions: two zero-call, a python one, a 3-hop chain; the seed's greedy answers:
    copy right without a call, recall right with a (redundant) search, math right with a
    redundant verification, the chain stopped one hop short (wrong: insufficient)."""
    run = tmp_path / "run"
    (run / "world").mkdir(parents=True)
    # the run's recorded config: the checks build its grader and grammar from it
    (run / "config.yaml").write_text(OmegaConf.to_yaml(compose(["preset=mechanism"], run_dir=run)))
    copy = _ex("z1", "math_copy", "7", [], "math")
    recall = _ex("z2", "qa_recall", "Tavel", [])
    math = _ex("m1", "math_tool", "12", [PlanStep("python", "print(3*4)", "12")], "math")
    chain = _ex("h3", "qa_3hop", "Venz", [PlanStep("search", "Quor Labs founder", "Zor Kell"),
                                           PlanStep("search", "Zor Kell birthplace", "Tavel"),
                                           PlanStep("search", "Tavel country", "Venz")])
    write_jsonl(run / "world" / "test.jsonl", [copy, recall, math, chain])
    seed = [
        _traj(copy, [], "7", 1.0),
        _traj(recall, [("search", "Quor Labs headquarters", "Quor Labs headquarters: Tavel.")], "Tavel", 1.0),
        _traj(math, [("python", "print(3*4)", "12"), ("python", "print(4*3)", "12")], "12", 1.0),
        _traj(chain, [("search", "Quor Labs founder", "Quor Labs founder: Zor Kell."),
                      ("search", "Zor Kell birthplace", "Zor Kell birthplace: Tavel.")], "Tavel", 0.0),
    ]
    (run / "eval" / "seed").mkdir(parents=True)
    write_jsonl(run / "eval" / "seed" / "trajectories.jsonl", seed)
    # a later policy: plan-optimal math, the chain completed
    rl = [seed[0], seed[1], _traj(math, [("python", "print(3*4)", "12")], "12", 1.0),
          _traj(chain, [("search", p.query, f"{p.query}: {p.expect}.") for p in chain.plan], "Venz", 1.0)]
    (run / "eval" / "rl_stage_1").mkdir(parents=True)
    write_jsonl(run / "eval" / "rl_stage_1" / "trajectories.jsonl", rl)
    # calls forbidden: the copy question right, the recall question wrong
    forced = [_traj(copy, [], "7", 1.0, prefix="<think>I know this.</think>\n"),
              _traj(recall, [], "Kovo", 0.0, prefix="<think>I know this.</think>\n")]
    (run / "world_checks").mkdir()
    write_jsonl(run / "world_checks" / "forced_no_call.jsonl", forced)
    return run


def test_world_checks_numbers_by_hand(run):
    wc = _load()
    res = wc.run_checks(run, "seed", forced=True)
    top = res["policies"]["seed"]["all"]
    assert top["n"] == 4
    assert top["redundant_rate"] == pytest.approx(2 / 4)  # the recall search and the math verification
    assert top["insufficient_rate"] == pytest.approx(1 / 4)  # the chain one hop short
    assert top["efficiency"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert top["plan_optimal_efficiency"] == pytest.approx((1 + 1 + 1 + 0) / 4)
    assert top["headroom"] == pytest.approx(0.125)
    # decisive calls: the three complete plans (two empty ones, the math) are right, the incomplete chain wrong
    assert (top["complete_plan_share"], top["success_given_complete"], top["success_given_incomplete"]) == (0.75, 1.0, 0.0)
    per_type = res["policies"]["seed"]
    assert per_type["math_tool"]["headroom"] == pytest.approx(0.5) and per_type["qa_3hop"]["insufficient_rate"] == 1.0
    z = res["zero_call"]["all"]
    assert (z["n"], z["n_no_call"], z["success_no_call"], z["success_with_calls"]) == (2, 1, 1.0, 1.0)
    assert (z["n_forced"], z["success_forced_no_call"], z["forced_still_called"]) == (2, 0.5, 0.0)
    assert res["zero_call"]["qa_recall"]["success_forced_no_call"] == 0.0
    assert res["plan_lengths"]["all"] == {"0": 2, "1": 1, "3": 1}
    c = res["checks"]
    met = {k.split(".")[0]: v["met"] for k, v in c.items()}
    assert met == {"1a": True, "1b": False, "2": True, "3a": True, "3b": True, "4": True}
    assert c["4. headroom: plan-optimal efficiency - efficiency"]["value"] == pytest.approx(0.125)
    # every evaluated policy gets its table; the files are written
    rl = res["policies"]["rl_stage_1"]["all"]
    assert rl["headroom"] == pytest.approx(0.0) and rl["insufficient_rate"] == 0.0 and rl["correct"] == 1.0
    saved = json.loads((run / "world_checks.json").read_text())
    assert saved["checks"].keys() == c.keys()
    md = (run / "world_checks.md").read_text()
    assert "| 4. headroom" in md and "12.5 points" in md and "Policy `rl_stage_1`" in md


def test_forced_cache_must_match_the_questions(run):
    wc = _load()
    write_jsonl(run / "world_checks" / "forced_no_call.jsonl", [])
    with pytest.raises(SystemExit, match="zero-call"):
        wc.run_checks(run, "seed", forced=True)
    res = wc.run_checks(run, "seed", forced=False)  # check 1b not measured: reported as missing, not met
    assert res["zero_call"]["all"]["success_forced_no_call"] is None
    assert not res["checks"]["1b. zero-call: success with calls forbidden"]["met"]


def test_missing_eval_is_named(run):
    wc = _load()
    with pytest.raises(SystemExit, match="ase/trajectories.jsonl missing"):
        wc.run_checks(run, "ase", forced=False)


def test_world_checks_on_a_smoke_run_with_real_forced_rollouts(tmp_path: Path):
    """The calibration world end to end at smoke size: world, seed agent, eval, then the checks with
    check 1b's forced no-call rollouts run for real by the run's own policy, tools, grader and grammar."""
    import os
    import subprocess
    import sys

    run = tmp_path / "smoke_calibration"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "etagent", "preset=smoke", "task=calibration", "seed_agent=calibration",
           "stages=[world,seed,eval]", "logger=none", f"hydra.run.dir={run}"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = _load().run_checks(run, "seed", forced=True)
    examples = [json.loads(line) for line in (run / "world" / "test.jsonl").read_text().splitlines()]
    zero = [e for e in examples if not e["plan"]]
    # plan lengths: every test question counted once under its plan's number of calls
    assert sum(res["plan_lengths"]["all"].values()) == len(examples) == 32
    assert res["plan_lengths"]["all"]["0"] == len(zero) > 0
    assert {str(e["meta"]["type"]) for e in zero} <= {"qa_copy", "qa_recall"}
    # check 1b ran: one forced greedy no-call rollout per zero-call question, cached beside the run
    forced = (run / "world_checks" / "forced_no_call.jsonl").read_text().splitlines()
    assert len(forced) == len(zero) and res["zero_call"]["all"]["n_forced"] == len(zero)
    assert all(json.loads(t)["group_id"].startswith("forced:") for t in forced)
    assert len(res["checks"]) == 6  # 1a, 1b, 2, 3a, 3b, 4: each measured, with its number
    for name, c in res["checks"].items():
        if name.startswith("1a") and res["zero_call"]["all"]["n_no_call"] == 0:
            assert c["value"] is None and not c["met"]  # a 40-step seed calls on every one: nothing to rate
            continue
        assert c["value"] is not None and -1.0 <= c["value"] <= 1.0 and c["value_text"], name
    assert (run / "world_checks.md").exists() and "| check | measured | goal | met |" in (run / "world_checks.md").read_text()


def test_seed_checks_table_marks_what_missed_its_goal(tmp_path: Path):
    """experiments/mechanism/seed_checks.py: one row per seed agent with checks; a missed goal in bold."""
    spec = importlib.util.spec_from_file_location("seed_checks", REPO / "experiments" / "mechanism" / "seed_checks.py")
    sc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sc)
    sweep = tmp_path / "sweep"
    for seed, red in ((0, 0.416), (3, 0.12)):
        d = sweep / "seed_agent" / f"seed_{seed}"
        d.mkdir(parents=True)
        checks = {"3a. redundant trajectories": {"value": red, "goal": 0.2, "met": red >= 0.2, "value_text": f"{100 * red:.1f} %"}}
        (d / "world_checks.json").write_text(json.dumps({"checks": checks}))
    (sweep / "seed_agent" / "seed_1").mkdir()  # no checks yet: left out
    (sweep / "seed_agent" / "seed_0.log").write_text("a job log beside the run dirs\n")
    rows = sc.collect(sweep)
    assert [r["seed"] for r in rows] == [0, 3] and "budgets" not in rows[0]
    md = sc.markdown(rows, "et_agent")
    assert "| 0 | 41.6 % |" in md and "| 3 | **12.0 %** |" in md and "| 0 | - | - | - | - |" in md
    assert sc.main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "seed_checks.json").read_text())[1]["checks"]["3a. redundant trajectories"]["met"] is False
