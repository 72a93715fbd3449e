"""experiments/sweeps/mechanism.sh end to end at smoke size: a seed agent per seed, groups that reuse
its world + seed (or et_agent's flywheel + ASE), resumable, and etagent-compare's pairing by seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "sweeps" / "mechanism.sh"
# smoke, shrunk further: the script's logic is under test, not the method
SHRINK = ("seed_sft.max_steps=4 flywheel.max_rounds=1 flywheel.questions_per_round=4 eval.max_examples=8 "
          "schedule.stages=[{steps:1,sample_questions:4,k:2,select:2},{steps:1,sample_questions:4,k:2,select:2}] "
          "rl.prompts_per_step=2 rl.group_size=2")


def _env(tmp_path: Path, **kw: str) -> dict[str, str]:
    return {**os.environ, "PY": sys.executable, "PRESET": "smoke", "SEEDS": "0 1", "JOBS": "2", "THREADS": "1",
            "STUDY_GROUPS": "et_agent plain_grpo one_stage", "SWEEP_DIR": str(tmp_path / "sweep"),
            "RESULTS": str(tmp_path / "results"), "COMPARE_ARGS": "--bootstrap 200", "EXTRA": SHRINK, **kw}


def _run(env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _summary(run: Path, stage: str) -> dict:
    return json.loads((run / stage / ".done.json").read_text())["summary"]


@pytest.mark.slow
def test_mechanism_sweep_pairs_every_group_on_its_seed_agent(tmp_path: Path):
    r = _run(_env(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sweep = tmp_path / "sweep"
    for name in ("seed_agent", "et_agent", "plain_grpo", "one_stage"):
        for s in (0, 1):
            assert (sweep / name / f"seed_{s}" / "summary.json").exists(), name
            assert (sweep / name / f"seed_{s}.log").exists()
    # every group of a seed runs on that seed's world and seed agent; each seed has its own
    for s in (0, 1):
        base = sweep / "seed_agent" / f"seed_{s}"
        for name in ("et_agent", "plain_grpo", "one_stage"):
            run = sweep / name / f"seed_{s}"
            assert (run / "world" / "test.jsonl").read_bytes() == (base / "world" / "test.jsonl").read_bytes()
            assert (run / "seed" / "final" / "model.safetensors").read_bytes() == \
                   (base / "seed" / "final" / "model.safetensors").read_bytes()
    assert (sweep / "seed_agent/seed_0/world/test.jsonl").read_bytes() != (sweep / "seed_agent/seed_1/world/test.jsonl").read_bytes()
    # plain GRPO: RL from the seed agent, no flywheel or ASE; one_stage: et_agent's flywheel + ASE, one RL stage
    plain, one, full = (sweep / n / "seed_0" for n in ("plain_grpo", "one_stage", "et_agent"))
    assert _summary(plain, "rl")["start"] == "seed"
    assert _summary(plain / "rl", "stage_1")["start_policy"] == str(plain / "seed" / "final")
    assert not (plain / "flywheel").exists() and not (plain / "ase").exists()
    assert (one / "flywheel" / "pool.jsonl").read_bytes() == (full / "flywheel" / "pool.jsonl").read_bytes()
    assert sorted(p.name for p in (one / "rl").glob("stage_*")) == ["stage_1"]
    assert _summary(one / "rl", "stage_1")["start_policy"] == str(one / "ase" / "final")
    budgets = {n: (_summary(sweep / n / "seed_0", "rl")["rollouts"], _summary(sweep / n / "seed_0", "rl")["updates"])
               for n in ("et_agent", "plain_grpo", "one_stage")}
    assert len(set(budgets.values())) == 1, budgets
    # compare: paired by seed, nothing unpaired
    js = json.loads((tmp_path / "results" / "compare.json").read_text())
    comps = js["paired"]["comparisons"]
    decisive = next(c for c in comps if "experiment=et_agent" in c["a"] and "experiment=plain_grpo" in c["b"])
    assert decisive["seeds"] == [0, 1] and decisive["n_pairs"] == 2 and js["paired"]["unpaired"] == []
    assert {c["kind"] for c in comps} == {"vs_reference", "vs_target"} and len(comps) == 3
    assert decisive["by_type"], "per question type rows from the world's meta.type"
    assert {g["metric"] for g in js["paired"]["goals"]} == {"efficiency", "correctness"}
    assert "## Paired differences (runs paired by seed)" in (tmp_path / "results" / "compare.md").read_text()
    # resumable: a second call finds every run finished and only compares again
    r2 = _run(_env(tmp_path), timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.count("finished earlier") == 8 and "done " not in r2.stdout


@pytest.mark.parametrize("kw,msg", [
    ({"STUDY_GROUPS": "et_agent plain_grpo not_an_experiment"}, "experiment 'not_an_experiment' not found"),
    ({"PRESET": "not_a_preset"}, "preset 'not_a_preset' not found"),
    ({"STUDY_GROUPS": "et_agent no_pareto"}, "REFERENCE=plain_grpo is not in STUDY_GROUPS"),
])
def test_mechanism_sweep_fails_clearly_before_any_run(tmp_path: Path, kw, msg):
    r = _run(_env(tmp_path, **kw), timeout=60)
    assert r.returncode == 2 and msg in r.stderr
    assert not (tmp_path / "sweep").exists()


def test_mechanism_sweep_plan_reuses_the_right_stages(tmp_path: Path):
    """DRY_RUN=1: every group's job and what it reuses (the no_flywheel path included), nothing run."""
    env = _env(tmp_path, DRY_RUN="1", EXTRA="", STUDY_GROUPS="et_agent plain_grpo no_flywheel no_pareto one_stage et_agent_sigma0")
    r = _run(env, timeout=60)
    assert r.returncode == 0, r.stderr
    sweep = tmp_path / "sweep"
    plan = [line.split() for line in r.stdout.splitlines() if line.startswith("[mechanism] plan ")]
    jobs = {(p[2], p[3]): p[4:] for p in plan}
    assert len(jobs) == len(plan) == 2 * 8  # per seed: the seed agent, rft_only and the six groups
    assert jobs[("seed_agent", "seed=1")] == ["preset=smoke", "stages=[world,seed,eval]"]
    for s in (0, 1):
        seed_agent = f"init_from={sweep}/seed_agent/seed_{s}"
        for name in ("et_agent", "plain_grpo"):
            assert jobs[(name, f"seed={s}")] == ["preset=smoke", f"experiment={name}", seed_agent, "init_stages=[world,seed]"]
        assert jobs[("rft_only", f"seed={s}")] == ["preset=smoke", "experiment=rft_only", "stages=[world,seed,flywheel,ase]",
                                                  seed_agent, "init_stages=[world,seed]"]
        for name, base in (("no_pareto", "et_agent"), ("one_stage", "et_agent"), ("et_agent_sigma0", "et_agent"),
                           ("no_flywheel", "rft_only")):
            assert jobs[(name, f"seed={s}")] == ["preset=smoke", f"experiment={name}", f"init_from={sweep}/{base}/seed_{s}",
                                                 "init_stages=[world,seed,flywheel,ase]"]
    # phases: every seed agent before any group, every group a run reuses before it
    order = [(p[2], p[3]) for p in plan]
    for s in (0, 1):  # within a seed: its seed agent, then what reuses it, then what reuses those
        assert order.index(("seed_agent", f"seed={s}")) < min(
            order.index((g, f"seed={s}")) for g in ("et_agent", "plain_grpo", "rft_only"))
        assert max(order.index((g, f"seed={s}")) for g in ("et_agent", "rft_only")) < min(
            order.index((g, f"seed={s}")) for g in ("no_pareto", "one_stage", "et_agent_sigma0", "no_flywheel"))
    # seed-major: seed 0 is complete before seed 1 starts (a sweep cut short leaves whole paired seeds)
    assert max(i for i, (_, s) in enumerate(order) if s == "seed=0") < min(i for i, (_, s) in enumerate(order) if s == "seed=1")