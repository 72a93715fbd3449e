"""Runs the configured stages in order, skipping finished ones, with a one-line summary each.

Resume: ``resume=true`` reuses the newest run directory of the same ``run_name`` whose
overrides match this command (ignoring ``resume``); ``resume=/path/to/run`` names it.
Stages write atomically and mark completion last, so a kill -9 at any moment loses no
finished stage, and interrupted stages resume from their own checkpoints.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from etagent.config import build_partial
from etagent.pipeline import markers
from etagent.pipeline.context import RunContext
from etagent.utils.io import atomic_write_json, atomic_write_text
from etagent.utils.seeding import seed_everything


def _overrides_of(run_dir: Path) -> list[str] | None:
    f = run_dir / ".hydra" / "overrides.yaml"
    if not f.exists():
        return None
    return sorted(o for o in OmegaConf.to_container(OmegaConf.load(f)) if not o.startswith("resume="))


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, bool]:
    """The directory to run in and whether this is a resume."""
    here = Path(str(cfg.paths.run_dir))
    resume = cfg.get("resume", False)
    if resume in (False, None, "false", "False"):
        return here, False
    if isinstance(resume, str) and resume not in ("true", "True"):
        target = Path(resume)
        if not target.is_dir():
            raise FileNotFoundError(f"resume={resume}: no such run directory")
        _discard_fresh(here, target)
        return target, True
    mine = _overrides_of(here)
    candidates = sorted((p for p in here.parent.glob("*") if p.is_dir() and p != here), key=lambda p: p.name, reverse=True)
    for cand in candidates:
        if _overrides_of(cand) == mine:
            _discard_fresh(here, cand)
            return cand, True
    return here, False  # nothing to resume: start fresh here


def _discard_fresh(fresh: Path, target: Path) -> None:
    # Hydra already created a new timestamped dir for this invocation; keep its log next to the resumed run.
    if fresh != target and fresh.exists():
        log = next(fresh.glob("*.log"), None)
        if log is not None:
            shutil.copy(log, target / f"resume-{int(time.time())}.log")
        shutil.rmtree(fresh, ignore_errors=True)


def import_stages(run_dir: Path, source: Path, stages: list[str]) -> list[str]:
    """Reuse finished stages of another run (``init_from``): copy their directories and logs.

    Lets a sweep share one seed agent (or flywheel + ASE) and vary only later stages.
    A stage is copied only if it is finished there and absent here; the copy is atomic.
    """
    source = Path(source)
    copied = []
    for stage in stages:
        src, dst = source / stage, run_dir / stage
        if markers.is_done(dst):
            continue
        if not markers.is_done(src):
            raise FileNotFoundError(f"init_from={source}: stage {stage!r} is not finished there")
        tmp = run_dir / f".{stage}.import"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoints"))
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        for log in (source / "metrics").glob(f"{stage}*.jsonl"):
            (run_dir / "metrics").mkdir(exist_ok=True)
            shutil.copy(log, run_dir / "metrics" / log.name)
        copied.append(stage)
    return copied


def _stage_fns():
    from etagent.pipeline import stage_ase, stage_eval, stage_flywheel, stage_report, stage_rl, stage_seed, stage_world

    return {
        "world": stage_world.run,
        "seed": stage_seed.run,
        "flywheel": stage_flywheel.run,
        "ase": stage_ase.run,
        "rl": stage_rl.run,
        "eval": stage_eval.run,
        "report": stage_report.run,
    }


def run_pipeline(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    if run_dir is None:
        run_dir, resumed = resolve_run_dir(cfg)
    else:
        resumed = bool(cfg.get("resume", False))
    run_dir.mkdir(parents=True, exist_ok=True)
    # Interpolations like ${paths.run_dir}/world must point at the (possibly resumed) run.
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    seed_everything(int(cfg.seed))
    cfg_copy = OmegaConf.to_container(cfg, resolve=False)
    # the first invocation's config stays the run's config; a resume records its own beside it
    cfg_name = "config.resumed.yaml" if resumed and (run_dir / "config.yaml").exists() else "config.yaml"
    atomic_write_text(run_dir / cfg_name, OmegaConf.to_yaml(OmegaConf.create(cfg_copy)))
    tracker = build_partial(cfg.logger, "logger")(run_dir=str(run_dir), run_config=_safe_container(cfg))
    if cfg.get("init_from"):
        copied = import_stages(run_dir, Path(str(cfg.init_from)), list(cfg.get("init_stages") or []))
        if copied:
            print(f"[etagent] reused finished stages {copied} from {cfg.init_from}", flush=True)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker, resume=resumed)
    ctx.threads()
    fns = _stage_fns()
    print(f"[etagent] run dir: {run_dir}{' (resumed)' if resumed else ''}", flush=True)
    summaries: dict[str, Any] = {}
    t_all = time.time()
    try:
        for stage in cfg.stages:
            sdir = ctx.stage_dir(stage)
            if markers.is_done(sdir):
                m = markers.read_marker(sdir)
                summaries[stage] = m["summary"]
                print(f"[etagent] {stage:<9} skipped (done in {m['wall_s']:.0f}s earlier)", flush=True)
                continue
            t0 = time.time()
            summary = fns[stage](ctx) or {}
            wall = time.time() - t0
            markers.mark_done(sdir, summary, wall)
            summaries[stage] = summary
            tracker.log({"wall_s": wall}, stage=f"pipeline/{stage}")
            print(f"[etagent] {stage:<9} done in {wall:6.1f}s | {_one_line(summary)}", flush=True)
    finally:
        tracker.finish()
    total = time.time() - t_all
    result = {"run_dir": str(run_dir), "wall_s": round(total, 1), "stages": summaries}
    final = summaries.get("eval", {})
    if isinstance(final, dict) and "objective" in final:
        result["objective"] = final["objective"]
    atomic_write_json(run_dir / "summary.json", result)
    print(f"[etagent] finished in {total:.0f}s -> {run_dir / 'report.md'}", flush=True)
    return result


def _one_line(summary: dict[str, Any]) -> str:
    parts = []
    for k, v in summary.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.3g}")
        elif isinstance(v, (int, str)) and len(str(v)) < 40:
            parts.append(f"{k}={v}")
    return " ".join(parts[:8])


def _safe_container(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - hydra resolvers absent outside an app
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
