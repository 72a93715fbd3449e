"""The stage registry is the one stage list: config default, validator, runner, report and CLI help agree."""

from __future__ import annotations

import importlib

import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose
from etagent.config import ConfigError, validate
from etagent.config.validate import STAGES
from etagent.pipeline import registry


def test_registry_order_is_the_default_stages():
    default = list(OmegaConf.load(CONF / "config.yaml").stages)
    assert list(registry.STAGE_NAMES) == default
    assert list(STAGES) == default  # the validator's list is the registry's


def test_every_registered_stage_has_a_runnable_module():
    for spec in registry.REGISTRY:
        module = importlib.import_module(spec.module)
        assert callable(module.run) and spec.run is module.run
        assert spec.help.strip()


def test_unknown_stage_fails_naming_the_key(tmp_path):
    cfg = compose(["stages=[world,sede]"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"`stages`.*'sede'"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"^stages: unknown stage 'sede'"):
        registry.get("sede")


def test_runner_refuses_an_unknown_stage_before_running_any(tmp_path):
    from etagent.pipeline.runner import run_pipeline

    cfg = compose(["stages=[world,sede]", "logger=none"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match="sede"):
        run_pipeline(cfg, run_dir=tmp_path)
    assert not (tmp_path / "world").exists()  # nothing ran


def test_cli_help_lists_the_registry():
    text = registry.help_text()
    positions = [text.index(f"  {name} ") for name in registry.STAGE_NAMES]
    assert positions == sorted(positions)
