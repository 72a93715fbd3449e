"""Paired differences between two groups of a sweep, with two 95% intervals (issue 22).

Runs are paired by seed: the same seed means the same world, the same seed agent and the same
test questions, so the difference of two groups on one seed removes the seed-to-seed spread
that mean ± std over groups keeps. For a comparison ``a - b`` and a metric:

* ``mean``: the mean over paired seeds of ``a_s - b_s`` (each run's metric as its eval wrote it);
* ``t_low`` / ``t_high``: the paired-t interval over seeds, ``mean ± t(1 - alpha/2, n-1) · sd / sqrt(n)``
  with ``sd`` the sample std (ddof 1) of the per-seed differences; needs n >= 2. Seeds are the
  unit: how far another draw of seeds (seed agents, RL) could move the mean;
* ``boot_low`` / ``boot_high``: a question-level bootstrap. Within each seed the test questions are
  resampled with replacement, the SAME resample for both groups (they answered the same
  questions), each group's metric is recomputed on it as the mean of its per-question values,
  and the per-seed differences are averaged over seeds; the interval is the alpha/2 and
  1 - alpha/2 percentiles over ``n_boot`` resamples. The resample of a seed (and of a question
  type) depends only on ``boot_seed``, that seed and the type, so every comparison and metric
  of a sweep uses the same draws. The seeds stay fixed: how far another draw of test questions
  could move the mean.

A metric's per-question values are :func:`etagent.report.results.unit_metrics` (compute_metrics
on one trajectory; a question's samples averaged); the bootstrap is only given for a metric
whose per-question values average to the run's own value (per-call shares such as tool
productivity do not), otherwise it is None with a note. Per question type (``meta.type`` of
the world's examples) the point estimate is the difference of the per-question means.

Runs that cannot be paired (a seed missing in the other group, a seed twice in one group, no
seed) are returned as ``unpaired`` with the reason and left out of every paired number.
"""

from __future__ import annotations

import math
import statistics
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 2000
BOOT_SEED = 0

#: (metric, label, direction, scale): direction +1 higher is better, -1 lower is better, 0 neither;
#: scale turns the metric into the unit the tables print (fractions -> points).
PAIRED_METRICS: tuple[tuple[str, str, int, float], ...] = (
    ("correctness", "correctness", +1, 100.0),
    ("efficiency", "efficiency", +1, 100.0),
    ("mean_calls", "calls / q", 0, 1.0),
    ("conciseness", "conciseness", +1, 100.0),
    ("redundant_rate", "redundant", -1, 100.0),
    ("insufficient_rate", "insufficient", -1, 100.0),
    ("aborted_rate", "aborted", -1, 100.0),
    ("erroneous_rate", "erroneous", -1, 100.0),
    ("exec_score", "successful execution", +1, 100.0),
    ("model_tokens_mean", "model tokens", 0, 1.0),
    ("length_score", "length score x1000", +1, 1.0),
)


# --------------------------------------------------------------------------- intervals


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy import stats

    if df < 1:
        raise ValueError(f"t_quantile: df must be >= 1, got {df}")
    return float(stats.t.ppf(p, df))


