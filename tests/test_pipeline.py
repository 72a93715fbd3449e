"""End to end: the smoke pipeline is killed (kill -9) twice mid-run, resumed, and finishes.

One module-scoped run serves every assertion (2 CPU cores: one pipeline at a time):
finished stages are never redone, interrupted ones resume from their checkpoints, data
files hold no duplicates, and the report has every table and plot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED

pytestmark = pytest.mark.slow

BASE = ["preset=smoke", f"paths.shared_dir={SHARED}"]


def _start(run_dir: Path, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "ETAGENT_THREADS": "1", "WANDB_MODE": "offline"}
    log = open(run_dir.parent / f"{run_dir.name}.log", "a")
    return subprocess.Popen([sys.executable, "-m", "etagent", *BASE, *extra], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_when(proc: subprocess.Popen, cond, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pipeline exited ({proc.returncode}) before the kill point")
        if cond():
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: tool workers too
            proc.wait()
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("kill point never reached")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("smoke")
    run_dir = root / "run"
    run_dir.mkdir()
    first = [f"hydra.run.dir={run_dir}"]
    # 1) kill during seed SFT, right after its first checkpoint
    p = _start(run_dir, first)
    _kill_when(p, lambda: any((run_dir / "seed" / "checkpoints").glob("step-*")))
    assert not (run_dir / "seed" / ".done.json").exists()
    # 2) resume; kill once the RL stage has started (world, seed, flywheel, ase done)
    p = _start(run_dir, [f"resume={run_dir}", f"hydra.run.dir={root / 'resume1'}"])
    _kill_when(p, lambda: (run_dir / "ase" / ".done.json").exists() and (run_dir / "rl").exists())
    done_before = {s: (run_dir / s / ".done.json").read_text() for s in ("world", "seed", "flywheel", "ase")}
    # 3) resume to the end
    p = _start(run_dir, [f"resume={run_dir}", f"hydra.run.dir={root / 'resume2'}"])
    assert p.wait(timeout=600) == 0, (root / "run.log").read_text()[-4000:]
    for s, text in done_before.items():
        assert (run_dir / s / ".done.json").read_text() == text, f"finished stage {s} was redone"
    return run_dir


def test_every_stage_finished_once(smoke_run: Path):
    log = (smoke_run.parent / "run.log").read_text()
    for stage in ("world", "seed", "flywheel", "ase", "rl", "eval", "report"):
        assert (smoke_run / stage / ".done.json").exists(), stage
        assert log.count(f"[etagent] {stage:<9} done") == 1, f"{stage} completed more than once"
    assert log.count("skipped (done") >= 4


def test_seed_sft_resumed_from_its_checkpoint(smoke_run: Path):
    steps = [json.loads(line)["step"] for line in (smoke_run / "metrics" / "seed.jsonl").read_text().splitlines()
             if '"loss"' in line]
    summary = json.loads((smoke_run / "seed" / "final" / "sft_summary.json").read_text())
    assert summary["steps"] == max(steps) == summary["total_steps"]  # reached its target once
    # steps after the checkpoint were replayed once at most: the resumed run did not restart at 0
    assert steps.count(steps[0]) <= 2


def test_no_duplicated_data(smoke_run: Path):
    for f in [smoke_run / "flywheel" / "pool.jsonl", smoke_run / "flywheel" / "sft.jsonl",
              *smoke_run.glob("eval/*/trajectories.jsonl")]:
        ids = [json.loads(line)["id"] for line in f.read_text().splitlines() if line.strip()]
        assert len(ids) == len(set(ids)), f"duplicates in {f}"
    n_test = sum(1 for _ in open(smoke_run / "world" / "test.jsonl"))
    for f in smoke_run.glob("eval/*/trajectories.jsonl"):
        assert sum(1 for _ in open(f)) == min(n_test, 24)  # eval.max_examples in the smoke preset


def test_report_has_every_metric_and_plot(smoke_run: Path):
    from etagent.evaluation.metrics import TABLE_COLUMNS

    report = (smoke_run / "report.md").read_text()
    for _, header, _, _ in TABLE_COLUMNS:
        assert header in report, header
    for name in ("seed", "rl_stage_2"):
        assert (smoke_run / "eval" / name / "metrics.json").exists()
    pngs = sorted((smoke_run / "plots").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"radar", "tool_calls_by_stage", "behaviour_by_stage", "rl_curves"} <= names, names
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{p.name}" in report


def test_notebook_executes_on_the_smoke_run(smoke_run: Path, tmp_path: Path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # a kernelspec for this interpreter in a private JUPYTER_PATH (as in test_notebook.py)
    spec = tmp_path / "jupyter" / "kernels" / "etagent-smoke"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "etagent smoke", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("ETAGENT_RUN_DIRS", str(smoke_run))
    monkeypatch.setenv("ETAGENT_NOTEBOOK_OUT", str(tmp_path / "nb_out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, kernel_name="etagent-smoke", timeout=180, startup_timeout=120,
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert (tmp_path / "nb_out" / "radar.png").read_bytes()[:4] == b"\x89PNG"
