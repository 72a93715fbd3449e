"""The mechanism study's configurations (issue 22): equal RL budgets, plain GRPO from the seed agent,
the one-stage ablation derived from the composed stages, and the Hydra override rule they rely on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, SHARED, compose
from etagent.config.validate import ConfigError
from etagent.rl.curriculum import Schedule, StageSpec, merge_stages, rl_budget

# the groups whose RL must spend the same compute (et_agent_released has its own recipe)
EQUAL_BUDGET = ("et_agent", "plain_grpo", "no_pareto", "no_flywheel", "one_stage", "et_agent_sigma0")


def _sets_schedule(path: Path) -> bool:
    data = yaml.safe_load(path.read_text()) or {}
    defaults = [str(d) for d in data.get("defaults") or []]
    return "schedule" in data or any("schedule" in d for d in defaults)


# every preset that defines a schedule (a value or a group override), found on disk so a new
# preset (e.g. preset=mechanism) is covered without editing this list
SCHEDULE_PRESETS = sorted(p.stem for p in (CONF / "preset").glob("*.yaml") if _sets_schedule(p))


def _built(overrides: list[str]):
    cfg = compose(overrides)
    return cfg, instantiate(cfg.schedule), instantiate(cfg.rl)


def test_the_preset_list_covers_smoke():
    assert "smoke" in SCHEDULE_PRESETS


@pytest.mark.parametrize("preset", [None, *SCHEDULE_PRESETS])
def test_study_groups_spend_the_same_rl_rollouts_and_updates(preset):
    extra = [f"preset={preset}"] if preset else []
    budgets, stage_counts = {}, {}
    for exp in EQUAL_BUDGET:
        cfg, schedule, rl = _built([f"experiment={exp}", *extra])
        budgets[exp] = rl_budget(schedule, rl, int(cfg.task.n_train))
        stage_counts[exp] = len(schedule.stages)
    ref = budgets["et_agent"]
    assert ref["rollouts"] > 0 and ref["updates"] > 0
    for exp, b in budgets.items():
        assert {k: b[k] for k in ("rollouts", "sample_rollouts", "train_rollouts", "updates", "steps")} == \
               {k: ref[k] for k in ("rollouts", "sample_rollouts", "train_rollouts", "updates", "steps")}, exp
    assert stage_counts["one_stage"] == 1
    assert stage_counts["et_agent"] == stage_counts["plain_grpo"] >= 2


def test_plain_grpo_is_seed_to_correctness_grpo_on_random_questions(tmp_path):
    cfg = compose(["experiment=plain_grpo"])
    assert list(cfg.stages) == ["world", "seed", "rl", "eval", "report"]  # no flywheel, no ASE
    assert cfg.schedule.start == "seed" and compose(["experiment=et_agent"]).schedule.start == "ase"
    assert cfg.reward.mode == "correctness"
    sampler = instantiate(cfg.sampling)
    assert type(sampler).__name__ == "RandomSampler" and sampler.filter_mixed is False
    # the same stage list as the full method (sigmas follow the reward: 0 for correctness)
    et = compose(["experiment=et_agent"])
    keys = ("steps", "sample_questions", "k", "select")
    assert [{k: s[k] for k in keys} for s in cfg.schedule.stages] == [{k: s[k] for k in keys} for s in et.schedule.stages]


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], node


@pytest.mark.parametrize("preset", [None, "mechanism"])
def test_et_agent_sigma0_is_et_agent_with_the_shaping_switched_off(preset, tmp_path):
    """The exploratory group of DESIGN.md amendment 2 isolates the reward: against et_agent only the
    run name and the two sigmas (and the stage sigmas that follow them) may differ."""
    extra = [f"preset={preset}"] if preset else []
    flat = {}
    for exp in ("et_agent", "et_agent_sigma0"):
        cfg = compose([f"experiment={exp}", *extra], run_dir=tmp_path)
        flat[exp] = dict(_leaves(OmegaConf.to_container(cfg, resolve=True)))
    assert flat["et_agent"].keys() == flat["et_agent_sigma0"].keys()
    differ = {k for k in flat["et_agent"] if flat["et_agent"][k] != flat["et_agent_sigma0"][k]}
    n_stages = 3 if preset == "mechanism" else 2
    stage_sigmas = {f"schedule.stages.{i}.{s}" for i in range(n_stages) for s in ("sigma_tool", "sigma_len")}
    # logger.name is the run name (an interpolation of run_name)
    assert differ == {"run_name", "logger.name", "reward.sigma_tool", "reward.sigma_len", *stage_sigmas}
    assert flat["et_agent_sigma0"]["logger.name"] == flat["et_agent_sigma0"]["run_name"] == "et_agent_sigma0"
    assert flat["et_agent"]["reward.sigma_tool"] > 0 and flat["et_agent"]["reward.sigma_len"] > 0
    assert all(flat["et_agent_sigma0"][k] == 0 for k in stage_sigmas | {"reward.sigma_tool", "reward.sigma_len"})
    assert flat["et_agent_sigma0"]["reward.mode"] == "efficiency"  # the factors exist and equal 1


def test_schedule_one_stage_option_builds_the_stage_it_always_had():
    _, schedule, _ = _built(["schedule=one_stage"])
    assert schedule.stages == [StageSpec(steps=32, sample_questions=128, k=8, select=64, sigma_tool=0.2, sigma_len=0.5)]
    _, default, _ = _built([])
    assert len(default.stages) == 2 and default.merge_stages is False and default.start == "ase"


@pytest.mark.parametrize("preset", SCHEDULE_PRESETS)
def test_one_stage_follows_the_presets_stage_list(preset):
    cfg, schedule, _ = _built(["experiment=one_stage", f"preset={preset}"])
    _, full, _ = _built(["experiment=et_agent", f"preset={preset}"])
    (one,) = schedule.stages
    assert one.steps == sum(s.steps for s in full.stages)
    assert one.select == sum(s.select for s in full.stages)
    assert one.k == full.stages[0].k


def test_merge_stages_rules():
    a = StageSpec(steps=3, sample_questions=10, k=4, select=5, sigma_tool=0.2, sigma_len=0.5)
    merged = merge_stages([a, a, a])
    assert (merged.steps, merged.sample_questions, merged.select, merged.k) == (9, 30, 15, 4)
    assert merge_stages([StageSpec(epochs=3, k=8, select=8), StageSpec(epochs=3, k=8, select=8)]).epochs == 3
    # a stage re-sampling every question: the merged one does too
    assert merge_stages([a, StageSpec(steps=3, k=4, select=5, sigma_tool=0.2, sigma_len=0.5)]).sample_questions is None
    with pytest.raises(ValueError, match="differ in `k`"):
        merge_stages([a, StageSpec(steps=3, sample_questions=10, k=8, select=5, sigma_tool=0.2, sigma_len=0.5)])
    with pytest.raises(ValueError, match="differ in `sigma_len`"):  # e.g. a stage-2-at-sigma-0 schedule
        merge_stages([a, StageSpec(steps=3, sample_questions=10, k=4, select=5, sigma_tool=0.2, sigma_len=0.0)])
    with pytest.raises(ValueError, match="needs `select`"):
        merge_stages([a, StageSpec(steps=3, sample_questions=10, k=4, sigma_tool=0.2, sigma_len=0.5)])
    with pytest.raises(ValueError, match="needs `steps`"):
        merge_stages([a, StageSpec(epochs=2, k=4, select=5, sigma_tool=0.2, sigma_len=0.5)])
    assert Schedule(stages=[dict(steps=2, k=4, select=3)] * 2, merge_stages=True).stages[0].steps == 4
    with pytest.raises(ValueError, match="schedule.start"):
        Schedule(start="rl")


def test_rl_budget_counts_rollouts_and_updates():
    from etagent.rl.grpo import GRPOConfig

    rl = GRPOConfig(prompts_per_step=4, group_size=4, ppo_epochs=2, mini_batches=2)
    s = Schedule(stages=[dict(steps=3, sample_questions=10, k=4, select=5), dict(steps=2, sample_questions=50, k=2)])
    b = rl_budget(s, rl, n_train=20)  # the second pool is capped at the 20 questions there are
    assert b == {"stages": 2, "steps": 5, "sample_rollouts": 10 * 4 + 20 * 2, "train_rollouts": 5 * 16,
                 "updates": 5 * 4, "rollouts": 80 + 80}
    with pytest.raises(ValueError, match="no `steps`"):
        rl_budget(Schedule(stages=[dict(epochs=3)]), rl, 20)


def _compose_in(conf_dir: Path, overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return hcompose(config_name="config", overrides=[*overrides, f"paths.shared_dir={SHARED}"],
                            return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_hydra_override_rule_the_one_stage_experiment_relies_on(tmp_path):
    """Of two config-file `override /schedule: X` lines, the one later in the defaults list wins
    (presets come after experiments); the command line wins over both; a value an experiment sets
    merges after whichever option won. So the one-stage ablation is a value, not a group override."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "preset" / "three.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /schedule: three_stage\nrun_name: three\n")
    (conf / "experiment" / "group_one_stage.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /schedule: one_stage\nschedule:\n  merge_stages: false\n")
    # the preset's override beats the experiment's: a group override in an experiment is silently lost
    c = _compose_in(conf, ["experiment=group_one_stage", "preset=three"])
    assert c.hydra.runtime.choices.schedule == "three_stage" and len(c.schedule.stages) == 3
    # the command line beats the preset
    c = _compose_in(conf, ["schedule=one_stage", "preset=three"])
    assert c.hydra.runtime.choices.schedule == "one_stage"
    # the value set by experiment=one_stage survives the preset's override: its 3 stages become one
    c = _compose_in(conf, ["experiment=one_stage", "preset=three"])
    assert c.hydra.runtime.choices.schedule == "three_stage" and c.schedule.merge_stages is True
    (one,) = instantiate(c.schedule).stages
    assert one.epochs == 3 and one.select == 3 * 8000
    # a preset that sets the stage list as values (smoke) also overwrites a group option's list:
    # the former fixed one_stage list would have been replaced by smoke's two stages
    c = _compose_in(conf, ["experiment=group_one_stage", "preset=smoke"])
    assert c.hydra.runtime.choices.schedule == "one_stage" and len(c.schedule.stages) == 2