def t_interval(diffs: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean, sample sd and the paired-t interval of per-seed differences (interval None for n < 2)."""
    x = [float(d) for d in diffs]
    n = len(x)
    out: dict[str, Any] = {"n": n, "mean": statistics.fmean(x) if x else None, "sd": None,
                           "t_low": None, "t_high": None}
    if n >= 2:
        sd = statistics.stdev(x)
        half = t_quantile(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n)
        out.update(sd=sd, t_low=out["mean"] - half, t_high=out["mean"] + half)
    return out


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] counts: how often each of n items is drawn in each resample (n draws with replacement)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + np.arange(n_boot)[:, None] * n).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _rng(boot_seed: int, seed: Any, qtype: str | None) -> np.random.Generator:
    return np.random.default_rng([int(boot_seed), zlib.crc32(str(seed).encode()), zlib.crc32(str(qtype).encode())])


def _weighted_means(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Each resample's mean of the defined values (NaN when a resample drew none)."""
    ok = np.isfinite(v)
    num = w @ np.where(ok, v, 0.0)
    den = w @ ok.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def bootstrap_interval(per_seed: Sequence[tuple[Any, np.ndarray, np.ndarray]], n_boot: int = N_BOOT,
                       boot_seed: int = BOOT_SEED, level: float = LEVEL, qtype: str | None = None,
                       counts: dict[tuple, np.ndarray] | None = None) -> dict[str, Any]:
    """Question bootstrap of the across-seed mean difference ``mean_s(mean(a_s) - mean(b_s))``.

    ``per_seed``: (seed, a values, b values), both arrays over the same questions in the same
    order (NaN = undefined for that question). Returns boot_low, boot_high and boot_n (the
    resamples in which every seed's difference is defined). ``counts`` keeps the resamples for
    the next metric of the same seed and questions (they are the same draws anyway).
    """
    if not per_seed or n_boot < 1:
        return {"boot_low": None, "boot_high": None, "boot_n": 0}
    diffs = []
    for seed, a, b in per_seed:
        if a.shape != b.shape:
            raise ValueError(f"bootstrap: seed {seed}: the groups' question arrays differ in length")
        key = (boot_seed, str(seed), qtype, len(a), n_boot)
        w = counts.get(key) if counts is not None else None
        if w is None:
            w = resample_counts(len(a), n_boot, _rng(boot_seed, seed, qtype))
            if counts is not None:
                counts[key] = w
        diffs.append(_weighted_means(w, a) - _weighted_means(w, b))
    mean = np.mean(np.vstack(diffs), axis=0)
    ok = np.isfinite(mean)
    if not ok.any():
        return {"boot_low": None, "boot_high": None, "boot_n": 0}
    alpha = (1 - level) / 2
    lo, hi = np.percentile(mean[ok], [100 * alpha, 100 * (1 - alpha)])
    return {"boot_low": float(lo), "boot_high": float(hi), "boot_n": int(ok.sum())}


# --------------------------------------------------------------------------- per-question values


@dataclass
class Units:
    """One run's per-question values: ids (sorted), each id's question type, metric -> values
    aligned with ids (NaN = undefined), and which metrics average to the run's own value."""

    ids: list[str]
    types: dict[str, str]
    values: dict[str, np.ndarray]
    consistent: dict[str, bool]

    def take(self, ids: Sequence[str], metric: str) -> np.ndarray:
        pos = {q: i for i, q in enumerate(self.ids)}
        return self.values[metric][[pos[q] for q in ids]]


def load_units(run_dir: str | Path, policy: str, overall: Mapping[str, Any],
               metrics: Sequence[str] = tuple(m for m, *_ in PAIRED_METRICS)) -> Units | None:
    """Per-question values of ``policy`` in ``run_dir`` (eval trajectories + the world's examples of
    the eval split); None when the trajectories or examples are not there."""
    from etagent.report.results import _examples, _trajectories, run_scoring, unit_metrics
    from etagent.report.rundata import load_yaml

    run_dir = Path(run_dir)
    config = (load_yaml(run_dir / "config.yaml") or {}) if (run_dir / "config.yaml").exists() else {}
    split = str((config.get("eval") or {}).get("split") or "test")
    examples = _examples(run_dir, split)
    trajs = _trajectories(run_dir / "eval" / policy)
    if not trajs:
        return None
    units = unit_metrics(trajs, examples, **run_scoring(run_dir))
    if not units:
        return None
    by_q: dict[str, list[Mapping[str, Any]]] = {}
    for t, u in zip(trajs, units):
        by_q.setdefault(t.example_id, []).append(u)
    ids = sorted(by_q)
    values, consistent = {}, {}
    for m in metrics:
        col = []
        for q in ids:
            vals = [float(u[m]) for u in by_q[q] if isinstance(u.get(m), (int, float)) and not isinstance(u.get(m), bool)]
            col.append(statistics.fmean(vals) if vals else math.nan)
        arr = np.asarray(col, dtype=np.float64)
        values[m] = arr
        run_value = overall.get(m)
        ok = arr[np.isfinite(arr)]
        consistent[m] = (isinstance(run_value, (int, float)) and ok.size > 0
                         and abs(float(ok.mean()) - float(run_value)) <= 1e-9 * max(1.0, abs(float(run_value))))
    types = {q: str((examples[q].meta or {}).get("type") or "(none)") for q in ids}
    return Units(ids=ids, types=types, values=values, consistent=consistent)


# --------------------------------------------------------------------------- pairing


def pair_by_seed(a: Sequence[Any], b: Sequence[Any]) -> tuple[list[tuple[Any, Any, Any]], list[dict[str, Any]]]:
    """(seed, run of a, run of b) for every seed both groups ran once, and the runs left out with why.

    Runs carry ``.seed``, ``.job`` and ``.group`` (compare.SweepRun).
    """
    unpaired: list[dict[str, Any]] = []

    def by_seed(runs: Sequence[Any]) -> dict[str, Any]:
        seen: dict[str, list[Any]] = {}
        for r in runs:
            if r.seed is None:
                unpaired.append({"job": r.job, "group": r.group, "seed": None, "reason": "no seed"})
                continue
            seen.setdefault(str(r.seed), []).append(r)
        for s, rs in list(seen.items()):
            if len(rs) > 1:
                unpaired.extend({"job": r.job, "group": r.group, "seed": r.seed,
                                 "reason": f"seed {s} appears {len(rs)} times in {r.group}"} for r in rs)
                del seen[s]
        return {s: rs[0] for s, rs in seen.items()}

    sa, sb = by_seed(a), by_seed(b)
    pairs = []
    for s in sorted(set(sa) | set(sb), key=_seed_key):
        if s in sa and s in sb:
            pairs.append((sa[s].seed, sa[s], sb[s]))
        else:
            here, other = (sa[s], b) if s in sa else (sb[s], a)
            other_group = other[0].group if other else "the other group"
            unpaired.append({"job": here.job, "group": here.group, "seed": here.seed,
                             "reason": f"seed {s} missing in {other_group}"})
    return pairs, unpaired


def _seed_key(s: str) -> tuple[int, Any]:
    try:
        return (0, int(s))
    except ValueError:
        return (1, s)


# --------------------------------------------------------------------------- one comparison


def paired_comparison(a_name: str, a_runs: Sequence[Any], b_name: str, b_runs: Sequence[Any],
                      units: Callable[[Any], Units | None], *, n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED,
                      level: float = LEVEL, metrics: Sequence[tuple[str, str, int, float]] = PAIRED_METRICS,
                      counts: dict[tuple, np.ndarray] | None = None) -> dict[str, Any]:
    """Every paired number of ``a - b``: per metric overall and per question type.

    ``a_runs`` / ``b_runs`` carry ``.seed``, ``.job``, ``.group`` and ``.metrics`` (the run's
    overall metrics); ``units(run)`` gives its per-question values (None: no bootstrap).
    """
    pairs, unpaired = pair_by_seed(a_runs, b_runs)
    out: dict[str, Any] = {"a": a_name, "b": b_name, "seeds": [s for s, _, _ in pairs], "n_pairs": len(pairs),
                           "unpaired": unpaired, "level": level, "n_boot": n_boot, "boot_seed": boot_seed,
                           "metrics": {}, "by_type": {}, "question_mismatch": []}
    per_seed_units: list[tuple[Any, Units | None, Units | None, list[str]]] = []
    for seed, ra, rb in pairs:
        ua, ub = units(ra), units(rb)
        ids: list[str] = []
        if ua is not None and ub is not None:
            ids = sorted(set(ua.ids) & set(ub.ids))
            if set(ua.ids) != set(ub.ids):
                out["question_mismatch"].append({"seed": seed, "a_only": len(set(ua.ids) - set(ub.ids)),
                                                 "b_only": len(set(ub.ids) - set(ua.ids))})
        per_seed_units.append((seed, ua, ub, ids))
    have_units = bool(pairs) and all(ua is not None and ub is not None and ids for _, ua, ub, ids in per_seed_units)
    for key, *_ in metrics:
        diffs, seeds = [], []
        for seed, ra, rb in pairs:
            va, vb = _num(ra.metrics.get(key)), _num(rb.metrics.get(key))
            if va is not None and vb is not None:
                diffs.append(va - vb)
                seeds.append(seed)
        if not diffs:
            continue
        stats = {"seeds": seeds, "diffs": diffs, **t_interval(diffs, level)}
        note = ("no per-question trajectories" if not have_units
                else "the metric is missing in some paired runs" if len(seeds) != len(pairs)
                else None if all(ua.consistent.get(key) and ub.consistent.get(key) for _, ua, ub, _ in per_seed_units)
                else "per-question values do not average to the run's value")
        if note is not None:
            stats.update(boot_low=None, boot_high=None, boot_n=0, boot_note=note)
        else:
            stats.update(bootstrap_interval([(s, ua.take(ids, key), ub.take(ids, key))
                                             for s, ua, ub, ids in per_seed_units], n_boot, boot_seed, level,
                                            counts=counts))
        out["metrics"][key] = stats
    if have_units:
        out["by_type"] = _by_type(per_seed_units, metrics, n_boot, boot_seed, level, counts)
    return out


def _by_type(per_seed_units, metrics, n_boot: int, boot_seed: int, level: float,
             counts: dict[tuple, np.ndarray] | None) -> dict[str, Any]:
    types = sorted({ua.types[q] for _, ua, _, ids in per_seed_units for q in ids})
    out: dict[str, Any] = {}
    for qtype in types:
        rows: dict[str, Any] = {}
        for key, *_ in metrics:
            arrays, diffs, seeds = [], [], []
            for seed, ua, ub, ids in per_seed_units:
                tids = [q for q in ids if ua.types[q] == qtype]
                if not tids:
                    continue
                a, b = ua.take(tids, key), ub.take(tids, key)
                if not (np.isfinite(a).any() and np.isfinite(b).any()):
                    continue
                arrays.append((seed, a, b))
                diffs.append(float(np.nanmean(a) - np.nanmean(b)))
                seeds.append(seed)
            if not diffs:
                continue
            n_q = [len(a) for _, a, _ in arrays]
            rows[key] = {"seeds": seeds, "diffs": diffs, "questions": n_q, **t_interval(diffs, level),
                         **bootstrap_interval(arrays, n_boot, boot_seed, level, qtype=qtype, counts=counts)}
        if rows:
            out[qtype] = rows
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


# --------------------------------------------------------------------------- a sweep's paired section


def paired_study(runs_by_group: Mapping[str, Sequence[Any]], reference: str | None, target: str | None,
                 units: Callable[[Any], Units | None], *, n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED,
                 level: float = LEVEL, goal_eff_lb: float = 0.0, goal_correct_lb: float = -2.0,
                 min_pairs: int = 2, exploratory: bool = False) -> dict[str, Any]:
    """Every group minus ``reference``, and ``target`` minus every other group (its ablations).

    ``goal_eff_lb`` / ``goal_correct_lb`` are in points (percentage points): the target-minus-
    reference interval's lower bound must exceed them (efficiency and correctness). A goal is
    decided only with at least ``min_pairs`` seed pairs (a pre-registered design's seed count):
    below it the section is *interim*, the intervals are shown and ``met_*`` stay None.
    ``exploratory``: a comparison outside a design's decision rule (e.g. a group added after a
    result was seen): the intervals are shown and no goal is ever decided (``met_*`` stay None).
    """
    if int(min_pairs) < 2:
        raise ValueError(f"paired: min_pairs must be >= 2 (a paired t needs two pairs), got {min_pairs}")
    for name in (reference, target):
        if name is not None and name not in runs_by_group:
            raise ValueError(f"paired: no group {name!r} (groups: {', '.join(runs_by_group)})")
    plan: list[tuple[str, str, str]] = []
    if reference is not None:
        plan += [(g, reference, "vs_reference") for g in runs_by_group if g != reference]
    if target is not None:
        plan += [(target, g, "vs_target") for g in runs_by_group if g not in (target, reference)]
    comparisons, counts = [], {}  # counts: each seed's resamples, drawn once for every comparison
    for a, b, kind in plan:
        c = paired_comparison(a, runs_by_group[a], b, runs_by_group[b], units, n_boot=n_boot,
                              boot_seed=boot_seed, level=level, counts=counts)
        comparisons.append({"kind": kind, **c})
    seen, unpaired = set(), []
    for c in comparisons:
        for u in c["unpaired"]:
            k = (u["job"], u["reason"])
            if k not in seen:
                seen.add(k)
                unpaired.append(u)
    out = {"reference": reference, "target": target, "level": level, "n_boot": n_boot, "boot_seed": boot_seed,
           "comparisons": comparisons, "unpaired": unpaired, "goals": [], "min_pairs": int(min_pairs),
           "interim": None, "exploratory": bool(exploratory)}
    decisive = next((c for c in comparisons if c["a"] == target and c["b"] == reference), None)
    if decisive is not None:
        out["interim"] = decisive["n_pairs"] < int(min_pairs)
        undecided = out["interim"] or out["exploratory"]
        for key, lb in (("efficiency", goal_eff_lb), ("correctness", goal_correct_lb)):
            m = decisive["metrics"].get(key)
            goal: dict[str, Any] = {"metric": key, "lower_bound_above": lb, "unit": "points"}
            if m is not None:
                goal.update(mean=m["mean"], t_low=m["t_low"], t_high=m["t_high"],
                            boot_low=m["boot_low"], boot_high=m["boot_high"], n=m["n"],
                            met_t=None if m["t_low"] is None or undecided else 100 * m["t_low"] > lb,
                            met_bootstrap=None if m["boot_low"] is None or undecided else 100 * m["boot_low"] > lb)
            out["goals"].append(goal)
    return out


_SCALE = {k: s for k, _, _, s in PAIRED_METRICS}
_LABEL = {k: label for k, label, _, _ in PAIRED_METRICS}
_TABLE_KEYS = ("correctness", "efficiency", "mean_calls", "redundant_rate", "insufficient_rate")


def _f(x: float | None, key: str, sign: bool = True) -> str:
    if x is None:
        return "-"
    v = x * _SCALE.get(key, 1.0)
    digits = 2 if _SCALE.get(key, 1.0) == 1.0 and key == "mean_calls" else 1
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _ci(m: Mapping[str, Any] | None, key: str, which: str) -> str:
    if m is None or m.get(f"{which}_low") is None:
        return "-"
    return f"[{_f(m[f'{which}_low'], key)}, {_f(m[f'{which}_high'], key)}]"


def _effect(m: Mapping[str, Any] | None, key: str) -> str:
    """A short reading of one interval pair: excludes 0 (both intervals) or not shown."""
    if m is None or m.get("t_low") is None:
        return "not estimable"
    lows = [m[k] for k in ("t_low", "boot_low") if m.get(k) is not None]
    highs = [m[k] for k in ("t_high", "boot_high") if m.get(k) is not None]
    if all(x > 0 for x in lows):
        return "positive (both intervals above 0)" if len(lows) > 1 else "positive (t interval above 0)"
    if all(x < 0 for x in highs):
        return "negative (both intervals below 0)" if len(highs) > 1 else "negative (t interval below 0)"
    return "not shown (an interval covers 0)"


def markdown(study: Mapping[str, Any]) -> str:
    """The paired section of compare.md."""
    ref, tgt = study["reference"], study["target"]
    pct = round(100 * study["level"])
    lines = ["## Paired differences (runs paired by seed)", "",
             f"Difference `a - b` over the seeds both groups ran (same seed: same world, seed agent and test "
             f"questions); shares in points, calls and tokens as they are. {pct}% intervals: paired t over seeds "
             f"(t with n-1 df) and a question bootstrap ({study['n_boot']} resamples of each seed's test questions, "
             f"the same for both groups, RNG seed {study['boot_seed']}). `etagent/report/paired.py` states the method.", ""]
    comps = study["comparisons"]
    decisive = next((c for c in comps if c["a"] == tgt and c["b"] == ref), None)
    if decisive is not None:
        lines += [f"### `{tgt}` vs `{ref}`", "",
                  f"{decisive['n_pairs']} pair(s), seeds {', '.join(map(str, decisive['seeds'])) or '-'}."]
        if study.get("exploratory"):
            lines.append("**Exploratory**: a comparison outside the design's decision rule; the intervals are shown, "
                         "no goal is decided.")
        elif study.get("interim"):
            lines.append(f"**Interim**: {decisive['n_pairs']} of the {study['min_pairs']} seed pairs the design needs; "
                         f"the intervals are shown, no goal is decided.")
        for g in study["goals"]:
            key, lb = g["metric"], g["lower_bound_above"]
            m = decisive["metrics"].get(key)
            if m is None:
                lines.append(f"- {_LABEL[key].capitalize()}: not in both groups.")
                continue
            verdict = "; ".join(f"{name} lower bound > {lb:g} points: "
                                + ("exploratory, not decided" if study.get("exploratory")
                                   else "interim" if study.get("interim") else "n/a" if g[flag] is None
                                   else "**yes**" if g[flag] else "**no**")
                                for name, flag in (("t", "met_t"), ("bootstrap", "met_bootstrap")))
            lines.append(f"- {_LABEL[key].capitalize()}: {_f(m['mean'], key)} points, t {_ci(m, key, 't')}, "
                         f"bootstrap {_ci(m, key, 'boot')}. Goal: {verdict}.")
        lines.append("")
    if comps:
        lines += ["### Efficiency and correctness, every comparison", "",
                  "| a - b | kind | n | efficiency | t | bootstrap | correctness | t | bootstrap |",
                  "|---|---|---:|---:|---|---|---:|---|---|"]
        for c in comps:
            e, k = c["metrics"].get("efficiency"), c["metrics"].get("correctness")
            lines.append(f"| `{c['a']}` - `{c['b']}` | {'vs reference' if c['kind'] == 'vs_reference' else 'vs target'} "
                         f"| {c['n_pairs']} | {_f(e and e['mean'], 'efficiency')} | {_ci(e, 'efficiency', 't')} "
                         f"| {_ci(e, 'efficiency', 'boot')} | {_f(k and k['mean'], 'correctness')} "
                         f"| {_ci(k, 'correctness', 't')} | {_ci(k, 'correctness', 'boot')} |")
        lines.append("")
    ablations = [c for c in comps if c["kind"] == "vs_target"]
    if ablations:
        lines += [f"### `{tgt}` minus each other group (an ablation: positive = the removed part helps)", ""]
        for c in ablations:
            e, k = c["metrics"].get("efficiency"), c["metrics"].get("correctness")
            lines.append(f"- `{c['b']}` ({c['n_pairs']} pair{'s' if c['n_pairs'] != 1 else ''}): efficiency {_f(e and e['mean'], 'efficiency')} "
                         f"t {_ci(e, 'efficiency', 't')}, {_effect(e, 'efficiency')}; correctness "
                         f"{_f(k and k['mean'], 'correctness')} t {_ci(k, 'correctness', 't')}, {_effect(k, 'correctness')}.")
        lines.append("")
    for c in comps:
        lines += [f"### `{c['a']}` - `{c['b']}`: every metric", "",
                  "| metric | n | mean | t | bootstrap |", "|---|---:|---:|---|---|"]
        for key, m in c["metrics"].items():
            note = f" ({m['boot_note']})" if m.get("boot_note") else ""
            lines.append(f"| {_LABEL.get(key, key)} | {m['n']} | {_f(m['mean'], key)} | {_ci(m, key, 't')} "
                         f"| {_ci(m, key, 'boot')}{note} |")
        if c["by_type"]:
            lines += ["", "Per question type (difference of the per-question means; t / bootstrap):", "",
                      "| type | questions/seed | " + " | ".join(_LABEL[k] for k in _TABLE_KEYS) + " |",
                      "|---|---:|" + "---|" * len(_TABLE_KEYS)]
            for qtype, rows in c["by_type"].items():
                nq = next(iter(rows.values()))["questions"]
                cells = [f"{_f(rows[k]['mean'], k)} t {_ci(rows[k], k, 't')} b {_ci(rows[k], k, 'boot')}"
                         if k in rows else "-" for k in _TABLE_KEYS]
                lines.append(f"| {qtype} | {min(nq)}-{max(nq)} | " + " | ".join(cells) + " |"
                             if min(nq) != max(nq) else f"| {qtype} | {nq[0]} | " + " | ".join(cells) + " |")
        if c["question_mismatch"]:
            lines += ["", "Question sets differ on seeds " + ", ".join(str(q["seed"]) for q in c["question_mismatch"])
                      + " (the bootstrap uses the shared questions)."]
        lines.append("")
    if study["unpaired"]:
        lines += ["### Unpaired runs (left out of every paired number)", ""]
        lines += [f"- `{u['job']}` ({u['group']}, seed {u['seed']}): {u['reason']}" for u in study["unpaired"]]
        lines.append("")
    return "\n".join(lines)
