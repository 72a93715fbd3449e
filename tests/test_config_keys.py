"""No dead config keys: every key of every option's composed config is read by some code.

* a ``_target_`` node's key is a parameter of its target (validate checks that) that the code
  reads: a dataclass field read as ``.field`` (or ``.get("field")`` on the raw config) somewhere
  in etagent/ outside ``__post_init__`` (which only checks it), or a constructor/function
  parameter used in its body;
* a key of a node without a target (``grading``, ``paths``, ``rl.lora``, ``task.mix``, ...) is
  read by name: an attribute ``.key``, a string ``"key"`` or a keyword ``key=`` in etagent/;
* a key another key interpolates (``${paths.benchmarks_dir}``) is read; the names of a
  collection of components (``task.tasks.<name>``, ``tools.<name>``) are data, not knobs.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from conftest import CONF, REPO, compose

PACKAGE = REPO / "etagent"
_HYDRA = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# keys read by code outside etagent/: Hydra itself
_EXTERNAL = {"hydra"}


def _options() -> list[list[str]]:
    out = [[]]
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        out += [[f"{group.name}={f.stem}"] for f in sorted(group.glob("*.yaml"))]
    return out


class _Reads(ast.NodeVisitor):
    """Names the package reads: attributes (outside ``__post_init__``), strings, keywords."""

    def __init__(self) -> None:
        self.attrs: set[str] = set()
        self.names: set[str] = set()  # strings and keyword arguments

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name != "__post_init__":
            self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.attrs.add(node.attr)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.names.add(node.value)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg:
            self.names.add(node.arg)
        self.generic_visit(node)


@lru_cache(maxsize=1)
def package_reads() -> _Reads:
    reads = _Reads()
    for path in PACKAGE.rglob("*.py"):
        if "config" in path.relative_to(PACKAGE).parts[:1]:
            continue  # validation and schemas name every key without reading it
        reads.visit(ast.parse(path.read_text(), str(path)))
    return reads


def _locate(path: str):
    mod, _, name = path.rpartition(".")
    return getattr(importlib.import_module(mod), name)


@lru_cache(maxsize=None)
def _used_in_body(fn) -> frozenset[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    body = tree.body[0].body
    return frozenset(n.id for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Name))


def unread_target_keys(target_path: str, keys: list[str]) -> list[str]:
    target = _locate(target_path)
    reads = package_reads()
    if dataclasses.is_dataclass(target):
        return [k for k in keys if k not in reads.attrs and k not in reads.names]
    fn = target.__init__ if inspect.isclass(target) else target
    used = _used_in_body(fn)
    return [k for k in keys if k not in used]


@lru_cache(maxsize=None)
def mapping_params(target_path: str) -> frozenset[str]:
    """Parameters of a target that take a free-form mapping (e.g. the evolver's ``hints``
    templates keyed "<fault>.<tool>"): their keys are data the code looks up, not knobs."""
    target = _locate(target_path)
    fn = target.__init__ if inspect.isclass(target) and not dataclasses.is_dataclass(target) else target
    out = set()
    for name, p in inspect.signature(fn).parameters.items():
        ann = str(p.annotation)
        if re.search(r"\b(Mapping|dict)\[str, *str\]", ann):
            out.add(name)
    return frozenset(out)


def _collection(node: DictConfig) -> bool:
    values = [node._get_node(k) for k in node.keys()]
    return bool(values) and all(isinstance(v, DictConfig) and (v._is_none() or "_target_" in v) for v in values)


def interpolated(cfg: DictConfig) -> set[str]:
    """Dotted keys that some value of ``cfg`` interpolates."""
    text = OmegaConf.to_yaml(cfg, resolve=False)
    return set(re.findall(r"\$\{(?:oc\.select:)?([A-Za-z_][\w.]*)", text))


def dead_keys(node, where: str, used: frozenset[str] = frozenset()) -> list[str]:
    out: list[str] = []
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            out += dead_keys(item, f"{where}[{i}]", used)
        return out
    if not isinstance(node, DictConfig):
        return out
    keys = [str(k) for k in node.keys() if k not in _HYDRA and f"{where}.{k}" not in used]
    if "_target_" in node:
        out += [f"{where}.{k} ({node['_target_']})" for k in unread_target_keys(str(node["_target_"]), keys)]
    elif not _collection(node):
        reads = package_reads()
        out += [f"{where}.{k}" for k in keys if k not in reads.attrs and k not in reads.names]
    data = mapping_params(str(node["_target_"])) if "_target_" in node else frozenset()
    for k in keys:
        child = node._get_node(k)
        if k in data:
            continue
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none():
            out += dead_keys(child, f"{where}.{k}" if where else k, used)
    return out


@pytest.fixture(scope="module")
def composed():
    return {" ".join(ov) or "(default)": compose(ov, run_dir=Path("/tmp/etagent-keys")) for ov in _options()}


def test_no_yaml_key_is_left_unread(composed):
    dead: set[str] = set()
    for cfg in composed.values():
        for k in cfg.keys():
            if k in _EXTERNAL:
                continue
            child = cfg._get_node(k)
            if isinstance(child, (DictConfig, ListConfig)):
                dead |= set(dead_keys(child, str(k), frozenset(interpolated(cfg))))
            elif str(k) not in package_reads().attrs | package_reads().names:
                dead.add(str(k))
    assert not dead, "config keys no code reads:\n" + "\n".join(sorted(dead))


def test_the_check_finds_a_dead_key():
    node = OmegaConf.create({"_target_": "etagent.rl.reward.RewardFn", "mode": "efficiency", "sigma_tool": 0.2})
    assert dead_keys(node, "reward") == []
    assert unread_target_keys("etagent.rl.reward.RewardFn", ["mode", "no_such_field_anywhere"]) == ["no_such_field_anywhere"]
    assert dead_keys(OmegaConf.create({"grading": {"qa_metric": "f1", "qa_unused_knob": 1}}), "") == ["grading.qa_unused_knob"]
    cfg = OmegaConf.create({"paths": {"unused_dir": "/x", "data_dir": "/d"}, "task": {"path": "${paths.data_dir}/t"}})
    assert dead_keys(cfg.paths, "paths", frozenset(interpolated(cfg))) == ["paths.unused_dir"]
