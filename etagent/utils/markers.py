"""Stage completion markers: a stage is done iff its marker exists (written last, atomically)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from etagent.utils.io import atomic_write_json, read_json

MARKER = ".done.json"


def marker_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / MARKER


def is_done(stage_dir: Path) -> bool:
    return marker_path(stage_dir).exists()


def mark_done(stage_dir: Path, summary: dict[str, Any], wall_s: float) -> None:
    atomic_write_json(marker_path(stage_dir), {"summary": summary, "wall_s": round(wall_s, 2), "finished_at": time.time()})


def read_marker(stage_dir: Path) -> dict[str, Any]:
    return read_json(marker_path(stage_dir))
