"""Aggregate a sweep: mean ± std over seeds of each configuration's final-policy metrics.

Usage::

    python -m etagent.report.compare multirun/etagent/2026-01-01_12-00-00 [--out DIR]
    etagent-compare outputs/etagent/run_a outputs/etagent/run_b --policy ase

Inputs are run directories or folders holding them (a Hydra multirun dir: one subdir per
job named by its override dirname, e.g. ``experiment=grpo_correctness,seed=1``); run
directories are found up to three levels down. A run's *group* is its overrides without
the seed (``seed``, ``resume``, ``init_from``, ``init_stages``, ``logger``, ``hydra.*``, ``paths.*`` dropped), read from
``.hydra/overrides.yaml`` when present, else parsed from the directory name. Runs with no
evaluated policy are listed and left out of the aggregate.

Spread is the sample standard deviation (ddof = 1) over the group's runs; with one run
it is undefined and shown as '-'. Each metric's mean skips runs where it is None (e.g.
tool productivity without any call) and its own count is kept (``n`` per metric).

Writes ``compare.md`` (table of group means ± std, then the per-run table), ``compare.csv``
(one row per group: ``<metric>_mean``, ``<metric>_std``, ``<metric>_n``), ``compare.json``
``radar.png`` (group means with ± std whiskers) and ``dimensions.png`` (per metric: group
mean ± std and each seed's value) into ``--out`` (default ``<sweep dir>/compare``), and the tidy
tables in the runs' own schema (:mod:`etagent.report.results`): ``results.{parquet,csv}`` and
``questions.{parquet,csv}`` (every run's rows, read from its ``results.parquet`` or built from
its eval files) and ``aggregate.{parquet,csv}`` (per experiment x policy x split x domain x
benchmark x metric: mean, sample std, n_runs, seeds).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from etagent.evaluation.metrics import TABLE_COLUMNS, metrics_table_markdown
from etagent.report.identity import IGNORED_KEYS, IGNORED_PREFIXES, _key, group_of, split_override_dirname  # noqa: F401
from etagent.report.rundata import load_policies, load_yaml, policy_label
from etagent.utils.io import atomic_write_json, atomic_write_text


@dataclass
class SweepRun:
    path: Path
    job: str                      # name inside the sweep (relative path / override dirname)
    overrides: list[str]
    group: str
    seed: Any
    policy: str | None = None     # the policy whose metrics are aggregated
    metrics: dict[str, Any] = field(default_factory=dict)


def _is_run(p: Path) -> bool:
    return (p / "summary.json").exists() or (p / "eval" / "summary.json").exists() or (p / "config.yaml").exists()


def find_runs(paths: Sequence[str | Path], max_depth: int = 3) -> list[tuple[Path, str]]:
    """(run dir, job name) for every run under the given paths, sorted by job name per input."""
    found: list[tuple[Path, str]] = []
    for root in map(Path, paths):
        if not root.is_dir():
            raise FileNotFoundError(f"compare: no such directory: {root}")
        if _is_run(root):
            found.append((root, root.name))
            continue
        frontier, depth, here = [root], 0, []
        while frontier and depth < max_depth:
            nxt = []
            for d in frontier:
                for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    (here if _is_run(sub) else nxt).append(sub)
            frontier, depth = nxt, depth + 1
        found += sorted(((p, p.relative_to(root).as_posix()) for p in here), key=lambda x: x[1])
    return found


def load_sweep_run(path: Path, job: str, policy: str = "final") -> SweepRun:
    ov_file = path / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in (load_yaml(ov_file) or [])] if ov_file.exists() else split_override_dirname(path.name)
    seed = None
    if (path / "config.yaml").exists():
        seed = (load_yaml(path / "config.yaml") or {}).get("seed")
    if seed is None:
        seed = next((o.split("=", 1)[1] for o in overrides if _key(o) == "seed"), None)
    run = SweepRun(path=path, job=job, overrides=overrides, group=group_of(overrides), seed=seed)
    pols = load_policies(path)
    if pols:
        name = list(pols)[-1] if policy == "final" else policy
        if name in pols:
            run.policy, run.metrics = name, dict(pols[name]["overall"])
    return run


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def metric_keys(runs: Sequence[SweepRun]) -> list[str]:
    present = {k for r in runs for k, v in r.metrics.items() if _num(v) is not None}
    table = [k for k, *_ in TABLE_COLUMNS if k in present]
    return table + sorted(present - set(table))


def aggregate(runs: Sequence[SweepRun]) -> list[dict[str, Any]]:
    """One dict per group (first-seen order): group, runs, seeds, policies, mean/std/n per metric."""
    keys = metric_keys(runs)
    groups: dict[str, list[SweepRun]] = {}
    for r in runs:
        if r.metrics:
            groups.setdefault(r.group, []).append(r)
    out = []
    for g, rs in groups.items():
        mean, std, n, values = {}, {}, {}, {}
        for k in keys:
            vals = [x for x in (_num(r.metrics.get(k)) for r in rs) if x is not None]
            n[k], values[k] = len(vals), vals
            mean[k] = statistics.fmean(vals) if vals else None
            std[k] = statistics.stdev(vals) if len(vals) > 1 else None
        out.append({"group": g, "n_runs": len(rs), "jobs": [r.job for r in rs], "seeds": [r.seed for r in rs],
                    "policies": sorted({str(r.policy) for r in rs}), "mean": mean, "std": std, "n": n,
                    "values": values})
    return out


def _pm(mean: float | None, std: float | None, scale: float, fmt: str) -> str:
    if mean is None:
        return "-"
    fmt = ".2f" if fmt == "d" else fmt
    s = format(mean * scale, fmt)
    return f"{s} ± {format(std * scale, fmt)}" if std is not None else f"{s} ± -"


def markdown(groups: list[dict[str, Any]], runs: Sequence[SweepRun]) -> str:
    cols = [c for c in TABLE_COLUMNS if c[0] != "n"]
    lines = ["# Sweep comparison", "",
             "Final policy of each run; mean ± sample std (ddof 1) over the group's runs (seeds); "
             "fractions in %.", "",
             "| group | runs | seeds | policy | " + " | ".join(h for _, h, _, _ in cols) + " |",
             "|---|---:|---|---|" + "---:|" * len(cols)]
    for g in groups:
        cells = [_pm(g["mean"].get(k), g["std"].get(k), s, f) for k, _, s, f in cols]
        seeds = ",".join(str(s) for s in g["seeds"])
        pols = "/".join(policy_label(p) for p in g["policies"])
        lines.append(f"| {g['group']} | {g['n_runs']} | {seeds} | {pols} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", metrics_table_markdown({f"{r.job} ({r.policy})": r.metrics for r in runs if r.metrics})]
    missing = [r.job for r in runs if not r.metrics]
    if missing:
        lines += ["Runs without evaluated policy (left out): " + ", ".join(f"`{m}`" for m in missing), ""]
    return "\n".join(lines)


def to_csv(groups: list[dict[str, Any]]) -> str:
    keys = list(groups[0]["mean"]) if groups else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "n_runs", "seeds", "policies"] + [f"{k}_{s}" for k in keys for s in ("mean", "std", "n")])
    for g in groups:
        row = [g["group"], g["n_runs"], " ".join(map(str, g["seeds"])), " ".join(g["policies"])]
        for k in keys:
            row += ["" if g["mean"][k] is None else repr(g["mean"][k]),
                    "" if g["std"][k] is None else repr(g["std"][k]), g["n"][k]]
        w.writerow(row)
    return buf.getvalue()


def aggregate_frame(results):
    """Long per-experiment summary of a sweep's tidy table: mean, sample std (ddof 1), runs, seeds."""
    keys = ["experiment", "policy", "split", "domain", "benchmark", "metric"]
    if results.empty:
        import pandas as pd

        return pd.DataFrame(columns=[*keys, "mean", "std", "n_runs", "seeds"])
    g = results.dropna(subset=["value"]).groupby(keys, sort=False, dropna=False)
    agg = g["value"].agg(mean="mean", std="std", n_runs="count").reset_index()
    seeds = g["seed"].agg(lambda s: " ".join(str(x) for x in s)).reset_index(drop=True)
    agg["seeds"] = seeds.values
    return agg


