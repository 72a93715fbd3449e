"""Shared fixtures. Tests compose the real Hydra config (no hand-built dicts) and shrink it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETAGENT_SHARED", REPO.parent / "shared"))
CONF = REPO / "conf"

# Tests against the real verl package need its venv (scripts/setup_verl.sh builds .venv-verl,
# scripts/test.sh runs them there); the main venv does not collect them.
collect_ignore_glob = [] if importlib.util.find_spec("verl") else ["test_verl_pkg_*.py"]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    # Two cores: one torch thread per test process keeps timings stable.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    yield


@pytest.fixture(autouse=True, scope="module")
def _fresh_hydra_per_module():
    # compose() keeps Hydra initialised within a module (speed); other modules initialise it
    # themselves, so leave none behind.
    yield
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.exists(), f"tests need ../shared beside the repo (or ETAGENT_SHARED); looked at {SHARED}"
    return SHARED


def compose(overrides: list[str] | None = None, run_dir: Path | None = None):
    """Compose conf/config.yaml exactly as `python -m etagent` would, with overrides."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    # Initialise Hydra once per process (re-initialising costs ~1 s per compose).
    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(CONF), version_base="1.3")
    ov = list(overrides or [])
    if run_dir is not None:
        ov.append(f"paths.run_dir={run_dir}")
    ov.append(f"paths.shared_dir={SHARED}")
    return hcompose(config_name="config", overrides=ov)


@pytest.fixture
def cfg_factory():
    return compose
