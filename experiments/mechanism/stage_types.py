"""Where a mechanism-sweep group gains or loses, per question type and per policy of the run.

`etagent-compare` pairs the *final* policies. This follows each group through its stages (seed ->
ASE -> RL-1..3) per question type (`meta.type` of the run's test questions), averaged over seeds,
and describes what each group's ASE set holds per type (trajectories, calls per trajectory, the
share the flywheel edited), so a per-type difference of the final policies can be traced to the
stage that made it. Question rows come from the report's own reader
(`etagent.report.results.run_tables`: the run's grader decides `correct`), the ASE set from
`<run>/flywheel/sft.jsonl`.

    python experiments/mechanism/stage_types.py multirun/mechanism \
        --groups et_agent no_flywheel plain_grpo --ase-sets et_agent rft_only \
        --out experiments/results/mechanism_sweep
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from etagent.utils.io import atomic_write_json, atomic_write_text, read_jsonl_dicts  # noqa: E402

POLICY_ORDER = ("seed", "ase", "rl_stage_1", "rl_stage_2", "rl_stage_3", "rl_stage_4")


def _seed_dirs(group_dir: Path) -> list[Path]:
    return sorted((d for d in group_dir.glob("seed_*") if d.is_dir()), key=lambda d: int(d.name.removeprefix("seed_")))


def _types(run_dir: Path, split: str) -> dict[str, str]:
    from etagent.records import Example, read_jsonl

    path = run_dir / "world" / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"stage_types: {path} is missing (the run's world holds the question types)")
    return {e.id: str((e.meta or {}).get("type") or "(none)") for e in read_jsonl(path, Example)}


def policy_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per (policy, type) of a run: questions, correct share, insufficient share, calls per question."""
    from etagent.report.results import run_tables

    _, questions = run_tables(run_dir)
    types = _types(run_dir, "test")
    acc: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for q in questions:
        acc[(q["policy"], types.get(q["example_id"], "(none)"))].append(q)
    return [{"policy": pol, "type": t, "n": len(qs), **{k: _mean(q[k] for q in qs) for k in ("correct", "insufficient", "calls")}}
            for (pol, t), qs in sorted(acc.items())]


def _mean(values) -> float | None:
    """Mean of the values that are set (a trajectory without behaviour labels has None flags)."""
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def ase_set_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Per train-question type of a run's ASE set: trajectories, calls per trajectory (histogram), edited share."""
    path = run_dir / "flywheel" / "sft.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"stage_types: {path} is missing (no ASE set in this run)")
    types = _types(run_dir, "train")
    calls: dict[str, Counter] = defaultdict(Counter)
    edited: Counter = Counter()
    for d in read_jsonl_dicts(path, tolerate_torn_tail=False):
        t = types.get(d["example_id"], "(none)")
        calls[t][len(d.get("tool_calls") or [])] += 1
        # a sampled trajectory has no flywheel strategy (or the sampler's "standard")
        edited[t] += (d.get("meta") or {}).get("strategy") not in (None, "sample", "standard")
    return [{"type": t, "n": sum(h.values()), "calls_hist": dict(sorted(h.items())),
             "mean_calls": sum(k * v for k, v in h.items()) / sum(h.values()), "edited": edited[t] / sum(h.values())}
            for t, h in sorted(calls.items())]


