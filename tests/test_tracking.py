"""Trackers: JSONL per stage always; wandb mirrors offline by default (no account, no network)."""

from __future__ import annotations

import time

import json


from conftest import compose
from etagent.config import build_partial
from etagent.tracking import NullTracker, Tracker


def test_jsonl_lines_per_stage(tmp_path):
    t = Tracker(tmp_path)
    t.log({"loss": 1.5, "lr": 1e-3}, step=1, stage="seed")
    t.log({"reward/mean": 0.25}, step=2, stage="rl/stage1")
    seed = [json.loads(x) for x in (tmp_path / "metrics" / "seed.jsonl").read_text().splitlines()]
    rl = [json.loads(x) for x in (tmp_path / "metrics" / "rl_stage1.jsonl").read_text().splitlines()]
    assert seed[0]["loss"] == 1.5 and seed[0]["step"] == 1 and seed[0]["stage"] == "seed"
    assert rl[0]["reward/mean"] == 0.25
    NullTracker().log({"x": 1})  # accepts and drops


def test_default_logger_is_wandb_offline_and_writes_a_local_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose([], run_dir=tmp_path)
    assert cfg.logger.mode == "offline"
    t = build_partial(cfg.logger, "logger")(run_dir=str(tmp_path), run_config={"seed": 0})
    t.log({"loss": 2.0}, step=1, stage="seed")
    t.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline wandb run written"
    assert (tmp_path / "metrics" / "seed.jsonl").exists()


def _run_dir(tmp_path, overrides):
    (tmp_path / ".hydra").mkdir(parents=True)
    (tmp_path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return tmp_path


def test_jsonl_lines_carry_run_experiment_and_seed(tmp_path):
    run = _run_dir(tmp_path / "2026-01-01_00-00-00", ["experiment=grpo_correctness", "seed=2", "logger=none"])
    t = Tracker(run, {"run_name": "etagent", "seed": 2})
    t.log({"loss": 1.0}, step=3, stage="seed")
    line = json.loads((run / "metrics" / "seed.jsonl").read_text())
    assert line["run_id"] == "etagent/2026-01-01_00-00-00" and line["seed"] == 2
    assert line["experiment"] == "experiment=grpo_correctness" and line["loss"] == 1.0 and line["step"] == 3


def test_wandb_offline_run_has_stage_axes_group_job_type_and_name(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "600")  # its service starts slowly on a loaded machine
    run = _run_dir(tmp_path / "job", ["experiment=et_agent", "seed=1"])
    cfg = compose(["experiment=et_agent", "seed=1", "stages=[eval,report]"], run_dir=run)
    assert cfg.logger.group is None and cfg.logger.job_type is None  # derived from the run
    from omegaconf import OmegaConf

    t = build_partial(cfg.logger, "logger")(run_dir=str(run), run_config=OmegaConf.to_container(cfg, resolve=False))
    assert (t.group, t.job_type, t.run_name) == ("experiment=et_agent", "eval,report", "et_agent experiment=et_agent seed=1")
    t.log({"loss": 2.0}, step=5, stage="seed")
    t.log({"reward/mean": 0.5}, step=1, stage="rl/stage1")
    t.log({"reward/mean": 0.6}, step=1, stage="rl/stage2")  # its own axis restarts at 1
    t.finish()
    (f,) = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    want = ("rl/stage1/step", "rl/stage1/*", "rl/stage2/*", "seed/*", "experiment=et_agent", "eval,report",
            "et_agent experiment=et_agent seed=1")
    # the offline run file (protobuf records, strings stored as they are) is written by wandb's own
    # service process, which may still be flushing after finish() returns: wait for it, boundedly
    deadline = time.monotonic() + 60
    while True:
        raw = f.read_bytes()
        missing = [s for s in want if s.encode() not in raw]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, missing
