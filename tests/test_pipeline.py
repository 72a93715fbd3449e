"""End to end: the smoke pipeline is killed (kill -9) twice mid-run, resumed, and finishes.

One module-scoped run serves every assertion (2 CPU cores: one pipeline at a time):
finished stages are never redone, interrupted ones resume from their checkpoints, data
files hold no duplicates, and the report has every table and plot.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # three pipeline runs; slower while other jobs run

BASE = ["preset=smoke", f"paths.shared_dir={SHARED}"]


def _start(run_dir: Path, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "ETAGENT_THREADS": "1", "WANDB_MODE": "offline"}
    log = open(run_dir.parent / f"{run_dir.name}.log", "a")
    # umask 022: every file of the run must come out world-readable (mkstemp/safetensors make 0600)
    return subprocess.Popen([sys.executable, "-m", "etagent", *BASE, *extra], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, umask=0o022)


def _kill_when(proc: subprocess.Popen, cond, timeout: float = 900) -> None:
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
    assert p.wait(timeout=1200) == 0, (root / "run.log").read_text()[-4000:]
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
    # the drill-down sections ran on the real run: tidy table, dimension dots, per-question diff,
    # trajectory viewer, behaviour rates per RL step, Pareto fronts, sweep comparison
    for name in ("dimensions_0.png", "behaviour_per_step_0.png", "pareto_0.png", "sweep_dimensions.png"):
        assert (tmp_path / "nb_out" / name).read_bytes()[:4] == b"\x89PNG", name
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    html = "\n".join(o["data"]["text/html"] for o in outs if "text/html" in o.get("data", {}))
    md = "\n".join(o["data"]["text/markdown"] for o in outs if "text/markdown" in o.get("data", {}))
    assert re.search(r"\(seed -> rl_stage_2\): gained \d+, lost \d+, still right \d+, still wrong \d+", md), md
    assert html.count("class='etagent-trajectory'") == 2
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", html)  # tidy table: value [95% CI]


def test_run_log_has_stage_summaries_and_results_and_no_library_noise(smoke_run: Path):
    log = (smoke_run / "etagent.log").read_text()  # hydra.job.name = etagent; resumed invocations append
    assert not list(smoke_run.glob("__main__.log"))
    for stage in ("world", "seed", "flywheel", "ase", "rl", "eval", "report"):
        assert log.count(f"[etagent][INFO] - {stage:<9} done in") == 1, stage
    assert "| rl_stage_2 |" in log and "Correct %" in log  # the eval table itself
    assert "What changed" in log
    assert "[DEBUG]" not in log and "[bm25s]" not in log
    # the console copy (stdout+stderr into a file): progress bars redraw rarely off a TTY
    console = (smoke_run.parent / "run.log").read_text()
    assert console.count("\r") < 200, console.count("\r")


def test_run_files_follow_the_umask(smoke_run: Path):
    private = [p.relative_to(smoke_run).as_posix() for p in smoke_run.rglob("*")
               if not p.is_symlink() and (p.stat().st_mode & 0o044) != 0o044]
    assert not private, private[:10]


def test_tidy_results_match_the_runs_metrics(smoke_run: Path):
    import pandas as pd

    from etagent.report.results import RESULT_COLUMNS

    res = pd.read_parquet(smoke_run / "results.parquet")
    assert list(res.columns) == list(RESULT_COLUMNS) and len(pd.read_csv(smoke_run / "results.csv")) == len(res)
    assert set(res.run_id) == {f"smoke/{smoke_run.name}"} and set(res.seed) == {0}
    assert set(res.experiment) == {"preset=smoke"}  # overrides minus seed and paths
    for policy in ("seed", "ase", "rl_stage_1", "rl_stage_2"):
        m = json.loads((smoke_run / "eval" / policy / "metrics.json").read_text())
        sub = res[(res.policy == policy) & (res.domain == "all")]
        want = {k: v for k, v in m["overall"].items() if isinstance(v, (int, float)) and k not in ("n", "n_questions")}
        assert dict(zip(sub.metric, sub.value)) == pytest.approx(want), policy
        c = sub[sub.metric == "correctness"].iloc[0]
        assert c.n == 24 and c.ci_low <= c.value <= c.ci_high
    q = pd.read_parquet(smoke_run / "questions.parquet")
    assert len(q) == 4 * 24 and {"calls_python", "calls_search", "redundant", "model_tokens"} <= set(q.columns)
    seed_q = q[q.policy == "seed"]
    seed_m = json.loads((smoke_run / "eval" / "seed" / "metrics.json").read_text())["overall"]
    assert seed_q.score.mean() == pytest.approx(seed_m["correctness"])
    assert seed_q.calls.mean() == pytest.approx(seed_m["mean_calls"])
    line = json.loads((smoke_run / "metrics" / "rl_stage1.jsonl").read_text().splitlines()[0])
    assert (line["run_id"], line["experiment"], line["seed"]) == (f"smoke/{smoke_run.name}", "preset=smoke", 0)
    assert {"reward/f_tool_min", "reward/f_tool_max", "reward/f_len_group_std"} <= set(line)


def test_resume_with_a_changed_override_fails_naming_the_keys(smoke_run: Path, tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "etagent", *BASE, f"resume={smoke_run}", "seed=5", "rl.lr=0.5",
                        f"hydra.run.dir={tmp_path / 'fresh'}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
    assert r.returncode == 2, r.stderr[-2000:]
    # (other keys may be listed too when conf/ changed since the run started)
    assert re.search(r"differs from the saved config of .* in \d+ key\(s\):\n", r.stderr), r.stderr
    assert re.search(r"\n  rl\.lr: [^\n]+ -> 0\.5\n", r.stderr) and "\n  seed: 0 -> 5\n" in r.stderr
    assert "resume=force" in r.stderr
