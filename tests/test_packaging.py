"""The Hydra config ships with the package: the entry points compose it from any directory,
in this checkout (its conf/, live) and after a non-editable install (the wheel's etagent/conf)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import CONF, REPO
from etagent.config.location import conf_dir

BIN = Path(sys.executable).parent
ENTRY_POINTS = {"console script": [str(BIN / "etagent")], "python -m": [sys.executable, "-m", "etagent"]}


def run(cmd: list[str], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    # PYTHONPATH dropped: the package must resolve the way an installed one does, not via the repo
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HYDRA_FULL_ERROR": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} in {cwd} failed:\n{out.stdout}\n{out.stderr}"
    return out


def test_checkout_reads_its_own_conf():
    # edits to conf/ take effect at once in a checkout: no copy in between
    assert conf_dir() == CONF


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_point_composes_from_any_directory(entry, tmp_path):
    cmd = ENTRY_POINTS[entry]
    cfg = yaml.safe_load(run([*cmd, "--cfg", "job"], cwd=tmp_path).stdout)
    assert cfg["stages"] == yaml.safe_load((CONF / "config.yaml").read_text())["stages"]
    assert cfg["reward"]["mode"] == "efficiency"

    over = yaml.safe_load(run([*cmd, "--cfg", "job", "seed=7", "experiment=grpo_correctness", "rl.lr=0.25"], cwd=tmp_path).stdout)
    assert (over["seed"], over["run_name"], over["reward"]["mode"], over["rl"]["lr"]) == (7, "grpo_correctness", "correctness", 0.25)

    search = run([*cmd, "--info", "searchpath"], cwd=tmp_path).stdout
    assert f"file://{CONF}" in search.split()
    assert not any(tmp_path.iterdir()), "--cfg / --info must not write a run directory"


def test_wheel_carries_the_config_and_composes_it(tmp_path):
    """A non-editable install (wheel -> fresh venv) composes the same config as the checkout."""
    src = tmp_path / "src"  # the build inputs only: an in-tree build must not litter the checkout
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("etagent", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"), str(src)], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("etagent-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = {p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml")}
    assert {"config.yaml", "experiment/et_agent.yaml", "hydra/job_logging/etagent.yaml"} <= yamls
    assert {n.removeprefix("etagent/conf/") for n in names if n.startswith("etagent/conf/")} == yamls
    assert not any(n.startswith("conf/") for n in names), "conf/ must not become a top-level package"
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "etagent").rglob("*.py")}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    run([*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    # dependencies from this venv, added only after the install (pip must not see, let alone
    # touch, this venv's editable etagent); a path added by a .pth loads no .pth of its own,
    # so the editable finder stays out and `import etagent` is the wheel's
    (purelib,) = venv.glob("lib/python*/site-packages")
    (purelib / "_etagent_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    where = run([str(py), "-c", "import etagent.config.location as l; print(l.conf_dir())"], cwd=cwd).stdout.strip()
    assert Path(where) == purelib / "etagent" / "conf"
    installed = run([str(venv / "bin" / "etagent"), "--cfg", "job", "seed=3", "experiment=et_agent"], cwd=cwd).stdout
    checkout = run([*ENTRY_POINTS["console script"], "--cfg", "job", "seed=3", "experiment=et_agent"], cwd=cwd).stdout
    assert "stages:" in installed and installed == checkout
