"""report.md on a fake but complete run dir: tables, plots (valid PNGs), tolerance, determinism."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from fake_run import DOMAINS, make_run

from etagent.evaluation.metrics import TABLE_COLUMNS
from etagent.report.report import PLOT_FILES, config_rows, write_report
from etagent.report.rundata import load_run, rl_series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "| name | " + " | ".join(h for _, h, _, _ in TABLE_COLUMNS) + " |"


def _assert_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = mpimg.imread(path)  # decodes the whole image: a truncated file fails here
    assert img.shape[0] > 50 and img.shape[1] > 50


def _images(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "baseline", seed=7, levels=(0.2, 0.25, 0.3, 0.35))
    run = make_run(root / "run", compare=[str(root / "baseline"), str(root / "missing")])
    write_report(run)
    return run


def test_report_has_every_table_and_plot(full_run: Path):
    md = (full_run / "report.md").read_text()
    for name in PLOT_FILES.values():
        _assert_png(full_run / "plots" / name)
    imgs = _images(md)
    assert {f"plots/{n}" for n in PLOT_FILES.values()} <= set(imgs)
    assert "flywheel/rounds.png" in imgs
    for rel in imgs:  # relative links that resolve from the run dir
        assert not rel.startswith("/") and (full_run / rel).is_file(), rel
    # a stage table plus one per domain, each with every metric column and every policy row
    assert md.count(HEADER) >= 1 + len(DOMAINS) + 1  # + the baselines table
    for label in ("seed", "ASE", "RL-1", "RL-2"):
        assert re.search(rf"^\| {re.escape(label)} \| 30 \|", md, flags=re.M), label
    for d in DOMAINS:
        assert f"### Domain: {d}" in md
    assert "| baseline/RL-2 | 30 | 35.0 |" in md
    assert "baseline `" in md and "missing` not found" in md


def test_report_sections_and_numbers(full_run: Path):
    md = (full_run / "report.md").read_text()
    assert "correctness 30.0% -> 60.0%" in md and "calls/question 2.00 -> 1.20" in md
    assert "| reward | efficiency | mode=efficiency, sigma_tool=0.2, sigma_len=0.5" in md
    assert "| schedule | default | 2 RL stage(s), steps=[3, 3]" in md
    assert "<details>" in md and "```yaml" in md and "run_name: etagent" in md
    assert re.search(r"^\| world \| 1\.5 \|", md, flags=re.M) and "| **total** | **30.0** |" in md
    assert "## Seed data: flawed teacher" in md and "| qa | 150 |" in md
    assert "## Flywheel rounds" in md and "### Strategies" in md and "| modify_redundancy |" in md
    assert "## RL stages" in md and "| stage_2 | rl/stage2 | 24 | 12 |" in md


def test_report_is_deterministic(full_run: Path):
    before = {p.name: p.read_bytes() for p in [full_run / "report.md", *sorted((full_run / "plots").iterdir())]}
    write_report(full_run)
    after = {p.name: p.read_bytes() for p in [full_run / "report.md", *sorted((full_run / "plots").iterdir())]}
    assert before == after
    assert not [p for p in full_run.rglob("*.tmp")]  # atomic writes leave nothing behind


def test_rl_series_reads_trainer_keys_and_dedupes_resumed_steps(tmp_path: Path):
    run = make_run(tmp_path / "r")
    log = run / "metrics" / "rl_stage1.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    # a resumed stage re-logs step 3 with new values; the last line wins, dev/select lines are ignored
    log.write_text("".join(json.dumps(x) + "\n" for x in lines + [{**lines[-1], "reward/mean": 9.0}]))
    s = rl_series(load_run(run))
    assert set(s["reward_mean"]) == {"rl/stage1", "rl/stage2"}
    assert [x for x, _ in s["reward_mean"]["rl/stage1"]] == [1, 2, 3]
    assert s["reward_mean"]["rl/stage1"][-1] == (3, 9.0)
    assert {"sigma_tool", "sigma_len", "tool_calls_mean", "correctness_mean", "f_tool_mean"} <= set(s)


def test_report_tolerates_skipped_stages(tmp_path: Path):
    run = make_run(tmp_path / "r", policies=("seed",), levels=(0.3,), calls=(2.0,))
    for d in ("rl", "flywheel", "ase"):
        shutil.rmtree(run / d)
    for f in (run / "metrics").glob("rl_*"):
        f.unlink()
    md = write_report(run).read_text()
    assert "Only one policy evaluated (seed)" in md
    assert "No RL log lines" in md and "## Flywheel rounds" not in md
    assert not (run / "plots" / PLOT_FILES["rl_curves"]).exists()
    for key in ("radar", "tool_calls", "behaviour"):
        _assert_png(run / "plots" / PLOT_FILES[key])

    bare = tmp_path / "bare"  # only a config: an interrupted run before any stage finished
    bare.mkdir()
    (bare / "config.yaml").write_text("run_name: x\nseed: 3\nstages: [world, eval]\n")
    md = write_report(bare).read_text()
    assert "No evaluated policy" in md and "| world | - | not finished |" in md
    assert not (bare / "plots").exists() or not list((bare / "plots").iterdir())


def test_report_names_the_broken_file(tmp_path: Path):
    run = make_run(tmp_path / "r")
    (run / "eval" / "ase" / "metrics.json").write_text('{"overall": {"n": 3,}}')
    with pytest.raises(ValueError, match=r"eval/ase/metrics\.json:1"):
        write_report(run)


def test_config_rows_on_the_real_composed_config(tmp_path: Path, cfg_factory):
    from omegaconf import OmegaConf

    cfg = cfg_factory(["reward=correctness", "sampling=random"], run_dir=tmp_path)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    rows = {a: (b, c) for a, b, c in config_rows(load_run(tmp_path))}
    assert rows["model"][0] == "tiny"
    assert "mode=correctness" in rows["reward"][1]
    assert rows["sampling"][0] == "RandomSampler"  # no .hydra/hydra.yaml here: the target names the choice
    assert "RL stage(s)" in rows["schedule"][1] and rows["seed"][0] == "0"
    assert (tmp_path / "report.md") == write_report(tmp_path)
