"""Per-seed world checks (W1-W4) and budgets (B1-B3) of a mechanism sweep, one table.

DESIGN.md recomputes the world checks on every seed's own seed agent and reports a seed that
misses one beside its results; this collects them from a sweep directory
(``<sweep>/seed_agent/seed_<s>/world_checks.json``, written by ``mechanism.sh``) and the budgets
the target group actually spent (``<sweep>/<target>/seed_<s>``: the ASE set's size and edited
share, ASE and seed SFT steps, RL stages and steps; :func:`world_checks.run_budgets`).

    python experiments/mechanism/seed_checks.py multirun/mechanism --out experiments/results/mechanism_sweep
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from etagent.utils.io import atomic_write_json, atomic_write_text  # noqa: E402


def _world_checks():
    spec = importlib.util.spec_from_file_location("world_checks", HERE / "world_checks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _seed(d: Path) -> int:
    return int(d.name.removeprefix("seed_"))


def collect(sweep: Path, target: str = "et_agent") -> list[dict[str, Any]]:
    """One row per seed agent with world checks: each check's value and whether it met its goal,
    and the target group's budgets where its run exists."""
    wc = _world_checks()
    rows = []
    for d in sorted((p for p in (sweep / "seed_agent").glob("seed_*") if p.is_dir()), key=_seed):
        f = d / "world_checks.json"
        if not f.exists():
            continue
        res = json.loads(f.read_text())
        row: dict[str, Any] = {"seed": _seed(d), "checks": {k: {"value": c["value"], "met": c["met"], "text": c["value_text"]}
                                                            for k, c in res["checks"].items()}}
        run = sweep / target / d.name
        if (run / "flywheel" / "sft.jsonl").exists():
            b = wc.run_budgets(run)
            ase = b.get("ase_set") or {}
            row["budgets"] = {"ase_set": ase.get("trajectories"), "edited_share": ase.get("edited_share"),
                              "ase_steps": b.get("ase_steps"), "rl_stages": len(b.get("rl_stages") or []),
                              "rl_steps": [r["steps"] for r in b.get("rl_stages") or []]}
        rows.append(row)
    return rows


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(rows: list[dict[str, Any]], target: str) -> str:
    if not rows:
        return "No seed agent with world checks yet.\n"
    names = list(rows[0]["checks"])
    lines = ["# World checks and budgets per seed", "",
             "World checks on each seed's own seed agent (greedy, test split); a value in bold missed its goal "
             "(DESIGN.md: the seed stays in the study, reported here).", "",
             "| seed | " + " | ".join(n.split(":")[0] for n in names) + " |",
             "|---:|" + "---|" * len(names)]
    for r in rows:
        cells = [(c["text"] if c["met"] else f"**{c['text']}**") for c in (r["checks"][n] for n in names)]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
    lines += ["", "Checks: " + "; ".join(names) + ".", "",
              f"Budgets spent by `{target}` (B1: >= 1,000 trajectories, >= 40 % edited; B2: >= 160 ASE steps; B3: 3 RL stages):", "",
              "| seed | ASE set | edited % | ASE steps | RL stages (steps) |", "|---:|---:|---:|---:|---|"]
    for r in rows:
        b = r.get("budgets")
        if b is None:
            lines.append(f"| {r['seed']} | - | - | - | - |")
            continue
        size, edited = str(b["ase_set"]), _pct(b["edited_share"])
        size = size if (b["ase_set"] or 0) >= 1000 else f"**{size}**"
        edited = edited if (b["edited_share"] or 0) >= 0.40 else f"**{edited}**"
        steps = ", ".join(map(str, b["rl_steps"]))
        lines.append(f"| {r['seed']} | {size} | {edited} | {b['ase_steps']} | {b['rl_stages']} ({steps}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep", type=Path, help="the sweep directory (mechanism.sh's SWEEP_DIR)")
    ap.add_argument("--target", default="et_agent", help="the group whose budgets are shown (default et_agent)")
    ap.add_argument("--out", type=Path, default=None, help="folder for seed_checks.{json,md} (default: print only)")
    args = ap.parse_args(argv)
    rows = collect(args.sweep, args.target)
    md = markdown(rows, args.target)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "seed_checks.json", rows)
        atomic_write_text(args.out / "seed_checks.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
