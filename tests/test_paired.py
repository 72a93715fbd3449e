"""Paired differences by seed (etagent.report.paired, etagent-compare --reference): golden t intervals,
a deterministic question bootstrap on a fabricated sweep, pairing by seed and the unpaired runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fake_run import make_question_run

from etagent.report import paired
from etagent.report.compare import compare, main

N_Q = 40
QUESTIONS = [(f"q{i:02d}", "hard" if i % 2 else "easy") for i in range(N_Q)]


def test_t_quantile_matches_closed_forms_and_the_table():
    # df = 1 (Cauchy): tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p))
    assert paired.t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-12)
    assert paired.t_quantile(0.975, 2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-12)
    assert paired.t_quantile(0.95, 2) == pytest.approx(0.9 / math.sqrt(2 * 0.95 * 0.05), rel=1e-12)
    # printed t tables (4 decimals)
    for df, t in ((3, 3.1824), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert paired.t_quantile(0.975, df) == pytest.approx(t, abs=5e-5)
    with pytest.raises(ValueError, match="df must be >= 1"):
        paired.t_quantile(0.975, 0)


def test_t_interval_hand_computed():
    # diffs 15, 20, 25 points: mean 20, sd 5, se 5/sqrt(3), t(0.975, 2) = 0.95/sqrt(0.04875)
    res = paired.t_interval([0.15, 0.20, 0.25])
    half = 0.95 / math.sqrt(0.04875) * 0.05 / math.sqrt(3)
    assert res["n"] == 3 and res["mean"] == pytest.approx(0.20) and res["sd"] == pytest.approx(0.05)
    assert (res["t_low"], res["t_high"]) == (pytest.approx(0.20 - half), pytest.approx(0.20 + half))
    assert res["t_low"] == pytest.approx(0.0757931144, abs=1e-9)
    # two pairs, df 1: mean 0.5, sd sqrt(0.5), half = tan(0.475 pi) * sqrt(0.5) / sqrt(2) = tan(0.475 pi) / 2
    two = paired.t_interval([0.0, 1.0])
    assert two["t_high"] - two["mean"] == pytest.approx(math.tan(0.475 * math.pi) / 2)
    one = paired.t_interval([0.3])
    assert one["mean"] == 0.3 and one["t_low"] is None and one["sd"] is None


def test_resample_counts_match_explicit_draws():
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    w = paired.resample_counts(5, 100, rng_a)
    idx = rng_b.integers(0, 5, size=(100, 5))
    assert w.shape == (100, 5) and (w.sum(axis=1) == 5).all()
    for b in range(100):
        assert list(w[b]) == [float((idx[b] == i).sum()) for i in range(5)]


def test_bootstrap_equals_a_naive_loop_and_is_deterministic():
    rng = np.random.default_rng(1)
    per_seed = [(s, rng.random(12).round(), rng.random(12).round()) for s in (0, 1, 2)]
    per_seed[1][1][3] = np.nan  # an undefined value is skipped, not counted as 0
    got = paired.bootstrap_interval(per_seed, n_boot=300, boot_seed=5)
    assert got == paired.bootstrap_interval(per_seed, n_boot=300, boot_seed=5)
    assert got != paired.bootstrap_interval(per_seed, n_boot=300, boot_seed=6)
    cache: dict = {}  # kept resamples (one draw per seed, reused by every metric) change nothing
    assert paired.bootstrap_interval(per_seed, n_boot=300, boot_seed=5, counts=cache) == got
    assert len(cache) == 3 and paired.bootstrap_interval(per_seed, n_boot=300, boot_seed=5, counts=cache) == got
    means = np.zeros(300)
    for s, a, b in per_seed:  # the same draws, one resample at a time
        idx = paired._rng(5, s, None).integers(0, 12, size=(300, 12))
        means += np.array([np.nanmean(a[i]) - np.nanmean(b[i]) for i in idx]) / 3
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert (got["boot_low"], got["boot_high"], got["boot_n"]) == (pytest.approx(lo), pytest.approx(hi), 300)


def _outcomes(seed: int, extra_hard: int) -> list[tuple[bool, int]]:
    """Base: easy questions right, hard ones right when (i + seed) % 4 == 1; `extra_hard` more hard ones right."""
    out, added = [], 0
    for i, (_, qtype) in enumerate(QUESTIONS):
        right = qtype == "easy" or (i + seed) % 4 == 1
        if not right and added < extra_hard:
            right, added = True, added + 1
        out.append((right, 1 if qtype == "easy" else 2))
    return out


def _swapped(seed: int) -> list[tuple[bool, int]]:
    """As many right answers as the base, on other hard questions (a zero effect, not zero noise)."""
    base = _outcomes(seed, 0)
    hard = [i for i, (_, t) in enumerate(QUESTIONS) if t == "hard"]
    right = {i for i in hard if base[i][0]}
    moved = [i for i in hard if i not in right][: len(right)]
    return [((i in moved) if i in hard else r, c) for i, (r, c) in enumerate(base)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """plain (reference) seeds 0-3; full = plain + 6/8/10/8 hard questions right (seed 4 unpaired);
    same = plain's count of right answers on other questions; dup has seed 1 twice."""
    root = tmp_path_factory.mktemp("paired")
    for s in range(4):
        make_question_run(root / "plain" / f"seed_{s}", seed=s, overrides=["experiment=plain"], questions=QUESTIONS,
                          outcomes=_outcomes(s, 0))
        make_question_run(root / "same" / f"seed_{s}", seed=s, overrides=["experiment=same"], questions=QUESTIONS,
                          outcomes=_swapped(s))
    for s, extra in zip(range(5), (6, 8, 10, 8, 8)):
        make_question_run(root / "full" / f"seed_{s}", seed=s, overrides=["experiment=full"], questions=QUESTIONS,
                          outcomes=_outcomes(s, extra))
    for job, s in (("a", 0), ("b", 1), ("c", 1)):
        make_question_run(root / "dup" / job, seed=s, overrides=["experiment=dup"], questions=QUESTIONS,
                          outcomes=_outcomes(s, 2))
    return root


