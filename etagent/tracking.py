"""Experiment tracking: metrics always land as JSONL in the run dir; wandb optionally mirrors them.

``logger=wandb`` runs wandb in ``offline`` mode by default (no account, no network; sync
later with ``wandb sync``); ``logger=none`` keeps only the JSONL files. Each stage logs
under its own prefix (``seed/loss``, ``rl/stage1/reward_mean`` ...) into
``<run_dir>/metrics/<stage>.jsonl``.
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

    def log(self, metrics: Mapping[str, Any], step: int | None = None, stage: str = "main") -> None:
        clean = {k: _to_py(v) for k, v in metrics.items()}
        if self.run_dir is not None:
            append_jsonl(
                self.run_dir / "metrics" / f"{stage.replace('/', '_')}.jsonl",
                {"stage": stage, "step": step, "time": round(time.time() - self._t0, 3), **clean},
            )
        self._mirror({f"{stage}/{k}": v for k, v in clean.items()}, step)

    def _mirror(self, metrics: dict[str, Any], step: int | None) -> None:  # overridden
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


class WandbTracker(Tracker):
    def __init__(self, run_dir=None, run_config=None, project: str = "etagent", mode: str = "offline",
                 entity: str | None = None, name: str | None = None, tags: list[str] | None = None):
        super().__init__(run_dir, run_config)
        import wandb  # lazy: wandb import costs ~1 s

        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline|online|disabled, got {mode!r}")
        os.environ.setdefault("WANDB_SILENT", "true")
        self._run = wandb.init(
            project=project, entity=entity, name=name, mode=mode, tags=list(tags or []),
            dir=str(self.run_dir) if self.run_dir else None, config=self.config, reinit="finish_previous",
        )
        self._step = 0

    def _mirror(self, metrics, step):
        # wandb wants monotone steps across stages; keep our own counter and log the stage step as a field.
        self._step += 1
        self._run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=self._step)

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
