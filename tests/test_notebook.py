"""notebooks/analysis.ipynb executes headless (nbclient) against run directories and draws every plot.

The kernel is this interpreter, declared in a kernelspec written to a temporary
JUPYTER_PATH (searched first), so neither a user-level ``python3`` kernelspec pointing at
another interpreter nor a missing ``share/jupyter/kernels`` in the venv can break the test.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from fake_run import make_run
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"
KERNEL = "etagent-test-python"


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch) -> str:
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "etagent test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def _execute(nb, kernel: str, cwd: Path):
    client = NotebookClient(nb, kernel_name=kernel, timeout=120, startup_timeout=120,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if kind in o.get("data", {})]


def test_notebook_is_clean_and_parametrised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []) and "ETAGENT_RUN_DIRS" in code[0].source
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit it without outputs"


def test_notebook_executes_headless_on_two_runs(tmp_path: Path, kernel: str, monkeypatch):
    a = make_run(tmp_path / "runs" / "experiment=full,seed=0", seed=0, trajectories=True,
                 overrides=["experiment=full", "seed=0"], levels=(0.3, 0.4, 0.5, 0.6))
    b = make_run(tmp_path / "runs" / "experiment=full,seed=1", seed=1, flywheel=False,
                 overrides=["experiment=full", "seed=1"], levels=(0.3, 0.4, 0.5, 0.8))
    out = tmp_path / "nb_out"
    monkeypatch.setenv("ETAGENT_RUN_DIRS", os.pathsep.join([str(a), str(b)]))
    monkeypatch.setenv("ETAGENT_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = _execute(nbformat.read(NOTEBOOK, as_version=4), kernel, REPO / "notebooks")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    for name in ("radar.png", "tool_calls_by_stage.png", "behaviour_by_stage.png", "rl_curves_0.png",
                 "rl_curves_1.png", "dimensions_0.png", "pareto_0.png", "behaviour_per_step_0.png",
                 "sweep_dimensions.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert len(_outputs(nb, "image/png")) >= 13  # 2 dims, radar, calls, behaviour, 2 RL, 2 per step, 2 Pareto, flywheel, sweep
    html = "\n".join(o["data"]["text/html"] for o in _outputs(nb, "text/html"))
    assert "Correct %" in html and "RL-2" in html  # DataFrames rendered as tables
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", html)  # the tidy table: value [95% CI]
    text = "\n".join(o["data"].get("text/plain", "") for o in _outputs(nb, "text/plain"))
    # seeds pooled: experiment=full has 2 runs, final correctness 0.6 and 0.8 -> mean 0.7, std 0.141
    assert re.search(r"experiment=full\s+2\s+0\.7\d*\s+0\.141", text), text
    # per-question diff (run a has trajectories): seed -> RL-2 flips t0 (lost) and t1 (gained), ...
    md = "\n".join(o["data"]["text/markdown"] for o in _outputs(nb, "text/markdown"))
    assert re.search(r"\(seed -> rl_stage_2\): gained 2, lost 2, still right 0, still wrong 2", md), md
    assert "gained" in html and "redundant" in html  # the flipped rows with their flags
    # trajectory viewer: both policies' trajectories of the first flipped question, calls highlighted
    viewer = [h for h in html.split("<div class='etagent-trajectory'")[1:]]
    assert len(viewer) == 2 and "rl_stage_2 / t1" in html and "seed / t1" in html
    assert all("border-left:3px solid #f9ab00" in v or "border-left:3px solid #1a73e8" in v for v in viewer)
