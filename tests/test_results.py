"""Tidy results tables: schema, values equal to the run's metrics.json, question rows, intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from fake_run import make_run, make_sweep

from etagent.evaluation.evaluate import write_eval
from etagent.evaluation.metrics import compute_metrics
from etagent.records import Example, ToolCall, Trajectory, write_jsonl
from etagent.report.results import RESULT_COLUMNS, load_results, write_run_results
from etagent.report.stats import change_outside, mean_interval, wilson_interval
from run_env import ENV, GRAMMAR


@pytest.mark.parametrize("k,n,low,high", [  # Newcombe (1998), Table I, method 3 (Wilson score)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0)])
def test_wilson_interval_known_cases(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)
    assert wilson_interval(0, 0) == (None, None)


def test_mean_interval_and_change_outside():
    lo, hi = mean_interval([0, 1, 2, 3, 4])  # mean 2, sd 1.5811, se 0.7071
    assert (lo, hi) == pytest.approx((2 - 1.959964 * 0.707107, 2 + 1.959964 * 0.707107), abs=1e-5)
    assert mean_interval([1.0]) == (None, None)
    assert change_outside(0.30, 0.2553, 0.3662) is False and change_outside(0.40, 0.2553, 0.3662) is True
    assert change_outside(0.4, None, None) is None


def _examples() -> list[Example]:
    out = []
    for i in range(12):
        dom = "math" if i % 2 == 0 else "qa"
        out.append(Example(id=f"q{i}", question=f"question {i}", answers=[str(i)], domain=dom,
                           source="bench-a" if i < 6 or dom == "qa" else "bench-b", split="test"))
    return out


def _traj(ex: Example, policy: str, k: int) -> Trajectory:
    """Deterministic but varied: calls, failures, scores (F1 on QA), behaviour flags."""
    i = int(ex.id[1:])
    calls = [ToolCall("python" if ex.domain == "math" else "search", f"c{j}", "error" if (i + j + k) % 4 == 0 else "r",
                      "ok") for j in range((i + k) % 3)]
    score = float((i + k) % 3 == 0) if ex.domain == "math" else [0.0, 0.5, 0.8, 1.0][(i + k) % 4]
    n_red = 1 if len(calls) == 2 else 0
    text = "".join(f"<{c.kind}>{c.query}</{c.kind}>\n<result>{c.result}</result>\n" for c in calls)
    text += f"<answer>\\boxed{{{i}}}</answer>"
    return Trajectory(id=f"{policy}:{ex.id}#0", example_id=ex.id, group_id=f"{policy}:{ex.id}", response_text=text,
                      response_ids=[1] * (10 + i), response_mask=[1] * (10 + i), tool_calls=calls, answer=str(i),
                      score=score, finish_reason="answer",
                      behaviour={"n_calls": len(calls), "n_redundant": n_red, "n_aborted": 0, "redundant": bool(n_red),
                                 "aborted": False, "n_budget": 0, "insufficient": len(calls) == 0 and score < 0.75,
                                 "erroneous": score < 0.75 and len(calls) > 0},
                      meta={"sample": 0})


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A run dir whose eval files come from the real metrics code on real trajectories."""
    run = make_run(tmp_path_factory.mktemp("r") / "run", policies=("seed", "rl_stage_1"), levels=(0.3, 0.5),
                   calls=(1.0, 0.5), overrides=["experiment=et_agent", "seed=0"], flywheel=False)
    exs = _examples()
    write_jsonl(run / "world" / "test.jsonl", exs)
    by_id = {e.id: e for e in exs}
    for k, policy in enumerate(("seed", "rl_stage_1")):
        trajs = [_traj(e, policy, k) for e in exs]
        metrics = {"overall": compute_metrics(trajs, by_id, **ENV), "by_domain": {}}
        for d in ("math", "qa"):
            metrics["by_domain"][d] = compute_metrics([t for t in trajs if by_id[t.example_id].domain == d], by_id, **ENV)
        write_eval(run / "eval" / policy, policy, trajs, metrics)
    write_run_results(run)
    return run


def test_results_schema_and_values_match_metrics_json(real_run: Path):
    df = pd.read_parquet(real_run / "results.parquet")
    assert list(df.columns) == list(RESULT_COLUMNS)
    csv = pd.read_csv(real_run / "results.csv")
    assert len(csv) == len(df) and list(csv.columns) == list(RESULT_COLUMNS)
    assert set(df.run_id) == {"etagent/run"} and set(df.experiment) == {"experiment=et_agent"}
    assert set(df.seed) == {0} and set(df.split) == {"test"}
    for policy in ("seed", "rl_stage_1"):
        m = json.loads((real_run / "eval" / policy / "metrics.json").read_text())
        for domain, metrics in [("all", m["overall"]), *m["by_domain"].items()]:
            sub = df[(df.policy == policy) & (df.domain == domain) & (df.benchmark == "synthetic")]
            got = dict(zip(sub.metric, sub.value))
            want = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in ("n", "n_questions")}
            assert got == pytest.approx(want), (policy, domain)
            for _, r in sub.iterrows():  # every interval holds its value
                if not pd.isna(r.ci_low):
                    assert r.ci_low - 1e-12 <= r.value <= r.ci_high + 1e-12, r.metric