def write_sweep_results(run_paths: Sequence[Path], out: Path) -> dict[str, Path]:
    """Every run's tidy tables concatenated (same schema as a run's) + the per-experiment aggregate."""
    import pandas as pd

    from etagent.report.results import load_results, questions_frame, results_frame, write_frame

    res = [load_results(p) for p in run_paths]
    qs = [load_results(p, questions=True) for p in run_paths]
    results = pd.concat([results_frame([]), *[r for r in res if not r.empty]], ignore_index=True)
    questions = pd.concat([questions_frame([]), *[q for q in qs if not q.empty]], ignore_index=True)
    paths = {"results": write_frame(results, out, "results")[0],
             "questions": write_frame(questions, out, "questions")[0],
             "aggregate": write_frame(aggregate_frame(results), out, "aggregate")[0]}
    return paths


REFERENCE_GROUP = "seed agent"


def reference_group(found: Sequence[tuple[Path, str]], policy: str) -> dict[str, Any] | None:
    """The starting policy (e.g. the seed agent) as one more row: one point per *distinct* agent.

    Runs that share a seed agent (``init_from`` one base run) evaluate the same checkpoint on
    the same questions, so their rows are identical and count once; a sweep over the seed
    agent's own seed gives one point per seed agent.
    """
    seen: dict[tuple, SweepRun] = {}
    for p, job in found:
        r = load_sweep_run(p, job, policy)
        if r.metrics and r.policy == policy:
            seen.setdefault(tuple(sorted((k, repr(v)) for k, v in r.metrics.items())), r)
    if not seen:
        return None
    rs = list(seen.values())
    for r in rs:
        r.group = REFERENCE_GROUP
    g = aggregate(rs)[0]
    g["reference"] = policy
    return g


