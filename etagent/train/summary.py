"""What a finished SFT run tells the pipeline about its budget (steps done vs planned)."""

from __future__ import annotations

import logging
from pathlib import Path

from etagent.utils.io import read_json

log = logging.getLogger("etagent")


def sft_budget_summary(final_dir: str | Path, stage: str) -> dict:
    """``{steps, total_steps, stopped}`` from ``final/sft_summary.json``; logs a warning when a
    wall-clock cap (``max_minutes``) stopped the run before its step budget."""
    f = Path(final_dir) / "sft_summary.json"
    if not f.exists():
        return {}
    s = read_json(f)
    out = {"steps": int(s.get("steps", 0)), "total_steps": int(s.get("total_steps", 0)),
           "stopped": str(s.get("stopped", "completed"))}
    if out["stopped"] == "time_budget":
        log.warning("%s: TRUNCATED by the wall-clock cap (max_minutes) at step %d of %d planned; "
                    "results are not those of the step budget", stage, out["steps"], out["total_steps"])
    return out
