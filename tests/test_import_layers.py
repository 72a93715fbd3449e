"""The import graph of etagent/ flows one way: every import (module-level or inside a function,
parsed with ``ast``) points to the same or a lower layer of docs/ARCHITECTURE.md's layer list, and
no group of modules imports each other in a cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "etagent"
DOC = REPO / "docs" / "ARCHITECTURE.md"


def layers(doc: Path = DOC) -> list[tuple[str, list[str]]]:
    """``[(layer name, [module prefixes])]``, lowest first, from the ```layers block of the doc."""
    m = re.search(r"```layers\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert m, f"{doc}: no ```layers block"
    out = []
    for line in m.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, *mods = line.split()
            out.append((name, mods))
    return out


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the etagent modules it imports anywhere in its body (the named module: ``from a.b
    import c`` is ``a.b.c`` when that is a module, else ``a.b``)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                out.update(filter(None, (resolve(a.name) for a in node.names if a.name.split(".")[0] == "etagent")))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if name.split(".")[0] != "etagent":
                    continue
                for a in node.names:
                    full = f"{name}.{a.name}"
                    out.add(full if full in mods else resolve(name))
        out.discard(mod)
        graph[mod] = {m for m in out if m}
    return graph


def layer_of(mod: str, table: list[tuple[str, list[str]]]) -> int | None:
    """Index of the layer whose longest prefix matches ``mod`` (the root package only by name)."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(table):
        for p in prefixes:
            hit = mod == p or (p != "etagent" and mod.startswith(p + "."))
            if hit and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def upward(graph: dict[str, set[str]], table) -> list[str]:
    names = [n for n, _ in table]
    return [f"{a} ({names[layer_of(a, table)]}) -> {b} ({names[layer_of(b, table)]})"
            for a, deps in sorted(graph.items()) for b in sorted(deps)
            if layer_of(b, table) > layer_of(a, table)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph():
    return import_graph(modules())


def test_every_module_has_a_layer():
    table = layers()
    missing = sorted(m for m in modules() if layer_of(m, table) is None)
    assert not missing, f"modules without a layer in {DOC.name} (```layers block): {missing}"


def test_no_module_imports_upward(graph):
    bad = upward(graph, layers())
    assert not bad, "upward imports (the importer's layer is below the imported one):\n" + "\n".join(bad)


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """Function-level imports count, relative ones too."""
    root = tmp_path / "etagent"
    (root / "low").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "low" / "__init__.py").write_text("")
    (root / "low" / "a.py").write_text("def f():\n    from etagent.high import b\n")
    (root / "low" / "c.py").write_text("from . import a\n")
    (root / "high.py").write_text("from etagent.low import c\nimport etagent.low.a\n")
    table = [("base", ["etagent"]), ("low", ["etagent.low"]), ("high", ["etagent.high"])]
    g = import_graph(modules(root))
    assert g["etagent.low.a"] == {"etagent.high"} and g["etagent.low.c"] == {"etagent.low.a"}
    assert upward(g, table) == ["etagent.low.a (low) -> etagent.high (high)"]
    assert cycles(g) == [["etagent.high", "etagent.low.a", "etagent.low.c"]]
