"""Drill-down helpers for ``notebooks/analysis.ipynb`` (pandas in, pandas out; tested on their own).

* :func:`question_diff`     per question, the first vs the final policy: which questions flipped
  (gained / lost), with answers, calls and behaviour flags on both sides.
* :func:`rl_step_frame`     one row per RL step (stages end to end): reward, correctness, calls,
  length, KL, entropy, clip fraction and the behaviour rates.
* :func:`sweep_summary`     per experiment and policy: mean ± std over seeds of each metric, with the
  seeds' values (the sweep comparison, from the tidy results table).
"""

from __future__ import annotations

from typing import Any, Sequence

from etagent.report.results import FLAGS


def _flags(row: Any) -> str:
    return ", ".join(f for f in FLAGS if bool(row.get(f)) and row.get(f) == row.get(f)) or "-"


def question_diff(questions, before: str | None = None, after: str | None = None):
    """Questions of ONE run (``questions.parquet``): first (``before``) vs final (``after``) policy.

    With several samples per question, correctness is the share of correct samples and a
    question counts as right when at least half are. ``change`` is ``gained`` / ``lost`` /
    ``still right`` / ``still wrong``; flipped questions come first.
    """
    import pandas as pd

    if questions.empty:
        return pd.DataFrame()
    if questions["run_id"].nunique() > 1:
        raise ValueError("question_diff: pass the questions of one run (filter on run_id)")
    pols = list(dict.fromkeys(questions["policy"]))
    before, after = before or pols[0], after or pols[-1]
    for p in (before, after):
        if p not in pols:
            raise ValueError(f"question_diff: policy {p!r} not in {pols}")

    def side(p: str):
        q = questions[questions.policy == p].copy()
        q["flags"] = [_flags(r) for r in q.to_dict("records")]
        g = q.groupby("example_id", sort=False)
        return pd.DataFrame({"domain": g["domain"].first(), "question": g["question"].first(),
                             "gold": g["gold"].first(), "answer": g["answer"].first(),
                             "right": g["correct"].mean() >= 0.5, "score": g["score"].mean(),
                             "calls": g["calls"].mean(), "flags": g["flags"].first()})

    a, b = side(before), side(after)
    d = a.join(b[["answer", "right", "score", "calls", "flags"]], how="inner", lsuffix=f"_{before}",
               rsuffix=f"_{after}")
    ra, rb = d[f"right_{before}"], d[f"right_{after}"]
    d.insert(0, "change", ["gained" if (not x and y) else "lost" if (x and not y) else
                           "still right" if x else "still wrong" for x, y in zip(ra, rb)])
    order = {"gained": 0, "lost": 1, "still right": 2, "still wrong": 3}
    return d.sort_values("change", key=lambda s: s.map(order), kind="stable").reset_index()


_STEP_COLS = ("reward_mean", "correctness_mean", "tool_calls_mean", "model_tokens_mean", "kl", "entropy", "clip_frac",
              "redundant_rate", "insufficient_rate", "aborted_rate", "erroneous_rate", "f_tool_group_std",
              "f_len_group_std")


def rl_step_frame(series: dict[str, dict[str, list[tuple[int, float]]]], columns: Sequence[str] = _STEP_COLS):
    """``rundata.rl_series`` -> DataFrame indexed by (rl stage, step) with one column per quantity."""
    import pandas as pd

    rows: dict[tuple[str, int], dict[str, float]] = {}
    for q in columns:
        for stage, pts in (series.get(q) or {}).items():
            for step, v in pts:
                rows.setdefault((stage, step), {})[q] = v
    if not rows:
        return pd.DataFrame(columns=list(columns))
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=["rl_stage", "step"])
    return df[[c for c in columns if c in df.columns]].sort_index()


def sweep_summary(results, policy: str = "final", domain: str = "all", metrics: Sequence[str] | None = None):
    """Tidy results of many runs -> per experiment: mean, std (ddof 1), n_runs and seeds' values.

    ``policy="final"`` takes each run's last policy (runs may stop at different stages).
    """
    import pandas as pd

    df = results[results.domain == domain]
    if df.empty:
        return pd.DataFrame(columns=["experiment", "metric", "mean", "std", "n_runs", "values"])
    if policy == "final":
        last = df.groupby("run_id", sort=False)["policy"].agg(lambda s: list(dict.fromkeys(s))[-1])
        df = df[df.policy == df.run_id.map(last)]
    else:
        df = df[df.policy == policy]
    df = df[df.benchmark == df.groupby("run_id")["benchmark"].transform("first")]
    if metrics is not None:
        df = df[df.metric.isin(list(metrics))]
    g = df.groupby(["experiment", "metric"], sort=False)["value"]
    out = g.agg(mean="mean", std="std", n_runs="count").reset_index()
    out["values"] = g.agg(lambda s: [round(float(x), 6) for x in s]).values
    return out
