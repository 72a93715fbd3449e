"""Tool contract: ``ToolResult``, the ``Tool`` protocol and ``ToolSet`` (dispatch by kind).

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
    name: str  # "python" | "search"

    def run_batch(self, queries: list[str]) -> list[ToolResult]: ...  # concurrent inside, order kept

    def close(self) -> None: ...


def truncate_text(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut ``text`` to ``max_chars`` characters plus a visible marker saying how much was dropped."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text, False
    return f"{text[:max_chars]}...[truncated {len(text) - max_chars} chars]", True


class ToolSet:
    """The tools an agent may call, keyed by the tag name the model writes (``python``, ``search``)."""

    def __init__(self, tools: Mapping[str, Tool]):
        for kind, tool in tools.items():
            if not callable(getattr(tool, "run_batch", None)):
                raise TypeError(f"tool {kind!r} ({type(tool).__name__}) has no run_batch(queries)")
        self.tools: dict[str, Tool] = dict(tools)
        self.kinds: tuple[str, ...] = tuple(self.tools)
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


def build_toolset(cfg_tools: Any) -> ToolSet:
    """Instantiate every ``_target_`` node of the ``tools`` config group into a ``ToolSet``.

    Keys without a ``_target_`` (plain settings) are ignored; a ``null`` node disables that tool
    (e.g. ``tools.search=null`` for a python-only agent).
    """
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg_tools, Mapping) and not isinstance(cfg_tools, DictConfig):
        cfg_tools = OmegaConf.create(dict(cfg_tools))
    tools: dict[str, Tool] = {}
    try:
        for kind, node in cfg_tools.items():
            if node is None or not isinstance(node, DictConfig) or "_target_" not in node:
                continue
            try:
                tools[str(kind)] = instantiate(node)
            except Exception as exc:
                raise ValueError(f"tools.{kind}: cannot build {node.get('_target_')}: {exc}") from exc
    except BaseException:
        for tool in tools.values():
            tool.close()
        raise
    return ToolSet(tools)
