"""Option files are deltas: an option built on another one of its group sets only what differs."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import CONF, compose

DELTAS = sorted(
    (f.parent.name, f.stem)
    for f in CONF.glob("*/*.yaml")
    if f.parent.name not in ("experiment", "preset", "hydra") and "defaults" in (yaml.safe_load(f.read_text()) or {})
)


def _base(group: str, option: str) -> str | None:
    defaults = yaml.safe_load((CONF / group / f"{option}.yaml").read_text())["defaults"]
    same_group = [d for d in defaults if isinstance(d, str) and d != "_self_" and (CONF / group / f"{d}.yaml").exists()]
    return same_group[0] if len(same_group) == 1 else None


def test_the_ablation_options_are_deltas_of_their_base():
    bases = {(g, o): _base(g, o) for g, o in DELTAS}
    for option in ("none", "enhance_only", "reflect_only", "oracle_upper_bound"):
        assert bases[("flywheel", option)] == "full"
    assert bases[("reward", "correctness")] == "efficiency"
    assert bases[("schedule", "one_stage")] == bases[("schedule", "three_stage")] == "default"
    assert bases[("rollout", "branching")] == "default" and bases[("model", "small")] == "tiny"


@pytest.mark.parametrize("group,option", [(g, o) for g, o in DELTAS if _base(g, o)])
def test_a_delta_sets_only_keys_that_differ_from_its_base(group, option):
    own = {k: v for k, v in yaml.safe_load((CONF / group / f"{option}.yaml").read_text()).items() if k != "defaults"}
    base = OmegaConf.to_container(compose([f"{group}={_base(group, option)}"])[group], resolve=False)
    assert own, f"conf/{group}/{option}.yaml changes nothing: use {_base(group, option)}"
    repeated = sorted(k for k, v in own.items() if k in base and base[k] == v)
    assert not repeated, f"conf/{group}/{option}.yaml repeats its base's values: {repeated}"
    assert set(own) <= set(base), f"conf/{group}/{option}.yaml adds keys its base lacks: {sorted(set(own) - set(base))}"
