"""Tidy results tables of a run (and of a sweep): what a researcher loads into pandas.

``results.parquet`` / ``results.csv`` (long format, one row per metric value)::

    run_id, experiment, seed, policy, split, domain, benchmark, metric, value, n, ci_low, ci_high

* ``domain`` is ``all`` for the whole split, else ``math`` / ``qa``; ``benchmark`` is the task
  name (``synthetic``, ``paper_math`` ...) and, for a domain holding several sources (e.g.
  aime24, amc23, math500), one extra block of rows per source computed from its trajectories.
* ``value`` is the metric exactly as ``eval/<policy>/metrics.json`` has it (definitions in
  :mod:`etagent.evaluation.metrics`); ``n`` the number of units it averages over
  (trajectories; calls for per-call shares; correct or wrong trajectories for the
  conditional shares).
* ``ci_low`` / ``ci_high``: 95% interval (:mod:`etagent.report.stats`): Wilson for shares of
  0/1 outcomes, mean ± 1.96 se for per-trajectory means (F1 correctness, efficiency, tokens);
  empty for ratios without a per-unit form (tool productivity) and when the trajectories are
  not there (then only shares with a known ``n`` get a Wilson interval).

``questions.parquet`` / ``questions.csv`` (one row per evaluated trajectory)::

    run_id, experiment, seed, policy, split, example_id, sample, domain, benchmark, question,
    gold, answer, score, correct, calls, calls_<tool>..., failed_calls, model_tokens,
    finish_reason, redundant, insufficient, aborted, erroneous, n_redundant, n_aborted

``correct`` is the binary success by the run's own grader (math: score 1; QA: F1 >= the run's
``grading.qa_threshold``), ``score`` the graded value; ``calls`` counts calls with the run's grammar. Both tables are written by the ``report`` stage and by
``python -m etagent.report.results RUN_DIR``; ``etagent-compare`` concatenates the runs'
tables of a sweep into the same schema.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from etagent.report.identity import run_identity
from etagent.report.stats import interval, is_binary, wilson_interval
from etagent.utils.io import atomic_write_bytes, atomic_write_text

RESULT_COLUMNS = ("run_id", "experiment", "seed", "policy", "split", "domain", "benchmark", "metric", "value", "n",
                  "ci_low", "ci_high")
QUESTION_KEYS = ("run_id", "experiment", "seed", "policy", "split", "example_id", "sample", "domain", "benchmark",
                 "question", "gold", "answer", "score", "correct", "calls")
QUESTION_TAIL = ("failed_calls", "model_tokens", "finish_reason", "redundant", "insufficient", "aborted", "erroneous",
                 "n_redundant", "n_aborted")
FLAGS = ("redundant", "insufficient", "aborted", "erroneous")
RESULTS_FILE, QUESTIONS_FILE = "results", "questions"


# --------------------------------------------------------------------------- per-trajectory values


def _examples(run_dir: Path, split: str) -> dict[str, Any]:
    from etagent.records import Example, read_jsonl

    f = run_dir / "world" / f"{split}.jsonl"
    return {e.id: e for e in read_jsonl(f, Example)} if f.exists() else {}


def _trajectories(pdir: Path) -> list[Any]:
    from etagent.records import Trajectory, read_jsonl

    f = pdir / "trajectories.jsonl"
    return list(read_jsonl(f, Trajectory)) if f.exists() else []


def run_scoring(run_dir: Path) -> dict[str, Any]:
    """The run's own grader (with its ``eval.qa_metric``) and grammar, rebuilt from its saved
    config: what per-question values are computed with (``unit_metrics(..., **run_scoring(d))``)."""
    from etagent.report.rundata import run_env

    env = run_env(Path(run_dir))
    return {"grader": env.grader.with_metric(env.cfg.eval.qa_metric), "grammar": env.grammar}


def unit_metrics(trajs: Sequence[Any], examples: Mapping[str, Any], *, grader: Any,
                 grammar: Any) -> list[dict[str, Any]] | None:
    """Each trajectory's own metrics (compute_metrics on one trajectory, with the run's grader and
    grammar): the per-unit values a metric averages, whatever its current definition; None when
    the examples are not at hand."""
    from etagent.evaluation.metrics import compute_metrics

    if not trajs or any(t.example_id not in examples for t in trajs):
        return None
    return [compute_metrics([t], examples, grader=grader, grammar=grammar) for t in trajs]


def question_rows(ident: Mapping[str, Any], policy: str, split: str, trajs: Sequence[Any],
                  units: Sequence[Mapping[str, Any]] | None, examples: Mapping[str, Any], task: str,
                  tools: Sequence[str], *, grader: Any, grammar: Any) -> list[dict[str, Any]]:
    from etagent.evaluation.metrics import paper_call_failed

    rows = []
    for i, t in enumerate(trajs):
        ex = examples.get(t.example_id)
        domain = ex.domain if ex is not None else None
        u = units[i] if units is not None else {}
        b = t.behaviour or {}
        by_tool = {k: 0 for k in tools}
        other = 0
        for c in t.tool_calls:  # executed calls, by tool
            if c.kind in by_tool:
                by_tool[c.kind] += 1
            else:
                other += 1
        row = {**ident, "policy": policy, "split": split, "example_id": t.example_id,
               "sample": int((t.meta or {}).get("sample", 0)), "domain": domain,
               "benchmark": (ex.source if ex is not None else task), "question": ex.question if ex else None,
               "gold": ex.answers[0] if ex is not None and ex.answers else None, "answer": t.answer,
               "score": float(t.score),
               "correct": bool(grader.is_success(domain, float(t.score))) if domain else float(t.score) >= 1.0,
               # the metrics' own call count (the official rule), so calls.mean() == mean_calls
               "calls": int(round(u["mean_calls"])) if "mean_calls" in u else t.n_calls(grammar),
               **{f"calls_{k}": v for k, v in by_tool.items()}, "calls_other": other,
               "failed_calls": sum(paper_call_failed(c) for c in t.tool_calls), "model_tokens": t.model_tokens,
               "finish_reason": t.finish_reason}
        for f in FLAGS:  # the metrics' own labels (None where a flag is undefined)
            v = u.get(f"{f}_rate", b.get(f)) if u else b.get(f)
            row[f] = None if v is None else bool(v)
        row["n_redundant"] = int(b.get("n_redundant", 0) or 0)
        row["n_aborted"] = int(b.get("n_aborted", 0) or 0)
        rows.append(row)
    return rows


# per-call shares: n = calls, Wilson on successes = share x calls
_PER_CALL = ("call_success_rate", "redundant_call_share")


def _is_share(key: str) -> bool:
    return key.endswith(("_rate", "_share", "_share_of_wrong")) or key in ("conciseness", "conciseness_judge",
                                                                          "correctness")


def metric_rows(base: Mapping[str, Any], metrics: Mapping[str, Any],
                units: Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """Long rows for one metrics dict (one policy x domain x benchmark); intervals from the
    per-trajectory ``units`` where their mean is the reported value (a per-trajectory mean)."""
    n_all = metrics.get("n")
    n_all = int(n_all) if isinstance(n_all, (int, float)) else None
    if units:
        total_calls = sum(u.get("mean_calls") or 0 for u in units)
    elif metrics.get("mean_calls") is not None and n_all:
        total_calls = float(metrics["mean_calls"]) * n_all
    else:
        total_calls = None
    total_calls = int(round(total_calls)) if total_calls is not None else None
    rows = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or key in ("n", "n_questions"):
            continue
        value = float(value)
        n, lo, hi = n_all, None, None
        vals = [float(u[key]) for u in units if u.get(key) is not None] if units else []
        if key in _PER_CALL or key == "tool_productivity":
            n = total_calls or None
            if key in _PER_CALL and n:  # a share of calls
                lo, hi = wilson_interval(round(value * n), n)
        elif vals and abs(sum(vals) / len(vals) - value) <= 1e-9 * max(1.0, abs(value)):
            n = len(vals)
            lo, hi = interval(vals, _is_share(key) and is_binary(vals))
        elif not units and key.endswith("_rate") and n:
            lo, hi = wilson_interval(round(value * n), n)  # a share of trajectories, trajectories absent
        rows.append({**base, "metric": key, "value": value, "n": n, "ci_low": lo, "ci_high": hi})
    return rows


# --------------------------------------------------------------------------- a run


def run_tables(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(results rows, question rows) of one run directory (empty when nothing was evaluated)."""
    from etagent.evaluation.metrics import compute_metrics
    from etagent.report.rundata import load_policies, load_yaml

    run_dir = Path(run_dir)
    config = (load_yaml(run_dir / "config.yaml") or {}) if (run_dir / "config.yaml").exists() else {}
    ident = run_identity(run_dir, config)
    split = str((config.get("eval") or {}).get("split") or "test")
    task = str((config.get("task") or {}).get("name") or "task")
    examples = _examples(run_dir, split)
    results: list[dict[str, Any]] = []
    questions: list[dict[str, Any]] = []
    score: dict[str, Any] = {}  # the run's grader (with eval.qa_metric) and grammar, once trajectories need them
    for policy, m in load_policies(run_dir).items():
        trajs = _trajectories(run_dir / "eval" / policy)
        if trajs and not score:
            score = run_scoring(run_dir)
        units = unit_metrics(trajs, examples, **score) if trajs else None
        tools = sorted({c.kind for t in trajs for c in t.tool_calls} | set(score["grammar"].tool_tags if score else ()))
        qrows = question_rows(ident, policy, split, trajs, units, examples, task, tools, **score) if trajs else []
        questions += qrows
        base = {**ident, "policy": policy, "split": split}
        results += metric_rows({**base, "domain": "all", "benchmark": task}, m["overall"], units)
        for dom, dm in (m.get("by_domain") or {}).items():
            idx = [i for i, r in enumerate(qrows) if r["domain"] == dom]
            results += metric_rows({**base, "domain": dom, "benchmark": task}, dm,
                                   [units[i] for i in idx] if units else None)
            sources = sorted({qrows[i]["benchmark"] for i in idx})
            if len(sources) > 1:  # e.g. paper_math: aime24 / amc23 / math500 apart
                for src in sources:
                    sidx = [i for i in idx if qrows[i]["benchmark"] == src]
                    sub = [trajs[i] for i in sidx]
                    sm = compute_metrics(sub, {t.example_id: examples[t.example_id] for t in sub}, **score)
                    results += metric_rows({**base, "domain": dom, "benchmark": src}, sm,
                                           [units[i] for i in sidx] if units else None)
    return results, questions