def collect(sweep: Path, groups: Sequence[str], ase_groups: Sequence[str]) -> dict[str, Any]:
    per_run, ase = [], []
    for g in groups:
        for d in _seed_dirs(sweep / g):
            seed = int(d.name.removeprefix("seed_"))
            per_run += [{"group": g, "seed": seed, **r} for r in policy_rows(d)]
    for g in ase_groups:
        for d in _seed_dirs(sweep / g):
            seed = int(d.name.removeprefix("seed_"))
            ase += [{"group": g, "seed": seed, **r} for r in ase_set_rows(d)]
    if not per_run:
        raise FileNotFoundError(f"stage_types: no evaluated run of {', '.join(groups)} under {sweep}")
    # mean over seeds of each (type, group, policy); a group's copied seed policy is shown once (the first group's)
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in per_run:
        cells[(r["type"], r["group"], r["policy"])].append(r)
    seen_seed = set()
    table = []
    for (t, g, pol), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], list(groups).index(kv[0][1]),
                                                                   _policy_rank(kv[0][2]))):
        if pol == "seed":
            if t in seen_seed:
                continue
            seen_seed.add(t)
            g = "seed agent"
        table.append({"type": t, "group": g, "policy": pol, "seeds": sorted(r["seed"] for r in rs),
                      **{k: _mean(r[k] for r in rs) for k in ("correct", "insufficient", "calls")}})
    ase_cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ase:
        ase_cells[(r["type"], r["group"])].append(r)
    ase_table = []
    for (t, g), rs in sorted(ase_cells.items(), key=lambda kv: (kv[0][0], list(ase_groups).index(kv[0][1]))):
        hist: Counter = Counter()
        for r in rs:
            hist.update({int(k): v for k, v in r["calls_hist"].items()})
        n = sum(hist.values())
        ase_table.append({"type": t, "group": g, "seeds": sorted(r["seed"] for r in rs), "trajectories": n,
                          "calls_hist": dict(sorted(hist.items())), "mean_calls": sum(k * v for k, v in hist.items()) / n,
                          "edited": sum(r["edited"] * r["n"] for r in rs) / n})
    return {"sweep": str(sweep), "groups": list(groups), "ase_groups": list(ase_groups),
            "policies": table, "ase_sets": ase_table, "per_run": per_run, "per_run_ase": ase}


def _policy_rank(p: str) -> int:
    return POLICY_ORDER.index(p) if p in POLICY_ORDER else len(POLICY_ORDER)


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Per question type, stage by stage", "",
             "Mean over the seeds of each group's runs (test split, greedy); correct and insufficient are shares "
             "of questions in %, calls are per question. The seed agent is shared by every group of a seed.", "",
             "| type | group | policy | seeds | correct % | insufficient % | calls |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in res["policies"]:
        pct = ["-" if r[k] is None else f"{100 * r[k]:.1f}" for k in ("correct", "insufficient")]
        calls = "-" if r["calls"] is None else f"{r['calls']:.2f}"
        lines.append(f"| {r['type']} | {r['group']} | {r['policy']} | {','.join(map(str, r['seeds']))} | "
                     f"{pct[0]} | {pct[1]} | {calls} |")
    if res["ase_sets"]:
        lines += ["", "## What each ASE set holds, per train-question type", "",
                  "Trajectories summed over the seeds; calls per trajectory as a histogram (calls: trajectories); "
                  "edited = made by a flywheel operation rather than sampled.", "",
                  "| type | group | seeds | trajectories | calls per trajectory | mean calls | edited % |",
                  "|---|---|---|---:|---|---:|---:|"]
        for r in res["ase_sets"]:
            hist = ", ".join(f"{k}: {v}" for k, v in r["calls_hist"].items())
            lines.append(f"| {r['type']} | {r['group']} | {','.join(map(str, r['seeds']))} | {r['trajectories']} | "
                         f"{hist} | {r['mean_calls']:.2f} | {100 * r['edited']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="the sweep directory (<sweep>/<group>/seed_<s>)")
    ap.add_argument("--groups", nargs="+", required=True, help="groups whose every policy is tabled per type")
    ap.add_argument("--ase-sets", nargs="*", default=[], help="groups whose flywheel/sft.jsonl (ASE set) is described")
    ap.add_argument("--out", type=Path, required=True, help="folder for stage_types.{md,json}")
    args = ap.parse_args(argv)
    try:
        res = collect(args.sweep, args.groups, args.ase_sets)
    except (FileNotFoundError, ValueError) as exc:
        print(f"stage_types: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "stage_types.json", res)
    md = markdown(res)
    atomic_write_text(args.out / "stage_types.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
