"""What every stage receives: the config, the run directory, the tracker and shared artefact paths.

``cache`` keeps what several stages share within one process (the run environment,
``etagent.pipeline.components.run_env``; loaded splits); :meth:`RunContext.close` (the runner,
after the last stage) releases what registered a closer there (the tool set's worker pools).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from etagent.utils import markers


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    tracker: Any
    resume: bool = False
    cache: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        """Run the registered closers (last registered first), once."""
        while self.closers:
            self.closers.pop()()

    def stage_dir(self, stage: str) -> Path:
        d = self.run_dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def done(self, stage: str) -> bool:
        return markers.is_done(self.run_dir / stage)

    @property
    def world_dir(self) -> Path:
        return self.stage_dir("world")

    @cached_property
    def scratch_model(self) -> bool:
        return str(self.cfg.model.kind) == "scratch"

    def policies(self) -> dict[str, Path]:
        """Every finished policy checkpoint of this run, in pipeline order (name -> path)."""
        out: dict[str, Path] = {}
        if not self.scratch_model:
            out["base"] = Path(str(self.cfg.model.path))
        for name in ("seed", "ase"):
            p = self.run_dir / name / "final"
            if (p / "config.json").exists():
                out[name] = p
        rl_dir = self.run_dir / "rl"
        if rl_dir.exists():
            for d in sorted(rl_dir.glob("stage_*"), key=lambda p: int(p.name.split("_")[1])):
                if (d / "final" / "config.json").exists():
                    out[f"rl_{d.name}"] = d / "final"
        return out

    def latest_policy(self) -> Path:
        pols = self.policies()
        if not pols:
            raise RuntimeError("no policy yet: run the `world` and `seed` stages first")
        return list(pols.values())[-1]

    def threads(self) -> None:
        import torch

        n = int(os.environ.get("ETAGENT_THREADS", "0") or 0)
        if n > 0:
            torch.set_num_threads(n)
