"""Agent tools: the ``ToolSet`` contract, the sandboxed Python executor and search backends.

Adding a tool: a class with ``spec = ToolSpec(...)`` (its tag, prompt clause, canonical query,
hints), ``run_batch(queries) -> list[ToolResult]`` and ``close()``, plus a ``conf/tools`` node
``<tag>: {_target_: your.module.YourTool, ...}``; the grammar, stop strings and system prompt
follow from the configured tools (``tests/test_tool_extension.py``).

Kept import-light on purpose: sandbox workers import ``etagent.tools.python_sandbox`` at start,
so heavy backends (bm25s, httpx, sentence-transformers) load only when their module is used.
"""

from etagent.protocol import ToolSpec
from etagent.tools.base import Tool, ToolResult, ToolSet, build_toolset, config_grammar, tool_specs, truncate_text

__all__ = ["Tool", "ToolResult", "ToolSet", "ToolSpec", "build_toolset", "config_grammar", "tool_specs",
           "truncate_text", "PythonSandbox"]


def __getattr__(name: str):
    if name == "PythonSandbox":
        from etagent.tools.python_sandbox import PythonSandbox

        return PythonSandbox
    raise AttributeError(f"module 'etagent.tools' has no attribute {name!r}")