class _Ctx:
    """The part of RunContext that start_policy reads."""

    def __init__(self, run_dir: Path, kind: str = "scratch"):
        from etagent.pipeline.context import RunContext

        cfg = OmegaConf.create({"model": {"kind": kind, "path": str(run_dir / "hub_model")}})
        self._ctx = RunContext(cfg=cfg, run_dir=run_dir, tracker=None)

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def test_rl_starts_from_the_policy_schedule_start_names(tmp_path):
    from etagent.pipeline.stage_rl import start_policy

    for name in ("seed", "ase"):
        (tmp_path / name / "final").mkdir(parents=True)
        (tmp_path / name / "final" / "config.json").write_text("{}")
    ctx = _Ctx(tmp_path)
    assert start_policy(ctx, "ase") == tmp_path / "ase" / "final"
    assert start_policy(ctx, "seed") == tmp_path / "seed" / "final"   # not the newest policy
    shutil.rmtree(tmp_path / "ase")
    with pytest.raises(ConfigError, match="schedule.start=ase: the run has no `ase` policy"):
        start_policy(ctx, "ase")  # never falls back to the seed agent
    bare = tmp_path / "pretrained"
    bare.mkdir()
    assert start_policy(_Ctx(bare, kind="pretrained"), "seed") == bare / "hub_model"  # the model is the seed
