"""A real sweep through hydra-submitit-launcher (`hydra/launcher=local`) and `etagent-compare`.

The local launcher is the SLURM launcher's plugin with submitit's LocalExecutor: the same
job pickling, `.submitit` folder and sweep layout, jobs as local processes. Two seeds of the
smoke preset (world, seed agent, eval, report only: the fewest stages that give a final
policy with metrics) run as two submitit jobs; `etagent-compare` then aggregates the sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, SHARED

# world, seed agent, eval, report: the fewest stages that give a final policy with metrics
SHRINK = ["stages=[world,seed,eval,report]", "seed_sft.max_steps=10", "eval.max_examples=8"]


def test_local_launcher_config_matches_slurm():
    local = OmegaConf.to_container(OmegaConf.load(REPO / "conf/hydra/launcher/local.yaml"))
    slurm = OmegaConf.to_container(OmegaConf.load(REPO / "conf/hydra/launcher/slurm.yaml"))
    assert local["_target_"].rsplit(".", 1)[0] == slurm["_target_"].rsplit(".", 1)[0]  # one plugin module
    assert local["_target_"].endswith(".LocalLauncher") and local["submitit_folder"] == slurm["submitit_folder"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two smoke jobs at once: ~3 min on an idle 2-core machine, far more when shared
def test_two_seed_smoke_sweep_through_submitit_and_compare(tmp_path: Path):
    sweep = tmp_path / "multirun"
    env = dict(os.environ, ETAGENT_SHARED=str(SHARED), WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")
    cmd = ["nice", "-n", "19", sys.executable, "-m", "etagent", "-m", "preset=smoke", "seed=0,1",
           "hydra/launcher=local", f"hydra.sweep.dir={sweep}", *SHRINK]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr  # the plugin launched it
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name.split(",seed=")[1].split(",")[0] for j in jobs] == ["0", "1"]
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # one submitit job each
    for j in jobs:
        assert (j / "eval").is_dir() and OmegaConf.load(j / ".hydra/config.yaml").seed == jobs.index(j)

    out = tmp_path / "compare"
    res = subprocess.run([sys.executable, "-m", "etagent.report.compare", str(sweep), "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    js = json.loads((out / "compare.json").read_text())
    assert len(js["runs"]) == 2 and {r["seed"] for r in js["runs"]} == {0, 1}
    (group,) = [g for g in js["groups"] if "reference" not in g]  # seeds of one configuration aggregate into one group (+ the seed agent row)
    assert group["n_runs"] == 2 and group["seeds"] == [0, 1]
    assert group["mean"]["correctness"] is not None and (out / "compare.md").is_file()
