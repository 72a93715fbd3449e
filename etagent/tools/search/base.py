"""Search tool front end: one ``SearchTool`` over interchangeable backends, plus shared helpers.

A backend turns a batch of queries into ranked ``Passage`` lists (``search_batch``); the tool
adds the optional persistent cache, formats passages the way Search-R1/ET-Agent show them
(``Doc 1(Title: T) text``), caps the length, and maps failures to ``ToolResult`` statuses.
Departure from the official ET-Agent code: it calls a paid web-search API per query; here
backends are local (bm25, dense, a recorded cache) or a self-hosted ``/retrieve`` server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from etagent.protocol import ToolSpec
from etagent.records import ERROR, OK
from etagent.tools.base import ToolResult, truncate_text

NO_RESULTS = "No results found."
_PUNCT_RE = re.compile(r"[^\w\s]")


def canonical_search_query(query: str) -> str:
    """Search's canonical query: lower-cased, punctuation dropped, whitespace collapsed
    ("Capital of France?" == "capital  of france")."""
    q = " ".join(str(query).split())
    return " ".join(_PUNCT_RE.sub(" ", q.lower()).split())


class SearchError(Exception):
    """A query (or the whole backend) failed; the message is shown to the model as the result."""


@dataclass
class Passage:
    title: str
    text: str
    id: str | None = None
    score: float | None = None


class SearchBackend(Protocol):
    backend_id: str  # identifies backend + data for cache keys (e.g. "bm25:<corpus sha>")

    def search_batch(self, queries: list[str], top_k: int) -> list[list[Passage] | SearchError]: ...

    def close(self) -> None: ...


STYLES = ("search_r1", "plain")


def format_passages(passages: list[Passage], style: str = "search_r1") -> str:
    """Search-R1 style ``Doc i(Title: t) text`` lines (``plain``: the texts alone, one per
    line: about half the tokens, used by the embedded world whose passages name their
    entity); a lone untitled passage is shown as is."""
    if not passages:
        return NO_RESULTS
    if len(passages) == 1 and not passages[0].title:
        return passages[0].text.strip()
    if style == "plain":
        return "\n".join(" ".join(p.text.split()) for p in passages)
    return "\n".join(f"Doc {i}(Title: {p.title}) {' '.join(p.text.split())}" for i, p in enumerate(passages, 1))


def cap_lines(text: str, max_chars: int) -> tuple[str, bool]:
    """Cap a multi-line result at ~``max_chars`` so that every line keeps a fair share.

    Water-filling: short lines keep all their text, long lines share what is left; a cut line
    ends in ``...``. A single line longer than the cap gets the ``...[truncated N chars]`` marker.
    """
    if max_chars <= 0 or len(text) <= max_chars:
        return text, False
    lines = text.split("\n")
    if len(lines) == 1:
        return truncate_text(text, max_chars)
    budget = max(max_chars - (len(lines) - 1), len(lines))
    lens = sorted(len(line) for line in lines)
    share, left, n = 0, budget, len(lines)
    for i, length in enumerate(lens):  # smallest lines first; the rest split what remains
        share = left // (n - i)
        if length > share:
            break
        left -= length
    else:
        share = max(lens)
    out = [line if len(line) <= share else line[: max(share - 3, 1)] + "..." for line in lines]
    return "\n".join(out), any(len(line) > share for line in lines)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_corpus(path: str | os.PathLike) -> list[Passage]:
    """Read a JSONL corpus of ``{id, title, text}``; bad lines name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search corpus not found: {path}")
    docs: list[Passage] = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: invalid JSON: {exc.msg}") from exc
            if not isinstance(row, dict) or "text" not in row:
                raise ValueError(f"{path}:{i}: expected an object with keys id, title, text")
            docs.append(Passage(title=str(row.get("title", "")), text=str(row["text"]), id=str(row.get("id", i - 1))))
    if not docs:
        raise ValueError(f"{path}: empty search corpus")
    return docs


class SearchTool:
    """The ``search`` tool: optional cache -> backend -> formatted, length-capped passages."""

    spec = ToolSpec(
        name="search",
        prompt="to search for information, write a query inside <search> </search>",
        normalise_query=canonical_search_query,
        case_sensitive=False,
        hints={"insufficient": "I need to search for this.",
               "aborted": "The search failed; I should search again with a simpler query."},
        domains=("qa",),
    )
    name = spec.name

    def __init__(self, backend: SearchBackend, top_k: int = 3, max_chars: int = 256, cache=None,
                 style: str = "search_r1"):
        if top_k < 1:
            raise ValueError(f"SearchTool: top_k must be >= 1, got {top_k}")
        if style not in STYLES:
            raise ValueError(f"tools.search.style must be one of {STYLES}, got {style!r}")
        self.style = style
        # formatted text is cached, so the style is part of the cache key
        self._cache_id = backend.backend_id if style == "search_r1" else f"{backend.backend_id}|{style}"
        self.backend = backend
        self.top_k = int(top_k)
        self.max_chars = int(max_chars)
        self.cache = cache  # PersistentCache | None

    def run_batch(self, queries: list[str]) -> list[ToolResult]:
        t0 = time.perf_counter()
        results: list[ToolResult | None] = [None] * len(queries)
        texts: dict[str, str] = {}
        wanted: list[str] = []
        for i, q in enumerate(queries):
            q = " ".join(q.split())
            if not q:
                results[i] = ToolResult(ERROR, "Error: empty search query", 0.0)
            elif q not in texts and q not in wanted:
                wanted.append(q)
        if self.cache is not None and wanted:
            texts.update(self.cache.get_many(self._cache_id, wanted, self.top_k))
        misses = [q for q in wanted if q not in texts]
        errors: dict[str, str] = {}
        if misses:
            try:
                found = self.backend.search_batch(misses, self.top_k)
            except SearchError as exc:  # the whole backend failed (e.g. server unreachable)
                found = [exc] * len(misses)
            fresh: dict[str, str] = {}
            for q, hits in zip(misses, found):
                if isinstance(hits, SearchError):
                    errors[q] = f"Error: {hits}"
                else:
                    fresh[q] = format_passages(hits, self.style)
            if self.cache is not None and fresh:
                self.cache.put_many(self._cache_id, fresh, self.top_k)
            texts.update(fresh)
        wall = time.perf_counter() - t0  # the batch ran as one backend call; each result shares its time
        for i, q in enumerate(queries):
            if results[i] is not None:
                continue
            q = " ".join(q.split())
            if q in errors:
                results[i] = ToolResult(ERROR, errors[q], wall)
            else:
                text, truncated = cap_lines(texts[q], self.max_chars)
                results[i] = ToolResult(OK, text, wall, truncated)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.backend.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> "SearchTool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
