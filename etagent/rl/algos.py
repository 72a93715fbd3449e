"""An RL algorithm = an advantage estimator + a policy loss (``rl.algo``, ``conf/rl/algo/*.yaml``).

The trainer (:mod:`etagent.rl.grpo`) samples, scores, updates and checkpoints; what makes
it GRPO, RLOO, Dr. GRPO or DAPO is only this pair, chosen by one override
(``rl/algo=rloo``). Adding an algorithm: an estimator in :mod:`etagent.rl.advantages` or a
loss in :mod:`etagent.rl.losses` if a new one is needed, plus a YAML file in ``conf/rl/algo``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from etagent.rl.advantages import GroupNorm
from etagent.rl.losses import PPOClip


def instantiate_node(node: Any, key: str) -> Any:
    """``hydra.utils.instantiate(node)``; a failure is a ValueError naming ``key`` and the cause."""
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except Exception as exc:  # noqa: BLE001 - hydra wraps the target's own error
        cause = exc.__cause__ or exc
        raise ValueError(f"{key}: {cause}") from exc


def _build(value: Any, key: str) -> Any:
    """An un-instantiated node (mapping with ``_target_``, e.g. from a plain dict) -> its object."""
    from omegaconf import OmegaConf

    if isinstance(value, dict) or OmegaConf.is_config(value):
        if "_target_" not in value:
            raise ValueError(f"rl.algo.{key} needs a _target_ (got {dict(value)!r})")
        return instantiate_node(value, f"rl.algo.{key}")
    if not callable(value):
        raise ValueError(f"rl.algo.{key} must be callable, got {value!r}")
    return value


@dataclass
class Algorithm:
    """``rl.algo``: name (logged), advantage estimator, policy loss. Defaults: GRPO."""

    name: str = "grpo"
    advantage: Any = field(default_factory=GroupNorm)
    loss: Any = field(default_factory=PPOClip)

    def __post_init__(self) -> None:
        self.advantage = _build(self.advantage, "advantage")
        self.loss = _build(self.loss, "loss")
        if not hasattr(self.loss, "denominator"):
            raise ValueError(f"rl.algo.loss {type(self.loss).__name__} has no denominator(mask)")
