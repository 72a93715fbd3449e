"""Start-up validation of the composed config: a wrong key or value fails naming the key.

Hydra already rejects unknown *override* keys (the composed config is in struct mode).
This module checks what Hydra cannot: that every ``_target_`` node only carries keys
its target accepts (by signature), that values of dataclass targets have the declared
types, and that the top-level schema (:class:`RootSchema`) holds. Nothing is
instantiated here, so validation is cheap and side-effect free.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from typing import Any, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from etagent.pipeline.registry import STAGE_NAMES

STAGES = STAGE_NAMES  # etagent.pipeline.registry, the one stage list
_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key."""


@dataclasses.dataclass
class RootSchema:
    run_name: str = "etagent"
    seed: int = 0
    resume: Any = False  # bool or a run directory path
    device: str = "auto"
    stages: list = dataclasses.field(default_factory=lambda: list(STAGES))
    export: Any = None
    init_from: Any = None
    init_stages: list = dataclasses.field(default_factory=lambda: ["world", "seed"])


def _locate(path: str, key: str):
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"{key}._target_: {path!r} is not a dotted path")
    try:
        obj = importlib.import_module(module_name)
    except ImportError:
        # nested attribute (module.Class.method)
        try:
            outer_mod, _, outer_attr = module_name.rpartition(".")
            obj = getattr(importlib.import_module(outer_mod), outer_attr)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{key}._target_: cannot import {path!r}: {exc}") from exc
    try:
        return getattr(obj, attr)
    except AttributeError:
        raise ConfigError(f"{key}._target_: {module_name!r} has no attribute {attr!r}") from None


def _type_ok(value: Any, tp: Any) -> bool:
    """Loose runtime check for the simple annotations used in our config dataclasses."""
    if tp is Any or tp is inspect.Parameter.empty or value is None and _allows_none(tp):
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is bool:
        return isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    if origin is dict or tp is dict:
        return isinstance(value, (dict, DictConfig))
    return True  # nested dataclasses / custom types: leave to the target


def _allows_none(tp: Any) -> bool:
    return tp is type(None) or (
        typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)
    )


def _check_target_node(node: DictConfig, key: str) -> None:
    target = _locate(str(node["_target_"]), key)
    try:
        hints = typing.get_type_hints(target) if dataclasses.is_dataclass(target) else {}
    except Exception:  # noqa: BLE001 - forward refs we cannot resolve: skip type checks
        hints = {}
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    keys = [k for k in node.keys() if k not in _HYDRA_KEYS]
    for k in keys:
        if k not in params and not accepts_kwargs:
            allowed = ", ".join(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
            raise ConfigError(f"unknown key `{key}.{k}` for {node['_target_']} (allowed: {allowed})")
        if k in params:
            tp = hints.get(k, params[k].annotation)
            if isinstance(tp, str):
                tp = Any
            value = OmegaConf.select(node, k, throw_on_missing=False) if isinstance(node, DictConfig) else node[k]
            if not OmegaConf.is_config(value) and not _type_ok(value, tp):
                raise ConfigError(f"bad value for `{key}.{k}`: {value!r} is not {tp}")


def _walk(node: Any, key: str) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_target_node(node, key)
        for k in node.keys():
            if k in _HYDRA_KEYS:
                continue
            child = node._get_node(k)  # no interpolation needed for structure
            try:
                value = node[k]
            except Exception as exc:  # noqa: BLE001 - unresolvable interpolation
                if "hydra" in str(exc).lower():
                    continue  # ${hydra:...} only resolves inside a Hydra app
                raise ConfigError(f"`{key}.{k}`: {exc}") from exc
            del child
            _walk(value, f"{key}.{k}" if key else str(k))
    elif isinstance(node, ListConfig):
        for i, v in enumerate(node):
            _walk(v, f"{key}[{i}]")


def validate(cfg: DictConfig) -> DictConfig:
    """Raise :class:`ConfigError` naming the first bad key; returns ``cfg`` unchanged."""
    root = {f.name for f in dataclasses.fields(RootSchema)}
    for k in root:
        if k in cfg and not _type_ok(cfg[k], typing.get_type_hints(RootSchema)[k]):
            raise ConfigError(f"bad value for `{k}`: {cfg[k]!r}")
    bad = [s for s in list(cfg.get("stages", [])) + list(cfg.get("init_stages") or []) if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) in `stages`: {bad} (allowed: {list(STAGES)})")
    for k in cfg.keys():
        if k == "hydra":
            continue
        _walk(cfg[k] if not OmegaConf.is_missing(cfg, k) else None, str(k))
    return cfg
