"""Agent tools: the ``ToolSet`` contract, the sandboxed Python executor and search backends.

Kept import-light on purpose: sandbox workers import ``etagent.tools.python_sandbox`` at start,
so heavy backends (bm25s, httpx, sentence-transformers) load only when their module is used.
"""

from etagent.tools.base import Tool, ToolResult, ToolSet, build_toolset, truncate_text

__all__ = ["Tool", "ToolResult", "ToolSet", "build_toolset", "truncate_text", "PythonSandbox"]


def __getattr__(name: str):
    if name == "PythonSandbox":
        from etagent.tools.python_sandbox import PythonSandbox

        return PythonSandbox
    raise AttributeError(f"module 'etagent.tools' has no attribute {name!r}")
