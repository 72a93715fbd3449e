"""Search tool: ``build_search_tool`` picks a backend by name (bm25 | dense | http | cache).

All backend settings live side by side in ``conf/tools/default.yaml`` so that one override
(``tools.search.backend=cache``) switches backends; settings of other backends are ignored.
Backends are imported lazily: bm25s, httpx and sentence-transformers load only when chosen.
"""

from __future__ import annotations

import os
from typing import Literal

from etagent.tools.search.base import NO_RESULTS, Passage, SearchBackend, SearchError, SearchTool, format_passages
from etagent.tools.search.persistent_cache import PersistentCache

BACKENDS = ("bm25", "dense", "http", "cache")

__all__ = [
    "BACKENDS",
    "NO_RESULTS",
    "Passage",
    "PersistentCache",
    "SearchBackend",
    "SearchError",
    "SearchTool",
    "build_backend",
    "build_search_tool",
    "format_passages",
]


def build_backend(
    backend: str,
    corpus_path: str | os.PathLike | None = None,
    index_dir: str | None = None,
    cache_file: str | os.PathLike | None = None,
    url: str = "http://127.0.0.1:8000/retrieve",
    timeout_s: float = 10.0,
    retries: int = 2,
    dense_model: str | None = None,
    device: str = "cpu",
) -> SearchBackend:
    if backend == "bm25":
        from etagent.tools.search.bm25 import BM25Backend

        _need("corpus_path", corpus_path, backend)
        return BM25Backend(corpus_path, index_dir=index_dir)
    if backend == "dense":
        from etagent.tools.search.dense import DenseBackend

        _need("corpus_path", corpus_path, backend)
        return DenseBackend(corpus_path, model=dense_model, device=device)
    if backend == "http":
        from etagent.tools.search.http import HTTPBackend

        return HTTPBackend(url, timeout_s=timeout_s, retries=retries)
    if backend == "cache":
        from etagent.tools.search.cache import CacheBackend

        _need("cache_file", cache_file, backend)
        return CacheBackend(cache_file)
    raise ValueError(f"tools.search.backend: unknown backend {backend!r}; choose one of {BACKENDS}")


def _need(key: str, value, backend: str) -> None:
    if value in (None, ""):
        raise ValueError(f"tools.search.{key} is required for backend={backend}")


def build_search_tool(
    backend: Literal["bm25", "dense", "http", "cache"] = "bm25",
    top_k: int = 3,
    max_chars: int = 256,
    corpus_path: str | os.PathLike | None = None,
    index_dir: str | None = None,
    cache_path: str | os.PathLike | None = None,
    cache_file: str | os.PathLike | None = None,
    url: str = "http://127.0.0.1:8000/retrieve",
    timeout_s: float = 10.0,
    retries: int = 2,
    dense_model: str | None = None,
    device: str = "cpu",
    style: Literal["plain", "search_r1"] = "plain",
) -> SearchTool:
    """Build the ``search`` tool from config.

    ``corpus_path``: JSONL ``{id,title,text}`` for bm25/dense. ``cache_file``: JSON query->result map
    for backend=cache. ``cache_path``: SQLite file of the persistent cache (null = no cache).
    ``url``/``timeout_s``/``retries``: the http backend. ``dense_model``: a sentence-transformers
    path or name (null = the packaged all-MiniLM-L6-v2). ``style``: ``search_r1`` (``Doc i(Title: t)
    text``) or ``plain`` (texts only).
    """
    impl = build_backend(
        backend,
        corpus_path=corpus_path,
        index_dir=index_dir,
        cache_file=cache_file,
        url=url,
        timeout_s=timeout_s,
        retries=retries,
        dense_model=dense_model,
        device=device,
    )
    cache = PersistentCache(cache_path) if cache_path else None
    return SearchTool(impl, top_k=top_k, max_chars=max_chars, cache=cache, style=style)