def results_frame(rows: Iterable[Mapping[str, Any]]):
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=list(RESULT_COLUMNS))
    for c in ("value", "ci_low", "ci_high"):
        df[c] = df[c].astype("float64")
    df["n"] = df["n"].astype("Int64")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    return df


def questions_frame(rows: Iterable[Mapping[str, Any]]):
    import pandas as pd

    rows = list(rows)
    calls = sorted({k for r in rows for k in r if k.startswith("calls_")}, key=lambda k: (k == "calls_other", k))
    df = pd.DataFrame(rows, columns=[*QUESTION_KEYS, *calls, *QUESTION_TAIL])
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    for f in FLAGS:
        df[f] = df[f].astype("boolean")
    return df


def write_frame(df, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.parquet`` + ``<stem>.csv`` written atomically (modes follow the umask)."""
    out_dir = Path(out_dir)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(out_dir / f"{stem}.parquet", buf.getvalue())
    atomic_write_text(out_dir / f"{stem}.csv", df.to_csv(index=False))
    return out_dir / f"{stem}.parquet", out_dir / f"{stem}.csv"


def write_run_results(run_dir: str | Path) -> dict[str, Path]:
    """Write results.{parquet,csv} and questions.{parquet,csv} into the run dir."""
    run_dir = Path(run_dir)
    results, questions = run_tables(run_dir)
    out = {}
    out["results"], _ = write_frame(results_frame(results), run_dir, RESULTS_FILE)
    out["questions"], _ = write_frame(questions_frame(questions), run_dir, QUESTIONS_FILE)
    return out


def load_results(run_dir: str | Path, questions: bool = False):
    """The run's tidy table (built on the fly for a run that predates it)."""
    import pandas as pd

    run_dir = Path(run_dir)
    f = run_dir / f"{QUESTIONS_FILE if questions else RESULTS_FILE}.parquet"
    if f.exists():
        return pd.read_parquet(f)
    res, qs = run_tables(run_dir)
    return questions_frame(qs) if questions else results_frame(res)


def main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m etagent.report.results RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    for d in args:
        for p in write_run_results(d).values():
            print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