def _comparison(res, a, b):
    return next(c for c in res["paired"]["comparisons"] if c["a"] == f"experiment={a}" and c["b"] == f"experiment={b}")


def test_known_effect_recovered_with_both_intervals(sweep: Path, tmp_path: Path):
    res = compare([sweep], tmp_path / "out", start_policy=None, target="full", reference="plain", n_boot=2000)
    c = _comparison(res, "full", "plain")
    assert c["seeds"] == [0, 1, 2, 3] and c["n_pairs"] == 4
    m = c["metrics"]["correctness"]
    assert m["diffs"] == pytest.approx([6 / N_Q, 8 / N_Q, 10 / N_Q, 8 / N_Q])   # paired by seed
    assert m["mean"] == pytest.approx(0.2)
    sd = np.std([0.15, 0.2, 0.25, 0.2], ddof=1)
    half = paired.t_quantile(0.975, 3) * sd / 2
    assert (m["t_low"], m["t_high"]) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert 0 < m["boot_low"] < 0.2 < m["boot_high"] and m["boot_n"] == 2000
    # the effect sits on the hard questions only
    by_type = c["by_type"]
    assert by_type["easy"]["correctness"]["mean"] == pytest.approx(0.0)
    assert by_type["easy"]["correctness"]["boot_low"] == by_type["easy"]["correctness"]["boot_high"] == 0.0
    assert by_type["hard"]["correctness"]["mean"] == pytest.approx(0.4)
    assert by_type["hard"]["correctness"]["questions"] == [20, 20, 20, 20]
    # calls are the same on every question: efficiency moves with correctness / calls
    assert c["metrics"]["mean_calls"]["mean"] == pytest.approx(0.0)
    assert c["metrics"]["efficiency"]["mean"] == pytest.approx(0.1)
    # the same numbers from a second run (fixed RNG)
    again = compare([sweep], tmp_path / "out2", start_policy=None, target="full", reference="plain", n_boot=2000)
    assert _comparison(again, "full", "plain")["metrics"] == c["metrics"]


def test_zero_effect_interval_covers_zero(sweep: Path, tmp_path: Path):
    res = compare([sweep], tmp_path / "out", start_policy=None, target="full", reference="plain", n_boot=2000)
    m = _comparison(res, "same", "plain")["metrics"]["correctness"]
    assert m["diffs"] == pytest.approx([0.0] * 4)
    assert m["t_low"] == m["t_high"] == pytest.approx(0.0)       # no spread over seeds
    assert m["boot_low"] < 0 < m["boot_high"]                     # but different questions: the bootstrap sees it
    assert m["boot_high"] - m["boot_low"] > 0.05


def test_unpaired_and_duplicate_seeds_are_listed_and_left_out(sweep: Path, tmp_path: Path):
    res = compare([sweep], tmp_path / "out", start_policy=None, target="full", reference="plain", n_boot=200)
    unpaired = {(u["job"], u["reason"]) for u in res["paired"]["unpaired"]}
    assert ("full/seed_4", "seed 4 missing in experiment=plain") in unpaired
    assert ("dup/b", "seed 1 appears 2 times in experiment=dup") in unpaired
    assert ("dup/c", "seed 1 appears 2 times in experiment=dup") in unpaired
    dup = _comparison(res, "dup", "plain")
    assert dup["seeds"] == [0] and dup["metrics"]["correctness"]["t_low"] is None  # one pair: no t interval
    # the full method against each other group (its "ablations"): target minus the group
    ab = _comparison(res, "full", "same")
    assert ab["kind"] == "vs_target" and ab["seeds"] == [0, 1, 2, 3]
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "### Unpaired runs (left out of every paired number)" in md
    assert "- `full/seed_4` (experiment=full, seed 4): seed 4 missing in experiment=plain" in md
    # the mean ± std table still holds every run of the group (seed 4 included)
    full = next(g for g in res["groups"] if g["group"] == "experiment=full")
    assert full["n_runs"] == 5


