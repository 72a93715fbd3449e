"""Runs the configured stages in order, skipping finished ones, with a one-line summary each.

Resume: ``resume=true`` reuses the newest run directory of the same ``run_name`` whose
overrides match this command (ignoring ``resume``); ``resume=/path/to/run`` names it. The
composed config must then equal the run's saved one (``config.resumed.yaml`` if a forced
resume wrote one, else ``config.yaml``), apart from :data:`RESUME_FREE_KEYS`; otherwise the
job stops with the differing keys (:class:`ResumeMismatch`). ``resume=force`` (newest run)
or ``resume=force:/path/to/run`` goes on with the new config and logs the differences.
Stages write atomically and mark completion last, so a kill -9 at any moment loses no
finished stage, and interrupted stages resume from their own checkpoints.

Stage summaries and results go through :mod:`logging` (logger ``etagent``) into the run's
log file ``<run_dir>/etagent.log`` and the console.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf, open_dict

from etagent.config import ConfigError, build_partial
from etagent.pipeline import registry
from etagent.pipeline.context import RunContext
from etagent.utils import markers
from etagent.utils.io import apply_umask_tree, atomic_write_json, atomic_write_text
from etagent.utils.logs import move_file_logs
from etagent.utils.seeding import seed_everything

log = logging.getLogger("etagent")

# Keys a resume may change freely: where the run lives, which stages to run now, logging and
# the device, and where finished stages were imported from (they are already copied).
RESUME_FREE_KEYS = ("resume", "paths", "stages", "logger", "device", "init_from", "init_stages")


class ResumeMismatch(ConfigError):
    """``resume`` would continue a run whose saved config differs from this command's."""


