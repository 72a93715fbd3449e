"""Trackers: JSONL per stage always; wandb mirrors offline by default (no account, no network)."""

from __future__ import annotations

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
