"""resume=true finds the newest run with the same overrides; resume=<dir> names one; a resume whose
config differs from the run's saved one stops with the differing keys unless forced."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from etagent.pipeline.runner import ResumeMismatch, config_diff, resolve_run_dir


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
    (newer / "etagent.log").write_text("first invocation\n")
    (fresh / "etagent.log").write_text("log of the resuming invocation\n")
    run_dir, resumed = resolve_run_dir(_cfg(fresh, True))
    assert (run_dir, resumed) == (newer, True) and run_dir != older
    # the resuming invocation's log continues the run's log
    assert not fresh.exists()
    assert (newer / "etagent.log").read_text() == "first invocation\nlog of the resuming invocation\n"


def test_resume_true_with_changed_overrides_fails_listing_the_keys(tmp_path):
    _run(tmp_path, "a", ["reward=correctness", "seed=1"])
    fresh = _run(tmp_path, "b", ["reward=efficiency", "seed=1", "resume=true"])
    with pytest.raises(ResumeMismatch) as exc:
        resolve_run_dir(_cfg(fresh, True))
    msg = str(exc.value)
    assert "reward: correctness -> efficiency" in msg and "seed" not in msg.split("key(s):")[1].split("Use")[0]
    assert "resume=force" in msg and fresh.exists()  # nothing was discarded


def test_resume_true_without_any_earlier_run_starts_fresh(tmp_path):
    fresh = _run(tmp_path, "b", ["preset=smoke", "resume=true"])
    assert resolve_run_dir(_cfg(fresh, True)) == (fresh, False)


def _saved(run_dir: Path, cfg: dict) -> Path:
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return run_dir


def test_resume_dir_with_a_changed_config_fails_unless_forced(tmp_path):
    base = {"seed": 0, "rl": {"lr": 1e-5, "kl_coef": 0.0}, "stages": ["world", "seed"], "paths": {"run_dir": "x"}}
    target = _saved(_run(tmp_path, "target", ["seed=0"]), base)
    fresh = _run(tmp_path, "fresh", [])
    changed = {**base, "rl": {"lr": 3e-5, "kl_coef": 0.0}, "stages": ["eval"], "resume": str(target)}
    cfg = OmegaConf.create({**changed, "paths": {"run_dir": str(fresh)}})
    with pytest.raises(ResumeMismatch, match=r"in 1 key\(s\):\n  rl.lr: 1e-05 -> 3e-05\n"):
        resolve_run_dir(cfg)
    # what may change on resume: which stages run now, paths, resume itself
    same = OmegaConf.create({**base, "stages": ["eval", "report"], "resume": str(target),
                             "paths": {"run_dir": str(fresh)}})
    assert resolve_run_dir(same) == (target, True)
    fresh = _run(tmp_path, "fresh2", [])
    forced = OmegaConf.create({**changed, "resume": f"force:{target}", "paths": {"run_dir": str(fresh)}})
    assert resolve_run_dir(forced) == (target, True)


def test_resume_force_takes_the_newest_run(tmp_path):
    _run(tmp_path, "2026-01-01_10-00-00", ["seed=0"])
    newest = _run(tmp_path, "2026-01-01_11-00-00", ["seed=1"])
    fresh = _run(tmp_path, "2026-01-01_12-00-00", ["seed=2", "resume=force"])
    assert resolve_run_dir(_cfg(fresh, "force")) == (newest, True)


def test_config_diff_flattens_and_skips_free_keys():
    a = {"seed": 0, "task": {"name": "x", "n": 1}, "paths": {"run_dir": "a"}, "logger": {"mode": "offline"}}
    b = {"seed": 0, "task": {"name": "y"}, "paths": {"run_dir": "b"}, "logger": None, "extra": 1}
    assert config_diff(a, b) == {"task.name": ("x", "y"), "task.n": (1, "<absent>"), "extra": ("<absent>", 1)}


def test_resume_names_a_directory(tmp_path):
    target = _run(tmp_path, "target", [])
    fresh = _run(tmp_path, "fresh", [])
    assert resolve_run_dir(_cfg(fresh, str(target))) == (target, True)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        resolve_run_dir(_cfg(fresh, str(tmp_path / "missing")))


def test_no_resume_runs_here(tmp_path):
    assert resolve_run_dir(_cfg(tmp_path / "x", False)) == (tmp_path / "x", False)