def _overrides_of(run_dir: Path) -> list[str] | None:
    f = run_dir / ".hydra" / "overrides.yaml"
    if not f.exists():
        return None
    return sorted(o for o in OmegaConf.to_container(OmegaConf.load(f)) if not o.startswith("resume="))


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def config_diff(saved: Mapping[str, Any], current: Mapping[str, Any],
                free: tuple[str, ...] = RESUME_FREE_KEYS) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, current value) for every leaf that differs (``<absent>`` if missing)."""
    a, b = _flatten(saved), _flatten(current)
    out = {}
    for key in sorted(set(a) | set(b)):
        if key.split(".", 1)[0] in free:
            continue
        x, y = a.get(key, "<absent>"), b.get(key, "<absent>")
        if x != y:
            out[key] = (x, y)
    return out


def _override_diff(saved: list[str], current: list[str]) -> dict[str, tuple[Any, Any]]:
    a = dict(o.split("=", 1) if "=" in o else (o, "") for o in saved)
    b = dict(o.split("=", 1) if "=" in o else (o, "") for o in current)
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k.lstrip("+~").split(".", 1)[0] not in RESUME_FREE_KEYS}


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    for name in ("config.resumed.yaml", "config.yaml"):
        if (run_dir / name).exists():
            return OmegaConf.to_container(OmegaConf.load(run_dir / name), resolve=False)  # type: ignore[return-value]
    return None


def run_diff(run_dir: Path, cfg: DictConfig, here: Path) -> dict[str, tuple[Any, Any]]:
    """What this command changes relative to ``run_dir`` (config keys, else command-line overrides)."""
    saved = _saved_config(run_dir)
    if saved is not None:
        return config_diff(saved, OmegaConf.to_container(cfg, resolve=False))  # type: ignore[arg-type]
    theirs, mine = _overrides_of(run_dir), _overrides_of(here)
    return _override_diff(theirs or [], mine or []) if theirs is not None and mine is not None else {}


def _short(v: Any, limit: int = 60) -> str:
    s = str(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def format_diff(diff: Mapping[str, tuple[Any, Any]], limit: int = 20) -> str:
    lines = [f"  {k}: {_short(a)} -> {_short(b)}" for k, (a, b) in list(diff.items())[:limit]]
    if len(diff) > limit:
        lines.append(f"  ... and {len(diff) - limit} more")
    return "\n".join(lines)


def _parse_resume(resume: Any) -> tuple[str, Path | None, bool]:
    """-> (mode "off" | "auto" | "path", target path, forced)."""
    if resume in (False, None, "false", "False"):
        return "off", None, False
    if resume in (True, "true", "True"):
        return "auto", None, False
    text = str(resume)
    forced = text == "force" or text.startswith("force:")
    if text == "force":
        return "auto", None, True
    return "path", Path(text[len("force:"):] if forced else text), forced


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, bool]:
    """The directory to run in and whether this is a resume (raises :class:`ResumeMismatch`)."""
    here = Path(str(cfg.paths.run_dir))
    mode, target, forced = _parse_resume(cfg.get("resume", False))
    if mode == "off":
        return here, False
    if mode == "path":
        if not target.is_dir():
            raise FileNotFoundError(f"resume={cfg.resume}: no such run directory")
    else:
        mine = _overrides_of(here)
        candidates = sorted((p for p in here.parent.glob("*") if p.is_dir() and p != here
                             and _overrides_of(p) is not None), key=lambda p: p.name, reverse=True)
        if not candidates:
            log.info("resume: no earlier run under %s; starting fresh", here.parent)
            return here, False
        target = next((c for c in candidates if _overrides_of(c) == mine), None)
        if target is None:
            if not forced:
                newest = candidates[0]
                diff = run_diff(newest, cfg, here) or _override_diff(_overrides_of(newest) or [], mine or [])
                raise ResumeMismatch(
                    f"resume=true: no run under {here.parent} has this command's overrides; the newest, "
                    f"{newest}, differs in {len(diff)} key(s):\n{format_diff(diff)}\n"
                    "Use the same overrides, `resume=force` to continue it with this config, "
                    "or drop `resume` to start a fresh run.")
            target = candidates[0]
    diff = run_diff(target, cfg, here)
    if diff and not forced:
        raise ResumeMismatch(
            f"resume: the config differs from the saved config of {target} in {len(diff)} key(s):\n"
            f"{format_diff(diff)}\nUse the same overrides, `resume=force` (or `resume=force:<run dir>`) "
            "to continue it with this config, or drop `resume` to start a fresh run.")
    if diff:
        log.warning("resume=force: continuing %s with %d changed key(s):\n%s", target, len(diff), format_diff(diff))
    _discard_fresh(here, target)
    return target, True


def _discard_fresh(fresh: Path, target: Path) -> None:
    # Hydra already created a new timestamped dir for this invocation; its log continues in the resumed run.
    if fresh != target and fresh.exists():
        move_file_logs(fresh, target)
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
        for metrics_file in (source / "metrics").glob(f"{stage}*.jsonl"):
            (run_dir / "metrics").mkdir(exist_ok=True)
            shutil.copy(metrics_file, run_dir / "metrics" / metrics_file.name)
        copied.append(stage)
    return copied


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
            log.info("reused finished stages %s from %s", copied, cfg.init_from)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker, resume=resumed)
    ctx.threads()
    specs = [registry.get(stage) for stage in cfg.stages]  # an unknown name fails before any stage runs
    log.info("run dir: %s%s", run_dir, " (resumed)" if resumed else "")
    summaries: dict[str, Any] = {}
    t_all = time.time()
    try:
        for spec in specs:
            stage = spec.name
            sdir = ctx.stage_dir(stage)
            if markers.is_done(sdir):
                m = markers.read_marker(sdir)
                summaries[stage] = m["summary"]
                log.info("%-9s skipped (done in %.0fs earlier)", stage, m["wall_s"])
                continue
            t0 = time.time()
            log.info("%-9s started", stage)
            summary = spec.run(ctx) or {}
            wall = time.time() - t0
            apply_umask_tree(sdir)  # libraries that write 0600 files (safetensors) inside the stage
            markers.mark_done(sdir, summary, wall)
            summaries[stage] = summary
            tracker.log({"wall_s": wall}, stage=f"pipeline/{stage}")
            log.info("%-9s done in %6.1fs | %s", stage, wall, _one_line(summary))
    finally:
        ctx.close()  # the run environment's tool set (worker pools)
        tracker.finish()
    total = time.time() - t_all
    result = {"run_dir": str(run_dir), "wall_s": round(total, 1), "stages": summaries}
    final = summaries.get("eval", {})
    if isinstance(final, dict) and "objective" in final:
        result["objective"] = final["objective"]
    atomic_write_json(run_dir / "summary.json", result)
    log.info("finished in %.0fs -> %s", total, run_dir / "report.md")
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