def test_goals_are_options_and_stated_in_the_markdown(sweep: Path, tmp_path: Path):
    res = compare([sweep], tmp_path / "a", start_policy=None, target="full", reference="plain", n_boot=500)
    goals = {g["metric"]: g for g in res["paired"]["goals"]}
    assert goals["efficiency"]["lower_bound_above"] == 0.0 and goals["correctness"]["lower_bound_above"] == -2.0
    assert goals["efficiency"]["met_t"] is True and goals["correctness"]["met_bootstrap"] is True
    md = (tmp_path / "a" / "compare.md").read_text()
    assert "### `experiment=full` vs `experiment=plain`" in md
    assert "- Efficiency: +10.0 points, t [" in md and "t lower bound > 0 points: **yes**" in md
    assert "bootstrap lower bound > -2 points: **yes**" in md
    assert "minus each other group (an ablation: positive = the removed part helps)" in md and "- `experiment=same` (4 pairs): efficiency" in md
    assert "- `experiment=dup` (1 pair): efficiency +5.0 t -, not estimable" in md
    assert "| hard | 20 |" in md
    # a stricter goal (efficiency lower bound above 20 points) is missed
    strict = compare([sweep], tmp_path / "b", start_policy=None, target="full", reference="plain", n_boot=500,
                     goal_eff_lb=20.0)
    assert {g["metric"]: g for g in strict["paired"]["goals"]}["efficiency"]["met_t"] is False
    js = json.loads((tmp_path / "a" / "compare.json").read_text())
    c = next(c for c in js["paired"]["comparisons"] if c["a"] == "experiment=full" and c["b"] == "experiment=plain")
    assert set(c["metrics"]["correctness"]) >= {"n", "seeds", "diffs", "mean", "sd", "t_low", "t_high",
                                                "boot_low", "boot_high", "boot_n"}
    assert js["paired"]["n_boot"] == 500 and "hard" in c["by_type"]


def test_cli_options_and_errors(sweep: Path, tmp_path: Path, capsys):
    assert main([str(sweep), "--out", str(tmp_path / "o"), "--reference", "plain", "--target", "full",
                 "--bootstrap", "100", "--bootstrap-seed", "3", "--goal-eff-lb", "1", "--goal-correct-lb", "-1",
                 "--start-policy", "none"]) == 0
    out = capsys.readouterr().out
    assert "## Paired differences (runs paired by seed)" in out and "100 resamples" in out and "RNG seed 3" in out
    assert "t lower bound > 1 points" in out and "lower bound > -1 points" in out
    assert main([str(sweep), "--out", str(tmp_path / "p"), "--reference", "nope"]) == 2
    assert "--reference 'nope' is not a group here" in capsys.readouterr().err


def test_fewer_pairs_than_the_design_needs_is_interim(sweep: Path, tmp_path: Path):
    """A pre-registered seed count: with fewer pairs the intervals show but no goal is decided."""
    full = compare([sweep], tmp_path / "a", start_policy=None, target="full", reference="plain", n_boot=200, min_pairs=4)
    assert full["paired"]["interim"] is False and full["paired"]["goals"][0]["met_t"] is True
    early = compare([sweep], tmp_path / "b", start_policy=None, target="full", reference="plain", n_boot=200, min_pairs=6)
    assert early["paired"]["interim"] is True and early["paired"]["min_pairs"] == 6
    for g in early["paired"]["goals"]:  # the interval is still computed, the decision is withheld
        assert g["t_low"] is not None and g["met_t"] is None and g["met_bootstrap"] is None
    md = (tmp_path / "b" / "compare.md").read_text()
    assert "**Interim**: 4 of the 6 seed pairs the design needs" in md and "t lower bound > 0 points: interim" in md
    with pytest.raises(ValueError, match="min_pairs must be >= 2"):
        compare([sweep], tmp_path / "c", start_policy=None, target="full", reference="plain", n_boot=10, min_pairs=1)


def test_an_exploratory_comparison_never_decides_a_goal(sweep: Path, tmp_path: Path, capsys):
    """A group added after a result was seen: intervals identical to the decided run's, no goal decided."""
    decided = compare([sweep], tmp_path / "a", start_policy=None, target="full", reference="plain", n_boot=200, min_pairs=4)
    assert decided["paired"]["exploratory"] is False and decided["paired"]["goals"][0]["met_t"] is True
    assert main([str(sweep), "--out", str(tmp_path / "x"), "--reference", "plain", "--target", "full", "--bootstrap", "200",
                 "--min-pairs", "4", "--start-policy", "none", "--exploratory"]) == 0
    capsys.readouterr()
    res = json.loads((tmp_path / "x" / "compare.json").read_text())["paired"]
    assert res["exploratory"] is True and res["interim"] is False
    for g, d in zip(res["goals"], decided["paired"]["goals"]):
        assert (g["t_low"], g["boot_low"]) == (d["t_low"], d["boot_low"])
        assert g["met_t"] is None and g["met_bootstrap"] is None
    md = (tmp_path / "x" / "compare.md").read_text()
    assert "**Exploratory**: a comparison outside the design's decision rule" in md
    assert "t lower bound > 0 points: exploratory, not decided" in md and "**yes**" not in md