def test_intervals_are_wilson_for_shares_and_normal_for_means(real_run: Path):
    df = load_results(real_run)
    row = df[(df.policy == "seed") & (df.domain == "all") & (df.metric == "redundant_rate")].iloc[0]
    k = round(row.value * row.n)
    assert row.n == 12 and (row.ci_low, row.ci_high) == pytest.approx(wilson_interval(k, 12))
    math_c = df[(df.policy == "seed") & (df.domain == "math") & (df.metric == "correctness")].iloc[0]
    assert (math_c.ci_low, math_c.ci_high) == pytest.approx(wilson_interval(round(math_c.value * 6), 6))
    qa_c = df[(df.policy == "seed") & (df.domain == "qa") & (df.metric == "correctness")].iloc[0]
    scores = [_traj(e, "seed", 0).score for e in _examples() if e.domain == "qa"]  # F1: not 0/1
    assert (qa_c.ci_low, qa_c.ci_high) == pytest.approx(mean_interval(scores))
    tp = df[(df.policy == "seed") & (df.domain == "all") & (df.metric == "tool_productivity")].iloc[0]
    assert pd.isna(tp.ci_low) and tp.n == sum(_traj(e, "seed", 0).n_calls(GRAMMAR) for e in _examples())


def test_per_benchmark_rows_when_a_domain_has_several_sources(real_run: Path):
    df = load_results(real_run)
    assert set(df[df.domain == "math"].benchmark) == {"synthetic", "bench-a", "bench-b"}
    assert set(df[df.domain == "qa"].benchmark) == {"synthetic"}  # one source: no extra block
    b = df[(df.policy == "seed") & (df.benchmark == "bench-b") & (df.metric == "correctness")].iloc[0]
    assert b.n == 3  # q6, q8, q10


def test_question_table(real_run: Path):
    q = pd.read_parquet(real_run / "questions.parquet")
    assert len(q) == 24 and set(q.policy) == {"seed", "rl_stage_1"}
    for col in ("example_id", "policy", "correct", "score", "calls_python", "calls_search", "model_tokens",
                "redundant", "insufficient", "aborted", "erroneous", "run_id", "experiment", "seed"):
        assert col in q.columns, col
    seed = q[q.policy == "seed"].set_index("example_id")
    assert seed.loc["q3", "domain"] == "qa" and seed.loc["q3", "calls_search"] == 0 and seed.loc["q3", "calls_python"] == 0
    assert seed.loc["q4", "calls_python"] == 1 and seed.loc["q4", "model_tokens"] == 14
    assert bool(seed.loc["q5", "redundant"]) and seed.loc["q5", "n_redundant"] == 1
    m = json.loads((real_run / "eval" / "seed" / "metrics.json").read_text())["overall"]
    assert seed["score"].mean() == pytest.approx(m["correctness"])
    assert seed["calls"].mean() == pytest.approx(m["mean_calls"])
    assert seed["redundant"].mean() == pytest.approx(m["redundant_rate"])
    # QA success is F1 >= 0.75: 0.8 counts, 0.5 does not
    assert bool(seed.loc["q1", "correct"]) == (seed.loc["q1", "score"] >= 0.75)


def test_fake_run_without_trajectories_gets_wilson_from_n(tmp_path: Path):
    run = make_run(tmp_path / "r", flywheel=False)
    write_run_results(run)
    df = pd.read_parquet(run / "results.parquet")
    r = df[(df.policy == "seed") & (df.domain == "all") & (df.metric == "redundant_rate")].iloc[0]
    assert r.n == 30 and (r.ci_low, r.ci_high) == pytest.approx(wilson_interval(round(r.value * 30), 30))
    eff = df[(df.policy == "seed") & (df.domain == "all") & (df.metric == "efficiency")].iloc[0]
    assert math.isnan(eff.ci_low)  # a mean without its per-trajectory values: no interval claimed
    assert len(pd.read_parquet(run / "questions.parquet")) == 0


def test_metrics_jsonl_lines_concatenate_with_results(tmp_path: Path):
    from etagent.tracking import Tracker

    run = make_run(tmp_path / "experiment=x,seed=3", seed=3, overrides=["experiment=x", "seed=3"], flywheel=False)
    Tracker(run, {"run_name": "etagent", "seed": 3}).log({"loss": 1.0}, step=1, stage="seed")
    line = json.loads((run / "metrics" / "seed.jsonl").read_text().splitlines()[-1])
    df = load_results(run)
    assert (line["run_id"], line["experiment"], line["seed"]) == (df.run_id[0], df.experiment[0], df.seed[0])


def test_what_changed_says_whether_a_change_is_outside_the_interval(real_run: Path, tmp_path: Path):
    from etagent.report.report import what_changed
    from etagent.report.rundata import load_run

    df = load_results(real_run)
    line = what_changed(load_run(real_run))
    for metric, label in (("correctness", "correctness"), ("redundant_rate", "redundant")):
        seed = df[(df.policy == "seed") & (df.domain == "all") & (df.metric == metric)].iloc[0]
        final = df[(df.policy == "rl_stage_1") & (df.domain == "all") & (df.metric == metric)].iloc[0]
        where = "outside" if not seed.ci_low <= final.value <= seed.ci_high else "within"
        ci = f"{seed.ci_low * 100:.1f}-{seed.ci_high * 100:.1f}%"
        assert f"{label} {seed.value * 100:.1f}% -> {final.value * 100:.1f}% ({where} CI {ci})" in line, line
    # a large shift on a known n is flagged: 12 of 30 redundant -> 0 (Wilson 25.6-58.6%)
    run = make_run(tmp_path / "r", flywheel=False, levels=(0.0, 0.2, 0.5, 1.0))
    line = what_changed(load_run(run))
    assert "redundant 40.0% -> 0.0% (outside CI 24.6-57.7%)" in line and "stand out from noise" in line
