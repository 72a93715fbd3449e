"""Tool contract: ``ToolResult``, the ``Tool`` protocol and ``ToolSet`` (dispatch by kind).

Each tool class owns its grammar as a ``spec`` class attribute (:class:`etagent.protocol.ToolSpec`:
tag, system-prompt clause, canonical query, hints); a ``ToolSet`` derives its
:class:`etagent.protocol.Grammar` (tags, stop strings, system prompt) from its tools' specs, and
:func:`build_toolset` builds every ``_target_`` node of the ``tools`` config, so a new tool is its
class plus its YAML node.

A rollout turn may end with several tool calls across a batch of trajectories; ``ToolSet.execute``
groups them by kind, hands each kind its whole batch (each tool runs its batch concurrently
inside), runs the kinds concurrently with each other, and returns results in call order.
Departure from the official ET-Agent code: there, each call is executed serially and inline;
here tools are long-lived objects (worker pools, indexes, caches) built once from config.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable

from etagent.protocol import Grammar, ToolSpec, generic_spec
from etagent.records import ERROR, OK, TIMEOUT

TOOL_STATUSES = (OK, ERROR, TIMEOUT)


@dataclass
class ToolResult:
    status: str  # "ok" | "error" | "timeout"  (records.OK / ERROR / TIMEOUT)
    output: str  # stdout (+ last traceback line on error) / formatted passages; already truncated
    wall_s: float
    truncated: bool = False

    def __post_init__(self) -> None:
        if self.status not in TOOL_STATUSES:
            raise ValueError(f"ToolResult.status must be one of {TOOL_STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == OK


@runtime_checkable
class Tool(Protocol):
    spec: ToolSpec  # class attribute: the tag the model writes and the rest of the tool's grammar
    name: str  # == spec.name

    def run_batch(self, queries: list[str]) -> list[ToolResult]: ...  # concurrent inside, order kept

    def close(self) -> None: ...


def truncate_text(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut ``text`` to ``max_chars`` characters plus a visible marker saying how much was dropped."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text, False
    return f"{text[:max_chars]}...[truncated {len(text) - max_chars} chars]", True


def spec_of(kind: str, tool: Any) -> ToolSpec:
    """The grammar of ``tool`` registered as ``kind``: its ``spec`` (whose name must be ``kind``);
    for an object without one (a test double, a third-party object), a generic spec of that name."""
    spec = getattr(tool, "spec", None)
    if isinstance(spec, ToolSpec):
        if spec.name != kind:
            raise ValueError(f"tools.{kind}: {type(tool).__name__} writes <{spec.name}> calls; "
                             f"name its node tools.{spec.name}")
        return spec
    return generic_spec(kind)


class ToolSet:
    """The tools an agent may call, keyed by the tag name the model writes (``python``, ``search``).

    ``grammar`` is the tag grammar of exactly these tools (in this order): the rollout engine
    stops, parses and dispatches with it.
    """

    def __init__(self, tools: Mapping[str, Tool]):
        for kind, tool in tools.items():
            if not callable(getattr(tool, "run_batch", None)):
                raise TypeError(f"tool {kind!r} ({type(tool).__name__}) has no run_batch(queries)")
        self.tools: dict[str, Tool] = dict(tools)
        self.kinds: tuple[str, ...] = tuple(self.tools)
        self.grammar: Grammar = Grammar([spec_of(k, t) for k, t in self.tools.items()])
        self._closed = False

    def execute(self, calls: list[tuple[str, str]]) -> list[ToolResult]:
        """Run ``(kind, query)`` calls; results come back in call order."""
        results: list[ToolResult | None] = [None] * len(calls)
        groups: dict[str, list[int]] = {}
        for i, (kind, _query) in enumerate(calls):
            if kind in self.tools:
                groups.setdefault(kind, []).append(i)
            else:
                results[i] = ToolResult(ERROR, f"unknown tool {kind}", 0.0)

        def run_kind(kind: str) -> tuple[str, list[ToolResult]]:
            idx = groups[kind]
            queries = [calls[i][1] for i in idx]
            t0 = time.perf_counter()
            try:
                out = self.tools[kind].run_batch(queries)
            except Exception as exc:  # a broken tool must not kill the rollout: every call errors
                dt = time.perf_counter() - t0
                out = [ToolResult(ERROR, f"{kind} tool failed: {type(exc).__name__}: {exc}", dt) for _ in idx]
            if len(out) != len(idx):
                raise RuntimeError(f"tool {kind!r} returned {len(out)} results for {len(idx)} queries")
            return kind, out

        if len(groups) == 1:
            finished = [run_kind(next(iter(groups)))]
        elif groups:
            with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="toolset") as pool:
                finished = list(pool.map(run_kind, groups))
        else:
            finished = []
        for kind, out in finished:
            for i, res in zip(groups[kind], out):
                results[i] = res
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for tool in self.tools.values():
            tool.close()

    def __enter__(self) -> "ToolSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _tool_nodes(cfg_tools: Any) -> list[tuple[str, Any]]:
    """``(key, node)`` of every tool node: a mapping with a ``_target_`` (plain settings and
    ``null`` nodes are skipped), in config order."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg_tools, Mapping) and not isinstance(cfg_tools, DictConfig):
        cfg_tools = OmegaConf.create(dict(cfg_tools))
    return [(str(k), node) for k, node in cfg_tools.items()
            if node is not None and isinstance(node, DictConfig) and "_target_" in node]


