"""ToolSet dispatch (grouping, order, concurrency across kinds, unknown kinds) and build from config."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from etagent.tools import ToolResult, ToolSet, build_toolset

CONF = Path(__file__).resolve().parents[1] / "conf" / "tools" / "default.yaml"


class FakeTool:
    def __init__(self, name: str, delay: float = 0.0, fail: bool = False):
        self.name, self.delay, self.fail = name, delay, fail
        self.batches: list[list[str]] = []
        self.closed = False
        self.threads: set[int] = set()

    def run_batch(self, queries):
        self.batches.append(list(queries))
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("backend exploded")
        return [ToolResult("ok", f"{self.name}:{q}", self.delay) for q in queries]

    def close(self):
        self.closed = True


def test_execute_groups_by_kind_and_keeps_order():
    py, se = FakeTool("python"), FakeTool("search")
    ts = ToolSet({"python": py, "search": se})
    assert ts.kinds == ("python", "search")
    calls = [("search", "a"), ("python", "1"), ("bogus", "x"), ("search", "b"), ("python", "2")]
    out = ts.execute(calls)
    assert [r.output for r in out] == ["search:a", "python:1", "unknown tool bogus", "search:b", "python:2"]
    assert out[2].status == "error" and out[2].wall_s == 0.0
    assert py.batches == [["1", "2"]] and se.batches == [["a", "b"]]  # one batch per kind
    assert ts.execute([]) == []


def test_kinds_run_concurrently():
    ts = ToolSet({"python": FakeTool("python", delay=0.4), "search": FakeTool("search", delay=0.4)})
    t0 = time.perf_counter()
    ts.execute([("python", "x"), ("search", "y")])
    assert time.perf_counter() - t0 < 0.7  # serial would be 0.8 s


def test_failing_tool_errors_its_calls_only():
    ts = ToolSet({"python": FakeTool("python"), "search": FakeTool("search", fail=True)})
    ok, bad = ts.execute([("python", "1"), ("search", "q")])
    assert ok.status == "ok"
    assert bad.status == "error" and "backend exploded" in bad.output


def test_context_manager_closes_tools():
    py = FakeTool("python")
    with ToolSet({"python": py}) as ts:
        ts.execute([("python", "1")])
    assert py.closed


def test_toolresult_status_is_checked():
    with pytest.raises(ValueError, match="status"):
        ToolResult("fine", "", 0.0)


@pytest.fixture
def cfg(tmp_path):
    """conf/tools/default.yaml under a `tools` key, with the `paths` it interpolates, shrunk for tests."""
    (tmp_path / "world").mkdir()
    with open(tmp_path / "world" / "corpus.jsonl", "w") as fh:
        for i, (title, text) in enumerate([("Kalomi", "Kalomi was founded in 1204."), ("Ravento", "Ravento exports salt.")]):
            fh.write(json.dumps({"id": str(i), "title": title, "text": text}) + "\n")
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "search_cache.json").write_text(json.dumps({"search query: founding of Kalomi": "Page 1: in 1204"}))
    root = OmegaConf.create({"paths": {"run_dir": str(tmp_path), "benchmarks_dir": str(bench)}})
    root.tools = OmegaConf.load(CONF)
    root.tools.python.pool_size = 1
    root.tools.python.preimport = ["math"]
    return root


def test_build_toolset_from_config(cfg, tmp_path):
    with build_toolset(cfg.tools) as ts:
        assert set(ts.kinds) == {"python", "search"}
        py, se, bad = ts.execute([("python", "print(6 * 7)"), ("search", "When was Kalomi founded?"), ("web", "x")])
        assert (py.status, py.output) == ("ok", "42\n")
        assert se.status == "ok" and se.output.startswith("Kalomi was founded in 1204.")  # style: plain
        assert bad.output == "unknown tool web"
    assert (tmp_path / "search_cache.sqlite").is_file() and (tmp_path / "world" / "corpus.bm25s").is_dir()


def test_backend_override_alone_is_valid(cfg):
    cfg.merge_with_dotlist(["tools.search.backend=cache", "tools.python=null"])
    with build_toolset(cfg.tools) as ts:
        assert ts.kinds == ("search",)
        hit, miss = ts.execute([("search", "founding of Kalomi"), ("search", "unknown")])
        assert (hit.status, hit.output) == ("ok", "Page 1: in 1204")
        assert miss.status == "error" and "no cached result" in miss.output


def test_bad_config_names_the_tool(cfg):
    cfg.merge_with_dotlist(["tools.search.backend=nope", "tools.python=null"])
    with pytest.raises(Exception, match="tools.search"):
        build_toolset(cfg.tools)


def test_composed_config_with_cache_backend(cfg_factory, tmp_path, shared_dir):
    """The real Hydra tree: `tools.search.backend=cache` alone selects the shipped recorded results."""
    cfg = cfg_factory(["tools.search.backend=cache", "tools.python=null"], run_dir=tmp_path)
    data = json.loads((shared_dir / "benchmarks" / "search_cache.json").read_text())
    query = next(iter(data))
    with build_toolset(cfg.tools) as ts:
        [r] = ts.execute([("search", query)])
    assert r.status == "ok" and r.output.startswith("Page 1:") and len(r.output) <= cfg.tools.search.max_chars + 40
