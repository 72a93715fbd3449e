"""Sweep comparison: grouping by overrides minus the seed, mean ± sample std, md/csv/json/radar, CLI."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from fake_run import make_run, make_sweep

from etagent.report.compare import compare, group_of, main, split_override_dirname

REPO = Path(__file__).resolve().parents[1]
GROUPS = {"full": (0.5, 0.7), "grpo_correctness": (0.2, 0.4)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("multirun"), GROUPS)


def test_two_groups_two_seeds_mean_and_std(sweep: Path, tmp_path: Path):
    res = compare([sweep], tmp_path / "out")
    groups = {g["group"]: g for g in res["groups"] if "reference" not in g}
    assert set(groups) == {"experiment=full", "experiment=grpo_correctness"}
    for name, finals in GROUPS.items():
        g = groups[f"experiment={name}"]
        assert g["n_runs"] == 2 and g["seeds"] == [0, 1] and g["policies"] == ["rl_stage_2"]
        assert g["mean"]["correctness"] == pytest.approx(statistics.fmean(finals))
        assert g["std"]["correctness"] == pytest.approx(statistics.stdev(finals))  # sample std, ddof 1
        assert g["std"]["correctness"] == pytest.approx(0.1414213562)
        assert g["mean"]["mean_calls"] == pytest.approx(1.2) and g["std"]["mean_calls"] == pytest.approx(0.0)
        assert g["n"]["correctness"] == 2

    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| experiment=full | 2 | 0,1 | RL-2 | 60.0 ± 14.1 |" in md
    assert "| experiment=grpo_correctness | 2 | 0,1 | RL-2 | 30.0 ± 14.1 |" in md
    assert "| experiment=full,seed=1 (rl_stage_2) | 30 | 70.0 |" in md

    rows = {r["group"]: r for r in csv.DictReader((tmp_path / "out" / "compare.csv").open())}
    assert float(rows["experiment=full"]["correctness_mean"]) == pytest.approx(0.6)
    assert float(rows["experiment=full"]["correctness_std"]) == pytest.approx(0.1414213562)
    assert rows["experiment=grpo_correctness"]["correctness_n"] == "2"

    js = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert len(js["runs"]) == 4 and {r["group"] for r in js["runs"]} == set(groups)
    assert (tmp_path / "out" / "radar.png").read_bytes()[:4] == b"\x89PNG"


def test_groups_from_dirname_without_hydra_files_and_other_policy(tmp_path: Path):
    root = tmp_path / "sweep"
    for i, c in enumerate((0.1, 0.3, 0.5)):
        run = make_run(root / f"reward=correctness,sampling=random,seed={i}", seed=i, levels=(c, 0.4, 0.5, 0.6), flywheel=False)
        shutil.rmtree(run / ".hydra")
    make_run(root / "sampling=all,seed=0", seed=0, overrides=["sampling=all", "seed=0"], flywheel=False)
    (root / "broken,seed=9").mkdir()
    (root / "broken,seed=9" / "config.yaml").write_text("seed: 9\n")  # a run killed before eval
    res = compare([root], policy="seed")
    g = {x["group"]: x for x in res["groups"]}
    assert set(g) == {"reward=correctness,sampling=random", "sampling=all"}
    assert g["reward=correctness,sampling=random"]["mean"]["correctness"] == pytest.approx(0.3)
    assert g["reward=correctness,sampling=random"]["std"]["correctness"] == pytest.approx(0.2)
    assert g["sampling=all"]["std"]["correctness"] is None  # one run: spread undefined
    assert res["out_dir"] == str(root / "compare")
    md = (root / "compare" / "compare.md").read_text()
    assert "30.0 ± 20.0" in md and "± -" in md and "`broken,seed=9`" in md


def test_override_dirname_parsing():
    assert split_override_dirname("a=1,stages=[world,seed],seed=2") == ["a=1", "stages=[world,seed]", "seed=2"]
    assert group_of(["seed=3", "+b=2", "a=1", "resume=true", "hydra.run.dir=x"]) == "+b=2,a=1"
    assert group_of(["seed=1"]) == "default"


def test_main_cli_and_console_entry(sweep: Path, tmp_path: Path, capsys):
    assert main([str(sweep), "--out", str(tmp_path / "o1")]) == 0
    assert "| experiment=full | 2 |" in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2
    r = subprocess.run([sys.executable, "-m", "etagent.report.compare", str(sweep), "--out", str(tmp_path / "o2")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o2" / "compare.csv").exists() and "4 runs, 2 groups (+ the seed agent row)" in r.stdout


def test_sweep_tidy_tables_share_the_run_schema(sweep: Path, tmp_path: Path):
    import pandas as pd

    from etagent.report.results import RESULT_COLUMNS, write_run_results

    one = next(p for p in sweep.iterdir() if p.name == "experiment=full,seed=1")
    write_run_results(one)  # one run has its table already; the others are built from their eval files
    compare([sweep], tmp_path / "out")
    res = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert list(res.columns) == list(RESULT_COLUMNS)
    assert list(pd.read_csv(tmp_path / "out" / "results.csv").columns) == list(RESULT_COLUMNS)
    assert set(res.experiment) == {"experiment=full", "experiment=grpo_correctness"} and set(res.seed) == {0, 1}
    final = res[(res.policy == "rl_stage_2") & (res.domain == "all") & (res.metric == "correctness")]
    assert sorted(final[final.experiment == "experiment=full"].value) == pytest.approx([0.5, 0.7])
    agg = pd.read_csv(tmp_path / "out" / "aggregate.csv")
    row = agg[(agg.experiment == "experiment=full") & (agg.policy == "rl_stage_2") & (agg.domain == "all")
              & (agg.metric == "correctness")].iloc[0]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(0.1414213562) and row.n_runs == 2
    assert row.seeds == "0 1"


def test_seed_agent_row_counts_a_shared_seed_once_and_verdict_is_generated(sweep: Path, tmp_path: Path):
    res = compare([sweep], tmp_path / "v", target="experiment=full")
    ref = res["groups"][0]
    # all four runs start from the same seed agent (level 0.3): one point, not four
    assert ref["group"] == "seed agent" and ref["reference"] == "seed" and ref["n_runs"] == 1
    assert ref["mean"]["correctness"] == pytest.approx(0.3) and ref["std"]["correctness"] is None
    v = res["verdict"]
    pair = v["pairs"]["experiment=grpo_correctness"]
    # 0.6 vs 0.3, stds 0.1414 each: gain 0.3 > band 0.283 -> win
    assert pair["correctness"]["result"] == "win"
    assert pair["correctness"]["band"] == pytest.approx(2 * 0.1414213562)
    # redundant is lower-is-better: 0.16 vs 0.28 -> a positive gain
    assert pair["redundant_rate"]["gain"] == pytest.approx(0.12) and pair["redundant_rate"]["result"] == "win"
    goals = {g["goal"]: g for g in v["goals"]}
    assert goals["correctness >= best baseline - 1 std"]["met"] is True
    assert goals["efficiency >= 1.25x best baseline"]["need"] == pytest.approx(1.25 * 0.25)
    assert goals["redundant rate <= 5%"]["met"] is False
    assert goals["insufficient rate <= seed agent's"]["need"] == pytest.approx(0.14)
    assert goals["insufficient rate <= seed agent's"]["met"] is True
    md = (tmp_path / "v" / "compare.md").read_text()
    assert "## Verdict" in md and "vs `experiment=grpo_correctness`:" in md and "Goals met: 3 of 4" in md
    assert "| seed agent | 1 |" in md
    assert res["groups"][1]["values"]["correctness"] == pytest.approx([0.5, 0.7])


def test_verdict_ties_inside_the_band_and_is_absent_without_target(sweep: Path, tmp_path: Path):
    from etagent.report.verdict import compare_pair

    a = {"group": "a", "mean": {"correctness": 0.50, "erroneous_rate": 0.10}, "std": {"correctness": 0.02, "erroneous_rate": None}}
    b = {"group": "b", "mean": {"correctness": 0.47, "erroneous_rate": 0.05}, "std": {"correctness": 0.02, "erroneous_rate": None}}
    p = compare_pair(a, b)
    assert p["correctness"]["result"] == "tie"            # 0.03 < 0.04
    assert p["erroneous_rate"]["result"] == "loss"        # lower is better, no std -> band 0
    res = compare([sweep], tmp_path / "n", start_policy=None, target=None)
    assert res["verdict"] is None and all("reference" not in g for g in res["groups"])
    assert compare([sweep], tmp_path / "m", target="experiment=nope")["verdict"] is None
