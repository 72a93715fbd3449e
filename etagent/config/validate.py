"""Start-up validation of the composed config: a wrong key or value fails naming the key.

Hydra already rejects unknown *override* keys (the composed config is in struct mode).
This module checks what Hydra cannot: that every ``_target_`` node only carries keys
its target accepts (by signature) with values of the declared types (``Literal`` choices
included), and that the top-level nodes without a target match their schema
(:mod:`etagent.config.schema`). Nothing is instantiated here, so validation is cheap and
side-effect free. ``python -m etagent`` runs it when the config is composed, before Hydra
creates a run directory (:mod:`etagent.config.preflight`), and again at job start.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from typing import Any, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from etagent.config.errors import ConfigError
from etagent.config.schema import COLLECTIONS, OVERRIDES_OF, SECTIONS, RootSchema
from etagent.pipeline.registry import STAGE_NAMES

__all__ = ["ConfigError", "STAGES", "validate"]
STAGES = STAGE_NAMES  # etagent.pipeline.registry, the one stage list
_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


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
    if tp is type(None):
        return value is None
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


def _hints(target: Any) -> dict[str, Any]:
    """Resolved annotations of a dataclass, a class's ``__init__`` or a function (``{}`` if unresolvable)."""
    obj = target if dataclasses.is_dataclass(target) or not inspect.isclass(target) else target.__init__
    try:
        return typing.get_type_hints(obj)
    except Exception:  # noqa: BLE001 - forward refs we cannot resolve: skip type checks
        return {}


def _check_keys(node: DictConfig, target: Any, key: str, what: str) -> None:
    """Every key of ``node`` is a parameter of ``target`` and its literal value has the declared type."""
    hints = _hints(target)
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
            raise ConfigError(f"unknown key `{key}.{k}` for {what} (allowed: {allowed})")
        if k in params:
            tp = hints.get(k, params[k].annotation)
            if isinstance(tp, str):
                tp = Any
            try:
                value = OmegaConf.select(node, k, throw_on_missing=False) if isinstance(node, DictConfig) else node[k]
            except Exception as exc:  # noqa: BLE001 - ${hydra:...} only resolves inside a Hydra app
                if "hydra" in str(exc).lower():
                    continue
                raise ConfigError(f"`{key}.{k}`: {exc}") from exc
            if OmegaConf.is_config(value) and not _scalar(tp):
                continue  # a nested node: its own target (or its owner) checks it
            if not _type_ok(value, tp):
                shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
                raise ConfigError(f"bad value for `{key}.{k}`: {shown!r} is not {_show(tp)}")


def _scalar(tp: Any) -> bool:
    """Only a scalar (or a choice of scalars, or None) fits this annotation."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return all(_scalar(a) for a in typing.get_args(tp))
    return tp in (str, int, float, bool, type(None)) or typing.get_origin(tp) is typing.Literal


def _show(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + " | ".join(map(str, typing.get_args(tp)))
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType) and any(typing.get_origin(a) is typing.Literal for a in args):
        return " or ".join(_show(a) for a in args)
    return getattr(tp, "__name__", None) or str(tp)


def _check_target_node(node: DictConfig, key: str) -> None:
    _check_keys(node, _locate(str(node["_target_"]), key), key, str(node["_target_"]))


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


def _check_top_level(cfg: DictConfig, key: str) -> None:
    """A top-level node is a root scalar, a typed section, a component, a collection, or null."""
    node = cfg._get_node(key)
    if key in SECTIONS or key in OVERRIDES_OF:
        value = cfg[key]
        if value is None:
            return
        if not isinstance(value, DictConfig):
            raise ConfigError(f"bad value for `{key}`: {value!r} is not a mapping")
        if key in SECTIONS:
            _check_keys(value, SECTIONS[key], key, f"the `{key}` section")
        else:
            base = cfg.get(OVERRIDES_OF[key])
            if base is not None and "_target_" in base:
                _check_keys(value, _locate(str(base["_target_"]), key), key,
                            f"{base['_target_']} (`{key}` overrides `{OVERRIDES_OF[key]}`)")
        return
    if key in COLLECTIONS or not isinstance(node, DictConfig) or node._is_none() or "_target_" in node:
        return
    known = sorted({f.name for f in dataclasses.fields(RootSchema)} | set(SECTIONS) | set(OVERRIDES_OF))
    raise ConfigError(f"unknown top-level node `{key}`: no `_target_` and no schema (etagent/config/schema.py; "
                      f"known sections: {', '.join(known)})")


def validate(cfg: DictConfig) -> DictConfig:
    """Raise :class:`ConfigError` naming the first bad key; returns ``cfg`` unchanged."""
    root = {f.name for f in dataclasses.fields(RootSchema)}
    hints = typing.get_type_hints(RootSchema)
    for k in root:
        if k in cfg and not _type_ok(cfg[k], hints[k]):
            raise ConfigError(f"bad value for `{k}`: {cfg[k]!r} is not {_show(hints[k])}")
    bad = [s for s in list(cfg.get("stages", [])) + list(cfg.get("init_stages") or []) if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) in `stages`: {bad} (allowed: {list(STAGES)})")
    for k in cfg.keys():
        if k == "hydra":
            continue
        if k not in root:
            _check_top_level(cfg, str(k))
        _walk(cfg[k] if not OmegaConf.is_missing(cfg, k) else None, str(k))
    return cfg
