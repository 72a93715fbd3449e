"""Experiment tracking: metrics always land as JSONL in the run dir; wandb optionally mirrors them.

``logger=wandb`` runs wandb in ``offline`` mode by default (no account, no network; sync
later with ``wandb sync``); ``logger=none`` keeps only the JSONL files. Each stage logs
under its own prefix (``seed/loss``, ``rl/stage1/reward/mean`` ...) into
``<run_dir>/metrics/<stage>.jsonl``; every line carries the run's ``run_id``,
``experiment`` and ``seed`` (:func:`etagent.report.identity.run_identity`), so lines from
many runs concatenate into one table.

On wandb each stage has its own step axis (``define_metric``: ``<stage>/*`` is plotted
against ``<stage>/step``), not a global call counter; ``group`` is the experiment (the run's
overrides minus the seed, so a sweep's seeds group together), ``job_type`` the stages run
and the run name ``<name> <experiment> seed=<seed>``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from etagent.utils.io import append_jsonl


class Tracker:
    """Base tracker: JSONL per stage. Subclasses add a remote/offline mirror."""

    def __init__(self, run_dir: str | os.PathLike | None = None, run_config: Mapping[str, Any] | None = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = dict(run_config or {})
        self._t0 = time.time()
        self.identity: dict[str, Any] = {}
        if self.run_dir is not None:
            from etagent.report.identity import run_identity

            self.identity = run_identity(self.run_dir, self.config)

    def log(self, metrics: Mapping[str, Any], step: int | None = None, stage: str = "main") -> None:
        clean = {k: _to_py(v) for k, v in metrics.items()}
        if self.run_dir is not None:
            append_jsonl(
                self.run_dir / "metrics" / f"{stage.replace('/', '_')}.jsonl",
                {"stage": stage, "step": step, "time": round(time.time() - self._t0, 3), **self.identity, **clean},
            )
        self._mirror(stage, clean, step)

    def _mirror(self, stage: str, metrics: dict[str, Any], step: int | None) -> None:  # overridden
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


class NullTracker(Tracker):
    """Drops everything (for unit tests that need a tracker object)."""

    def __init__(self, *args, **kwargs):
        super().__init__(None, None)

    def log(self, metrics, step=None, stage="main") -> None:  # noqa: D401
        return None


def _job_type(stages: Any) -> str:
    stages = [str(s) for s in (stages or [])]
    full = ["world", "seed", "flywheel", "ase", "rl", "eval", "report"]
    if not stages or stages == full:
        return "pipeline"
    return ",".join(stages)[:64]  # wandb's limit


class WandbTracker(Tracker):
    def __init__(self, run_dir=None, run_config=None, project: str = "etagent", mode: str = "offline",
                 entity: str | None = None, name: str | None = None, tags: list[str] | None = None,
                 group: str | None = None, job_type: str | None = None):
        super().__init__(run_dir, run_config)
        import wandb  # lazy: wandb import costs ~1 s

        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline|online|disabled, got {mode!r}")
        os.environ.setdefault("WANDB_SILENT", "true")
        exp, seed = self.identity.get("experiment"), self.identity.get("seed")
        parts = [name or str(self.config.get("run_name") or "etagent")]
        if exp:
            parts.append(str(exp))
        if seed is not None:
            parts.append(f"seed={seed}")
        self.run_name = " ".join(parts)
        self.group = group or exp
        self.job_type = job_type or _job_type(self.config.get("stages"))
        self._run = wandb.init(
            project=project, entity=entity, name=self.run_name, mode=mode, tags=list(tags or []),
            group=self.group, job_type=self.job_type,
            dir=str(self.run_dir) if self.run_dir else None, config=self.config, reinit="finish_previous",
        )
        self._axes: dict[str, int] = {}  # stage -> last step logged on its own axis

    def _mirror(self, stage, metrics, step):
        if stage not in self._axes:
            # each stage's trainer counts its own steps; give it its own x axis
            self._run.define_metric(f"{stage}/step")
            self._run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self._axes[stage] = -1
        if step is None:
            step = self._axes[stage] + 1
        self._axes[stage] = max(self._axes[stage], int(step))
        data = {f"{stage}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._run.log({f"{stage}/step": int(step), **data})

    def summary(self, values):
        for k, v in values.items():
            self._run.summary[k] = _to_py(v)

    def finish(self):
        self._run.finish()


def _to_py(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except Exception:  # noqa: BLE001 - non-scalar tensors fall through
            return v.tolist()
    return v
