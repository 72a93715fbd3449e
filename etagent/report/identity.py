"""Who a run is: the run id, experiment (its overrides minus the seed and plumbing) and seed.

Shared by the tracker (every metrics JSONL line carries them), the tidy results tables and
the sweep comparison, so rows from different runs can be concatenated and grouped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

# keys that do not define an experiment: the seed, and run plumbing (where stages came from, logging)
IGNORED_KEYS = ("seed", "resume", "init_from", "init_stages", "logger")
IGNORED_PREFIXES = ("hydra.", "paths.")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def group_of(overrides: Sequence[str]) -> str:
    """``experiment=x,seed=1`` -> ``experiment=x``; no defining override -> ``default``."""
    kept = sorted(o for o in overrides if _key(o) not in IGNORED_KEYS and not _key(o).startswith(IGNORED_PREFIXES))
    return ",".join(kept) or "default"


def split_override_dirname(name: str) -> list[str]:
    """``a=1,b=[x,y],seed=2`` -> ``["a=1", "b=[x,y]", "seed=2"]`` (commas inside brackets kept)."""
    parts, depth, cur = [], 0, ""
    for ch in name:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth = max(depth - 1, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return [p for p in parts if "=" in p]


def read_overrides(run_dir: Path) -> list[str] | None:
    f = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not f.exists():
        return None
    import yaml

    try:
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or []
    except yaml.YAMLError as exc:
        raise ValueError(f"{f}: invalid YAML: {exc}") from exc
    return [str(o) for o in data]


def run_identity(run_dir: str | Path, config: Mapping[str, Any] | None = None,
                 overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """{"run_id", "experiment", "seed"} of a run directory (config = its composed config)."""
    run_dir = Path(run_dir)
    config = config or {}
    if overrides is None:
        overrides = read_overrides(run_dir)
    if overrides is None:  # a sweep job dir named by its override dirname
        overrides = split_override_dirname(run_dir.name)
    seed = config.get("seed")
    if seed is None:
        seed = next((o.split("=", 1)[1] for o in overrides if _key(o) == "seed"), None)
    try:
        seed = int(seed) if seed is not None else None
    except (TypeError, ValueError):
        pass
    name = config.get("run_name")
    run_id = f"{name}/{run_dir.name}" if isinstance(name, str) and name else run_dir.name
    return {"run_id": run_id, "experiment": group_of(overrides), "seed": seed}
