"""A user tool added the documented way (class + YAML node, no other file): an arithmetic
calculator. Used by tests/test_tool_extension.py; its node is tests/tool_conf/tools/with_calculator.yaml."""

from __future__ import annotations

import ast
import operator
import time

from etagent.tools import ToolResult, ToolSpec

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError(f"unsupported expression: {ast.dump(node)[:40]}")


class Calculator:
    """Evaluates one arithmetic expression per call (``+ - * / **``, parentheses)."""

    spec = ToolSpec(
        name="calculator",
        prompt="to evaluate arithmetic, write an expression inside <calculator> </calculator>",
        normalise_query=lambda q: "".join(str(q).split()),  # optional: "6*7" and "6 * 7" are one call
    )
    name = spec.name

    def __init__(self, precision: int = 6):
        self.precision = int(precision)
        self.calls: list[str] = []

    def run_batch(self, queries: list[str]) -> list[ToolResult]:
        out = []
        for q in queries:
            self.calls.append(q)
            t0 = time.perf_counter()
            try:
                value = _eval(ast.parse(q.strip(), mode="eval"))
            except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as exc:
                out.append(ToolResult("error", f"Error: {exc}", time.perf_counter() - t0))
                continue
            text = str(int(value)) if float(value).is_integer() else f"{value:.{self.precision}g}"
            out.append(ToolResult("ok", text, time.perf_counter() - t0))
        return out

    def close(self) -> None:
        pass
