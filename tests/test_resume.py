"""resume=true finds the newest run with the same overrides; resume=<dir> names one."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from etagent.pipeline.runner import resolve_run_dir


def _run(root: Path, name: str, overrides: list[str]) -> Path:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    return d


def _cfg(run_dir: Path, resume) -> object:
    return OmegaConf.create({"paths": {"run_dir": str(run_dir)}, "resume": resume})


def test_resume_true_picks_newest_matching_run_and_discards_the_fresh_dir(tmp_path):
    _run(tmp_path, "2026-01-01_10-00-00", ["reward=correctness"])
    older = _run(tmp_path, "2026-01-01_11-00-00", ["preset=smoke"])
    newer = _run(tmp_path, "2026-01-01_12-00-00", ["preset=smoke"])
    fresh = _run(tmp_path, "2026-01-01_13-00-00", ["preset=smoke", "resume=true"])
    (fresh / "main.log").write_text("log of the resuming invocation")
    run_dir, resumed = resolve_run_dir(_cfg(fresh, True))
    assert (run_dir, resumed) == (newer, True) and run_dir != older
    assert not fresh.exists() and any(newer.glob("resume-*.log"))


def test_resume_true_without_a_match_starts_fresh(tmp_path):
    _run(tmp_path, "a", ["reward=correctness"])
    fresh = _run(tmp_path, "b", ["preset=smoke", "resume=true"])
    assert resolve_run_dir(_cfg(fresh, True)) == (fresh, False)


def test_resume_names_a_directory(tmp_path):
    target = _run(tmp_path, "target", [])
    fresh = _run(tmp_path, "fresh", [])
    assert resolve_run_dir(_cfg(fresh, str(target))) == (target, True)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        resolve_run_dir(_cfg(fresh, str(tmp_path / "missing")))


def test_no_resume_runs_here(tmp_path):
    assert resolve_run_dir(_cfg(tmp_path / "x", False)) == (tmp_path / "x", False)