def resolve_group(name: str, groups: Sequence[str]) -> str | None:
    """A group named on the command line: its exact name, or the one group whose overrides hold
    ``experiment=<name>`` (``et_agent`` -> ``experiment=et_agent,preset=mechanism``); None if none."""
    if name in groups:
        return name
    token = name if "=" in name else f"experiment={name}"
    hits = [g for g in groups if token in split_override_dirname(g)]
    if len(hits) > 1:
        raise ValueError(f"compare: {name!r} matches several groups: {', '.join(hits)}; name one exactly")
    return hits[0] if hits else None


def paired_section(runs: Sequence[SweepRun], reference: str | None, target: str | None,
                   **options: Any) -> dict[str, Any] | None:
    """The paired differences (:mod:`etagent.report.paired`) of the evaluated runs, or None without a reference."""
    from etagent.report import paired

    if reference is None:
        return None
    by_group: dict[str, list[SweepRun]] = {}
    for r in runs:
        if r.metrics:
            by_group.setdefault(r.group, []).append(r)
    ref = resolve_group(reference, list(by_group))
    if ref is None:
        raise ValueError(f"compare: --reference {reference!r} is not a group here (groups: {', '.join(by_group)})")
    tgt = resolve_group(target, list(by_group)) if target else None
    cache: dict[Path, Any] = {}

    def units(r: SweepRun) -> Any:
        if r.path not in cache:
            cache[r.path] = paired.load_units(r.path, str(r.policy), r.metrics)
        return cache[r.path]

    return paired.paired_study(by_group, ref, tgt, units, **options)


