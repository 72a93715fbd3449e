"""Instantiate config nodes (thin wrapper over hydra.utils.instantiate with key-named errors)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from etagent.config.errors import ConfigError


def build(node: DictConfig | dict, key: str = "", **overrides: Any) -> Any:
    if node is None:
        return None
    try:
        return instantiate(node, **overrides)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the key
        raise ConfigError(f"cannot build `{key}`: {exc}") from exc


def build_partial(node: DictConfig | dict, key: str = "") -> Any:
    """A factory for nodes that need runtime arguments (e.g. a tool that needs the corpus)."""
    return build(node, key, _partial_=True)