def _spec_of_target(kind: str, target: str) -> ToolSpec:
    """The spec of a ``_target_`` without building it: a tool class, a classmethod of one, or a
    factory function annotated to return one (``build_search_tool -> SearchTool``)."""
    import inspect
    import typing

    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception as exc:
        raise ValueError(f"tools.{kind}._target_: cannot import {target!r}: {exc}") from exc
    if inspect.ismethod(obj) and isinstance(obj.__self__, type):
        obj = obj.__self__
    if not isinstance(obj, type):
        try:
            obj = typing.get_type_hints(obj).get("return")
        except Exception:  # noqa: BLE001 - unresolvable annotations: reported below
            obj = None
    spec = getattr(obj, "spec", None)
    if not isinstance(spec, ToolSpec):
        raise ValueError(f"tools.{kind}._target_={target!r}: not a tool class with a `spec` (etagent.protocol."
                         "ToolSpec) nor a factory annotated to return one")
    if spec.name != kind:
        raise ValueError(f"tools.{kind}: {target} writes <{spec.name}> calls; name its node tools.{spec.name}")
    return spec


def tool_specs(cfg_tools: Any) -> list[ToolSpec]:
    """The specs of the configured tools, read from their classes without building them."""
    return [_spec_of_target(kind, str(node._target_)) for kind, node in _tool_nodes(cfg_tools)]


def config_grammar(cfg_tools: Any) -> Grammar:
    """The grammar (tags, stop strings, system prompt) of the configured tool set, unbuilt:
    equal to ``build_toolset(cfg_tools).grammar``."""
    return Grammar(tool_specs(cfg_tools))


def build_toolset(cfg_tools: Any) -> ToolSet:
    """Instantiate every ``_target_`` node of the ``tools`` config group into a ``ToolSet``.

    Any node with a ``_target_`` is a tool (its key must be its tag, ``spec.name``); keys without
    one (plain settings) are ignored; a ``null`` node disables that tool (e.g. ``tools.search=null``
    for a python-only agent).
    """
    from hydra.utils import instantiate

    nodes = _tool_nodes(cfg_tools)
    for kind, node in nodes:  # fail on a misnamed or non-tool target before starting any worker
        _spec_of_target(kind, str(node._target_))
    tools: dict[str, Tool] = {}
    try:
        for kind, node in nodes:
            try:
                tools[kind] = instantiate(node)
            except Exception as exc:
                raise ValueError(f"tools.{kind}: cannot build {node.get('_target_')}: {exc}") from exc
        return ToolSet(tools)
    except BaseException:
        for tool in tools.values():
            tool.close()
        raise
