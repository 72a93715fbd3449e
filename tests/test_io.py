"""File modes follow the umask: atomic writes, temp dirs and trainer checkpoints are as readable as open() makes them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from etagent.utils.io import atomic_write_json, atomic_write_text, current_umask, make_temp_dir, umask_mode


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_current_umask_reads_the_process_umask(umask):
    assert current_umask() == umask
    assert umask_mode() == 0o666 & ~umask and umask_mode(directory=True) == 0o777 & ~umask


def test_atomic_writes_get_the_mode_plain_open_gives(tmp_path, umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "a" / "config.yaml", "seed: 0\n")
    atomic_write_json(tmp_path / "a" / "summary.json", {"x": 1})
    assert _mode(tmp_path / "a" / "config.yaml") == _mode(plain) == 0o666 & ~umask
    assert _mode(tmp_path / "a" / "summary.json") == 0o666 & ~umask
    # overwriting keeps following the umask (the temp file replaces the old inode)
    atomic_write_text(tmp_path / "a" / "config.yaml", "seed: 1\n")
    assert _mode(tmp_path / "a" / "config.yaml") == 0o666 & ~umask
    assert not list((tmp_path / "a").glob(".*.tmp")), "temp file left behind"


def test_temp_dirs_get_the_mode_mkdir_gives(tmp_path, umask):
    d = make_temp_dir(tmp_path, ".idx.")
    (tmp_path / "plain").mkdir()
    assert _mode(d) == _mode(tmp_path / "plain") == 0o777 & ~umask


def test_checkpoint_and_final_model_files_are_readable_under_umask_022(tmp_path):
    import torch

    from etagent.train.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        path = save_checkpoint(tmp_path / "ckpt", 5, model, opt, sched, {"epoch": 0}, adapter_only=False)
    finally:
        os.umask(old)
    files = [p for p in [path, *path.rglob("*")]]
    assert {p.name for p in files} >= {"model.safetensors", "trainer_state.pt", "state.json"}
    for p in files:
        want = 0o755 if p.is_dir() else 0o644
        assert _mode(p) == want, f"{p.name}: {oct(_mode(p))}"
