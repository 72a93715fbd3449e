"""Each default lives in one place: the default config and its targets' own defaults agree.

Walks the composed default config (``conf/config.yaml``, no overrides); for every node with a
``_target_``, every literal value the YAML sets must equal the default the target declares
(dataclass field or constructor parameter). A drift means a script or test that builds the
component in code silently runs another configuration than ``python -m etagent`` does (issue 15
found ``max_rounds`` 3 vs 2, ``continuations`` 2 vs 1, ``mini_batches`` 1 vs 2).
Option files (``model=small``, ``reward=correctness`` ...) are deltas from these and are not checked.
A value interpolated from the ``grading`` section (``${grading.qa_threshold}``, the run's success
policy) is resolved and checked the same way: a target whose default differed from it would grade
otherwise when built in code (issue 24 found ``flywheel.min_correct`` 0.8 vs 0.75); such keys are
best required (no code default), which this check then leaves alone. Other interpolations point to
one place by construction and are skipped.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
_MISSING = object()


def _target(path: str) -> Any:
    mod, _, name = path.rpartition(".")
    return getattr(importlib.import_module(mod), name)


def code_defaults(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out
    return {k: p.default for k, p in inspect.signature(obj).parameters.items() if p.default is not inspect.Parameter.empty}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def drifts(node: Any, where: str = "") -> list[str]:
    """``key: yaml=.. code=..`` for every literal YAML value that differs from its target's default."""
    out: list[str] = []
    if not isinstance(node, DictConfig):
        return out
    if "_target_" in node:
        defaults = code_defaults(_target(node["_target_"]))
        for key in node:
            if str(key).startswith("_") or key not in defaults:
                continue
            raw = OmegaConf.to_container(node, resolve=False)[key]
            if isinstance(raw, (dict, list)):
                continue  # nested nodes are checked on their own
            if isinstance(raw, str) and "${" in raw:
                if not raw.startswith("${grading."):
                    continue
                raw = node[key]  # the run's grading value the key takes
            if not _same(raw, defaults[key]):
                out.append(f"{where}{key}: yaml={raw!r} code={defaults[key]!r}")
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            out += drifts(child, f"{where}{key}.")
    return out


@pytest.fixture(scope="module")
def default_cfg() -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config")


def test_default_config_and_code_defaults_agree(default_cfg: DictConfig):
    found = drifts(default_cfg)
    assert not found, "YAML and code defaults drifted:\n" + "\n".join(found)


def test_the_drift_check_finds_a_drift(default_cfg: DictConfig):
    cfg = default_cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.rl.mini_batches = 7
    cfg.flywheel.max_rounds = 9
    cfg.grading.qa_metric = "em"  # reward.qa_metric and eval.qa_metric interpolate it; their code says f1
    found = drifts(cfg)
    assert any(f.startswith("rl.mini_batches: yaml=7") for f in found)
    assert any(f.startswith("flywheel.max_rounds: yaml=9") for f in found)
    assert any(f.startswith("reward.qa_metric: yaml='em' code='f1'") for f in found)
