"""A bad value or typo fails when the config is composed, naming the key, before any run directory exists."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose
from etagent.config import ConfigError, validate
from etagent.config.preflight import sweep_jobs


def _etagent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etagent", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override,key", [
    ("rl.lr=abc", "rl.lr"),
    ("reward.mode=effciency", "reward.mode"),
    ("tools.search.backend=bm52", "tools.search.backend"),
])
def test_cfg_job_rejects_a_bad_value_naming_the_key(override, key, tmp_path):
    run_dir = tmp_path / "run"
    out = _etagent("--cfg", "job", override, f"hydra.run.dir={run_dir}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"`{key}`" in out.stderr and "config error" in out.stderr
    assert out.stdout == ""  # nothing printed as if it were a valid config
    assert not run_dir.exists()


def test_a_run_with_a_bad_value_never_creates_its_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    out = _etagent("preset=smoke", "logger=none", "reward.mode=effciency", f"hydra.run.dir={run_dir}")
    assert out.returncode == 2 and "`reward.mode`" in out.stderr
    assert not run_dir.exists()


def test_a_sweep_with_one_bad_job_fails_before_any_job_runs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    out = _etagent("-m", "preset=smoke", "logger=none", "seed=0,1", "reward.schedule=constant,linear_decy",
                   f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 2 and "`reward.schedule`" in out.stderr and "linear_decy" in out.stderr
    assert not sweep_dir.exists()


def test_sweep_jobs_are_the_cartesian_product_of_the_sweeps():
    assert sweep_jobs(["a=1", "b=x,y", "c=range(0,2)"]) == [
        ["a=1", "b=x", "c=0"], ["a=1", "b=x", "c=1"], ["a=1", "b=y", "c=0"], ["a=1", "b=y", "c=1"]]
    assert sweep_jobs(["a=interval(0,1)"]) is None  # not the basic sweeper's: left to job start


@pytest.mark.parametrize("override,key", [
    ("rl.old_logprobs=rolout", "rl.old_logprobs"),
    ("rl.algo.loss.agg=mean", "rl.algo.loss.agg"),
    ("reward.length_source=tokens", "reward.length_source"),
    ("reward.format_rules=lax", "reward.format_rules"),
    ("schedule.on_empty=drop", "schedule.on_empty"),
    ("grading.qa_metric=f2", "grading.qa_metric"),
    ("grading.qa_threshold=high", "grading.qa_threshold"),
    ("eval.qa_metric=acc", "eval.qa_metric"),
    ("tools.search.style=fancy", "tools.search.style"),
    ("device=tpu", "device"),
    ("rollout.strategy=beam", "rollout.strategy"),
    ("rollout.budget=per_call", "rollout.budget"),
    ("backend.cache_impl=paged", "backend.cache_impl"),
    ("model.kind=pretrianed", "model.kind"),
    ("seed_sft.lr=fast", "seed_sft.lr"),
    ("prompts.system=[a]", "prompts.system"),
])
def test_every_enumerated_or_typed_value_is_checked(override, key, tmp_path):
    cfg = compose([override], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=rf"`{key}`"):
        validate(cfg)


def test_unknown_keys_of_sections_and_stray_top_level_nodes_are_named(tmp_path):
    cfg = compose([], run_dir=tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.grading.qa_treshold = 0.5
    with pytest.raises(ConfigError, match=r"grading\.qa_treshold"):
        validate(cfg)
    cfg = compose([], run_dir=tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.ase_sft.learning_rate = 1e-3  # the stage override of `train`: checked against SFTConfig
    with pytest.raises(ConfigError, match=r"ase_sft\.learning_rate"):
        validate(cfg)
    cfg = compose([], run_dir=tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.gradng = {"qa_metric": "em"}  # e.g. a typo in an experiment file (# @package _global_)
    with pytest.raises(ConfigError, match=r"`gradng`"):
        validate(cfg)


def test_literal_choices_match_the_checks_in_code():
    """The Literal annotations (compose-time) and the tuples the code checks (build time) agree."""
    from etagent import protocol
    from etagent.evaluation import EvalConfig
    from etagent.rl import curriculum, grpo, losses, reward
    from etagent.tools import search
    from etagent.tools.search import base

    def choices(obj, name):
        return typing.get_args(typing.get_type_hints(obj)[name])

    assert choices(reward.RewardFn, "mode") == reward.MODES
    assert choices(reward.RewardFn, "schedule") == reward.SCHEDULES
    assert choices(reward.RewardFn, "length_source") == reward.LENGTH_SOURCES
    assert choices(reward.RewardFn, "format_rules") == protocol.FORMAT_RULES
    assert choices(losses.PPOClip, "agg") == losses.LOSS_AGGS
    assert choices(grpo.GRPOConfig, "old_logprobs") == grpo.OLD_LOGPROBS
    assert choices(curriculum.Schedule, "on_empty") == curriculum.ON_EMPTY
    assert choices(search.build_search_tool, "backend") == search.BACKENDS
    assert set(choices(search.build_search_tool, "style")) == set(base.STYLES)
    assert choices(EvalConfig, "qa_metric") == ("f1", "em")
    from etagent.rollout import engine

    assert choices(engine.RolloutEngine.__init__, "strategy") == engine.STRATEGIES
    assert choices(engine.RolloutEngine.__init__, "budget") == engine.BUDGETS