def compare(paths: Sequence[str | Path], out_dir: str | Path | None = None, policy: str = "final",
            start_policy: str | None = "seed", target: str | None = "experiment=et_agent",
            reference: str | None = None, n_boot: int = 2000, boot_seed: int = 0,
            goal_eff_lb: float = 0.0, goal_correct_lb: float = -2.0, min_pairs: int = 2,
            exploratory: bool = False) -> dict[str, Any]:
    """Aggregate the runs under ``paths`` and write compare.{md,csv,json} + radar.png; returns the JSON.

    ``start_policy`` adds the runs' starting policy (default the seed agent) as a first row;
    ``target`` is the group judged against every other one (:mod:`etagent.report.verdict`);
    ``reference`` (a group, e.g. ``plain_grpo``) adds the paired differences of every group
    against it and of ``target`` against every other group (:mod:`etagent.report.paired`), with
    ``n_boot`` question resamples (RNG ``boot_seed``) and the goals on the target's lower bounds
    (``goal_eff_lb`` / ``goal_correct_lb``, in points), decided only with ``min_pairs`` seed pairs
    (fewer: an interim section; ``exploratory``: never decided). Group names may be short
    (``et_agent`` = the group with ``experiment=et_agent``).
    """
    from etagent.report.verdict import verdict

    found = find_runs(paths)
    if not found:
        raise FileNotFoundError(f"compare: no run directory under {', '.join(map(str, paths))}")
    runs = [load_sweep_run(p, job, policy) for p, job in found]
    groups = aggregate(runs)
    if target:
        target = resolve_group(target, [g["group"] for g in groups]) or target
    # comparing the starting policy itself: its row would repeat the groups
    ref = reference_group(found, start_policy) if start_policy and start_policy != policy else None
    judged = verdict(groups, target, ref) if target else None
    paired_res = paired_section(runs, reference, target, n_boot=n_boot, boot_seed=boot_seed,
                                goal_eff_lb=goal_eff_lb, goal_correct_lb=goal_correct_lb, min_pairs=min_pairs,
                                exploratory=exploratory)
    if ref is not None:
        groups = [ref, *groups]
    if out_dir is None:
        first = Path(paths[0])
        out_dir = first / "compare" if len(paths) == 1 and not _is_run(first) else Path("compare")
    out = Path(out_dir)
    result = {
        "policy": policy,
        "start_policy": start_policy,
        "groups": groups,
        "verdict": judged,
        "paired": paired_res,
        "runs": [{"job": r.job, "path": str(r.path), "group": r.group, "seed": r.seed, "policy": r.policy,
                  "overrides": r.overrides, "metrics": r.metrics} for r in runs],
    }
    tidy = write_sweep_results([r.path for r in runs], out)
    result["tidy"] = {k: str(v) for k, v in tidy.items()}
    md = markdown(groups, runs)
    if paired_res is not None:
        from etagent.report.paired import markdown as paired_markdown

        md += "\n" + paired_markdown(paired_res)
    if judged is not None:
        md += "\n## Verdict\n\n" + judged["paragraph"] + "\n"
    atomic_write_text(out / "compare.md", md)
    atomic_write_text(out / "compare.csv", to_csv(groups))
    atomic_write_json(out / "compare.json", result)
    if groups:
        from etagent.report import plots

        plots.radar({g["group"]: g["mean"] for g in groups}, out / "radar.png",
                    title="Group means ± std over seeds (final policy)",
                    spread={g["group"]: {k: v for k, v in g["std"].items() if v is not None} for g in groups})
        rows = []
        for g in groups:
            members = [r for r in runs if r.metrics and r.group == g["group"]] if "reference" not in g else []
            for key, *_ in plots.DOT_METRICS:
                m, sd = g["mean"].get(key), g["std"].get(key)
                if m is None:
                    continue
                rows.append({"label": g["group"], "metric": key, "value": m,
                             "lo": None if sd is None else m - sd, "hi": None if sd is None else m + sd,
                             "points": [_num(r.metrics.get(key)) for r in members]})
        plots.dimension_dots(rows, out / "dimensions.png", title="Sweep: final policy per group",
                             point_label="mean", interval_label="± std over seeds, hollow dots = each seed")
    result["out_dir"] = str(out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="etagent-compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="multirun directory or run directories")
    ap.add_argument("--out", default=None, help="output folder (default <sweep dir>/compare or ./compare)")
    ap.add_argument("--policy", default="final", help="policy to compare: final (default), seed, ase, rl_stage_1 ...")
    ap.add_argument("--start-policy", default="seed",
                    help="starting policy shown as a first row and used by the goals (default seed; 'none' to omit)")
    ap.add_argument("--target", default="experiment=et_agent",
                    help="group judged win/tie/loss against the others and, with --reference, paired against "
                         "every other group (default experiment=et_agent; a short name like et_agent works; 'none' to omit)")
    ap.add_argument("--reference", default=None,
                    help="group every other one is paired against by seed, e.g. plain_grpo (default: no paired section)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="question resamples of the paired bootstrap (default 2000)")
    ap.add_argument("--bootstrap-seed", type=int, default=0, help="RNG seed of the bootstrap (default 0)")
    ap.add_argument("--goal-eff-lb", type=float, default=0.0,
                    help="goal: the target-minus-reference efficiency interval's lower bound exceeds this, in points (default 0)")
    ap.add_argument("--goal-correct-lb", type=float, default=-2.0,
                    help="goal: the target-minus-reference correctness interval's lower bound exceeds this, in points (default -2)")
    ap.add_argument("--min-pairs", type=int, default=2,
                    help="seed pairs needed to decide the goals (default 2; a design's seed count, e.g. 5): "
                         "with fewer the paired section is marked interim and decides nothing")
    ap.add_argument("--exploratory", action="store_true",
                    help="the comparison is outside a design's decision rule (e.g. a group added after a result was "
                         "seen): intervals only, no goal decided, marked exploratory")
    args = ap.parse_args(argv)
    none = lambda v: None if v in (None, "", "none") else v  # noqa: E731
    try:
        res = compare(args.paths, args.out, args.policy, none(args.start_policy), none(args.target),
                      none(args.reference), n_boot=args.bootstrap, boot_seed=args.bootstrap_seed,
                      goal_eff_lb=args.goal_eff_lb, goal_correct_lb=args.goal_correct_lb, min_pairs=args.min_pairs,
                      exploratory=args.exploratory)
    except (FileNotFoundError, ValueError) as exc:
        print(f"etagent-compare: {exc}", file=sys.stderr)
        return 2
    print(Path(res["out_dir"], "compare.md").read_text(encoding="utf-8"))
    n_groups = sum(1 for g in res["groups"] if "reference" not in g)
    extra = " (+ the seed agent row)" if n_groups < len(res["groups"]) else ""
    print(f"[etagent-compare] {len(res['runs'])} runs, {n_groups} groups{extra} -> {res['out_dir']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
