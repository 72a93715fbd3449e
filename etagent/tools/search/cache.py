"""Read-only backend over a recorded query -> result map (e.g. shared/benchmarks/search_cache.json).

The ET-Agent authors shipped 1,000 real web-search results as ``{query: "Page 1: ...\\nPage 2: ..."}``;
many keys carry a ``"search query: "`` prefix. Lookup tries the exact query, then a normalised
form (whitespace collapsed, case folded, prefix removed). The result is cut to the first
``top_k`` ``Page N:`` entries. A miss is a clear per-query error, never a silent empty result.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from etagent.tools.search.base import Passage, SearchError, file_sha256
from etagent.utils.io import read_json

_PREFIX = "search query:"
_PAGE_RE = re.compile(r"(?m)^(?=Page \d+:)")


def _norm(query: str) -> str:
    q = " ".join(query.split()).casefold()
    if q.startswith(_PREFIX):
        q = q[len(_PREFIX) :].strip()
    return q


def _first_pages(text: str, k: int) -> str:
    pages = [p for p in _PAGE_RE.split(text) if p.strip()]
    if len(pages) <= 1:
        return text.strip()
    return "\n".join(p.strip() for p in pages[:k])


class CacheBackend:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"search cache file not found: {self.path}")
        data = read_json(self.path)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"{self.path}: expected a JSON object mapping query -> result string")
        self.exact: dict[str, str] = data
        self.normalised: dict[str, str] = {}
        for k, v in data.items():
            self.normalised.setdefault(_norm(k), v)
        self.backend_id = f"cache:{file_sha256(self.path)[:16]}"

    def lookup(self, query: str) -> str | None:
        hit = self.exact.get(query)
        return hit if hit is not None else self.normalised.get(_norm(query))

    def search_batch(self, queries: list[str], top_k: int) -> list[list[Passage] | SearchError]:
        out: list[list[Passage] | SearchError] = []
        for q in queries:
            hit = self.lookup(q)
            if hit is None:
                out.append(SearchError(f"no cached result for query {q!r} in {self.path.name}"))
            else:
                out.append([Passage(title="", text=_first_pages(hit, int(top_k)))])
        return out

    def close(self) -> None:
        pass
