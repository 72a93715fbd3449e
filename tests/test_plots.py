"""Report plots: legible radar (merged twin axes, per-axis scale), dots with intervals, RL panels
(KL, entropy, clip, behaviour, shaping-factor spread), Pareto fronts from the saved RL samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_run import fake_metrics, make_run

from etagent.evaluation.radar import DIMENSIONS
from etagent.report import plots
from etagent.report.rundata import load_run, pareto_points, rl_series


def _png(p: Path) -> None:
    import matplotlib.image as mpimg

    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mpimg.imread(p).shape[0] > 100


def test_radar_merges_an_axis_equal_to_another_for_every_run(tmp_path):
    a, b = fake_metrics(0.3, 1.0), fake_metrics(0.5, 1.0)
    for m in (a, b):
        m["exec_score"] = m["correctness"]  # no failed call: execution == correctness
        m["efficiency"] = m["correctness"]  # at most one call each: efficiency == correctness
    axes = plots.radar_axes({"a": a, "b": b}, DIMENSIONS)
    assert [k for k, _, _ in axes] == ["correctness", "conciseness", "length_score"]
    assert axes[0][2] == ["Efficiency", "Successful execution"]
    b["exec_score"] = 0.1  # one run differs: the axis is kept
    assert "exec_score" in [k for k, _, _ in plots.radar_axes({"a": a, "b": b}, DIMENSIONS)]
    # all axes equal: a radar keeps them all rather than draw a line
    assert len(plots.radar_axes({"a": a, "b": dict(a)}, DIMENSIONS[:2] + DIMENSIONS[3:4])) == 3
    _png(plots.radar({"a": a, "b": b}, tmp_path / "r.png", spread={"a": {"correctness": 0.05}}))


def test_dimension_dots_with_intervals_and_points(tmp_path):
    rows = [{"label": "seed", "metric": "correctness", "value": 0.3, "lo": 0.2, "hi": 0.4},
            {"label": "RL", "metric": "correctness", "value": 0.5, "lo": 0.4, "hi": 0.6, "points": [0.45, 0.55]},
            {"label": "RL", "metric": "redundant_rate", "value": 0.1, "lo": None, "hi": None}]
    _png(plots.dimension_dots(rows, tmp_path / "d.png"))
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.dimension_dots([{"label": "x", "metric": "unknown", "value": 1.0}], tmp_path / "e.png")


def test_rl_panels_show_training_diagnostics_and_the_factor_spread(tmp_path):
    rd = load_run(make_run(tmp_path / "run", flywheel=False))
    series = rl_series(rd)
    titles = [t for t, _, _ in plots.rl_panels(series)]
    for t in ("reward", "tool calls", "length", "KL to reference", "entropy", "clip fraction", "behaviour rates",
              "shaping factor spread"):
        assert t in titles, t
    plotted = {q for t, _, lines in plots.rl_panels(series) if t != "shaping factor spread" for q, _, _ in lines}
    assert "f_tool_mean" not in plotted and "f_len_mean" not in plotted  # ~1 by construction: not informative
    assert all(y for _, y, _ in plots.rl_panels(series))  # every panel has a y-axis label
    assert series["f_tool_min"]["rl/stage1"][0] == (1, pytest.approx(0.82))
    _png(plots.rl_curves(series, tmp_path / "rl.png"))


def test_pareto_points_recompute_the_samplers_objectives(tmp_path):
    from etagent.rl.pareto import front_ranks

    run = make_run(tmp_path / "run", flywheel=False)
    pts = pareto_points(load_run(run))
    assert list(pts) == ["stage_1", "stage_2"]
    s1 = pts["stage_1"]
    assert s1["ids"] == [f"q{i}" for i in range(8)]
    assert s1["selected"] == [i % 2 == 1 for i in range(8)]
    # q2, stage 1: calls (2*j + 1) % 3 for j = 0..3 -> 1, 0, 2, 1; correct (2 + j) % 4 == 0 -> 0, 0, 1, 0
    q2 = s1["ids"].index("q2")
    assert s1["var_calls"][q2] == pytest.approx(np.var([1, 0, 2, 1]))
    assert s1["var_correct"][q2] == pytest.approx(np.var([0, 0, 1, 0]))
    assert s1["front"] == front_ranks(np.array(s1["var_calls"]), np.array(s1["var_correct"])).tolist()
    assert min(s1["front"]) == 0
    _png(plots.pareto_fronts(pts, tmp_path / "p.png"))


def test_pareto_points_count_executed_calls_only(tmp_path):
    """As the sampler (and the released pareto/data_process.py): budget-refused and invalid calls did not run."""
    import json

    run = make_run(tmp_path / "run", flywheel=False)
    calls = [{"kind": "python", "query": "1", "result": "1", "status": "ok"},
             {"kind": "python", "query": "2", "result": "", "status": "budget"},
             {"kind": "python", "query": "", "result": "Error", "status": "invalid"},
             {"kind": "python", "query": "3", "result": "Error", "status": "error"}]
    rows = [{"id": f"s/q0#{j}", "example_id": "q0", "group_id": "s/q0", "tool_calls": calls[: j + 1], "score": 1.0}
            for j in range(4)]
    (run / "rl" / "stage_1" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pts = pareto_points(load_run(run))["stage_1"]
    assert pts["var_calls"] == [pytest.approx(np.var([1, 1, 1, 2]))]  # executed: ok, ok, ok, ok + error
