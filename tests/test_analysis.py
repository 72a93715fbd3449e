"""Notebook helpers: per-question diff, trajectory HTML, RL step frame, sweep summary."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fake_run import make_run, make_sweep

from etagent.report.analysis import question_diff, rl_step_frame, sweep_summary
from etagent.report.results import load_results
from etagent.report.rundata import load_run, rl_series
from etagent.report.trajview import segments, trajectory_html


def test_question_diff_finds_the_flipped_questions(tmp_path: Path):
    run = make_run(tmp_path / "r", trajectories=True, flywheel=False)
    q = load_results(run, questions=True)
    d = question_diff(q)  # seed (k=0): t0, t4 right; rl_stage_2 (k=3): t1, t5 right
    by = dict(zip(d.example_id, d.change))
    assert by == {"t0": "lost", "t4": "lost", "t1": "gained", "t5": "gained", "t2": "still wrong", "t3": "still wrong"}
    assert list(d.change[:4]) == ["gained", "gained", "lost", "lost"]  # flips first
    row = d[d.example_id == "t1"].iloc[0]
    assert row["answer_seed"] == "7" and row["answer_rl_stage_2"] == "2"
    assert row["flags_seed"] == "redundant, erroneous" and row["flags_rl_stage_2"] == "-"
    assert row["calls_seed"] == 2 and row["calls_rl_stage_2"] == 1
    d2 = question_diff(q, before="ase", after="rl_stage_1")
    assert set(d2.change) <= {"gained", "lost", "still right", "still wrong"}
    with pytest.raises(ValueError, match="not in"):
        question_diff(q, before="nope")
    with pytest.raises(ValueError, match="one run"):
        question_diff(pd.concat([q, q.assign(run_id="other")]))


def test_trajectory_html_highlights_calls_results_and_escapes():
    text = "<think>plan</think>\n<python>print(1<2)</python>\n<result>True</result>\n<answer>\\boxed{x}</answer> tail"
    assert segments(text) == [("think", "plan"), (None, "\n"), ("python", "print(1<2)"), (None, "\n"),
                              ("result", "True"), (None, "\n"), ("answer", "\\boxed{x}"), (None, " tail")]
    assert segments("<search>q") == [("search", "q")]  # unclosed: runs to the end
    h = trajectory_html({"response_text": text, "tool_calls": [{"kind": "python", "status": "ok"}], "correct": 1.0,
                         "answer": "x", "behaviour": {"redundant": True}}, question="Q<1>", gold="x")
    assert "print(1&lt;2)" in h and "Q&lt;1&gt;" in h and "<python>" not in h
    assert "#1a73e8" in h and "#9aa0a6" in h and "#188038" in h and "untagged" in h
    assert "behaviour:</b> redundant" in h and "python:ok" in h


def test_rl_step_frame_lays_stages_and_behaviour_rates_per_step(tmp_path: Path):
    run = make_run(tmp_path / "r", flywheel=False)
    f = rl_step_frame(rl_series(load_run(run)))
    assert list(f.index) == [("rl/stage1", s) for s in (1, 2, 3)] + [("rl/stage2", s) for s in (1, 2, 3)]
    assert f.loc[("rl/stage2", 1), "redundant_rate"] == pytest.approx(0.3 - 0.02 * 4)
    assert {"kl", "entropy", "clip_frac", "insufficient_rate", "f_tool_group_std"} <= set(f.columns)


def test_sweep_summary_mean_std_and_seed_values(tmp_path: Path):
    sweep = make_sweep(tmp_path, {"full": (0.5, 0.7), "grpo_correctness": (0.2, 0.4)})
    res = pd.concat([load_results(p) for p in sorted(sweep.iterdir()) if p.is_dir()], ignore_index=True)
    s = sweep_summary(res, metrics=["correctness"]).set_index("experiment")
    assert s.loc["experiment=full", "mean"] == pytest.approx(0.6) and s.loc["experiment=full", "n_runs"] == 2
    assert s.loc["experiment=full", "std"] == pytest.approx(0.1414213562)
    assert sorted(s.loc["experiment=grpo_correctness", "values"]) == pytest.approx([0.2, 0.4])
    seed_only = sweep_summary(res, policy="seed", metrics=["correctness"])
    assert list(seed_only["mean"]) == pytest.approx([0.3, 0.3])
