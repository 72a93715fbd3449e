"""BM25 backend (bm25s) over a local JSONL corpus of ``{id, title, text}``.

The index is built once and saved beside the corpus (``<corpus stem>.bm25s/``) together with
the corpus SHA-256 and the index parameters; it is reloaded when both still match, rebuilt
otherwise. Titles are indexed with the text (entity names often live only in the title).
Passages with zero score (no query term in common) are dropped.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from etagent.tools.search.base import Passage, SearchError, file_sha256, load_corpus
from etagent.utils.io import atomic_write_json, make_temp_dir, read_json

# bm25s logs every empty query and index build at INFO; under Hydra's logging that floods runs.
logging.getLogger("bm25s").setLevel(logging.WARNING)

_META = "etagent_meta.json"


def _tokenize(texts: list[str], stopwords: str | None) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords=stopwords or [], return_ids=False, show_progress=False)


class BM25Backend:
    def __init__(
        self,
        corpus_path: str | os.PathLike,
        index_dir: str | os.PathLike | None = None,
        k1: float = 1.5,
        b: float = 0.75,
        stopwords: str | None = "en",
    ):
        import bm25s

        self.corpus_path = Path(corpus_path)
        self.docs = load_corpus(self.corpus_path)
        self.index_dir = Path(index_dir) if index_dir else self.corpus_path.with_suffix(".bm25s")
        self.stopwords = stopwords
        sha = file_sha256(self.corpus_path)
        self.meta = {"corpus_sha256": sha, "k1": float(k1), "b": float(b), "stopwords": stopwords, "n_docs": len(self.docs)}
        self.backend_id = f"bm25:{sha[:16]}:{k1}:{b}:{stopwords}"
        self.loaded_from_disk = False
        if self._index_matches():
            self.retriever = bm25s.BM25.load(str(self.index_dir), show_progress=False)
            self.loaded_from_disk = True
        else:
            self.retriever = bm25s.BM25(k1=k1, b=b)
            tokens = _tokenize([f"{d.title}\n{d.text}" for d in self.docs], stopwords)
            self.retriever.index(tokens, show_progress=False)
            self._save()

    def _index_matches(self) -> bool:
        try:
            return read_json(self.index_dir / _META) == self.meta
        except (OSError, ValueError):
            return False

    def _save(self) -> None:
        """Write into a temp dir and rename, so a concurrent reader never sees half an index."""
        self.index_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(self.index_dir.parent, f".{self.index_dir.name}.")  # umask mode, not 0700
        try:
            self.retriever.save(str(tmp), show_progress=False)
            atomic_write_json(tmp / _META, self.meta)
            if self.index_dir.exists():
                shutil.rmtree(self.index_dir, ignore_errors=True)
            try:
                os.replace(tmp, self.index_dir)
            except OSError:  # another process won the race with the same content
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def search_batch(self, queries: list[str], top_k: int) -> list[list[Passage] | SearchError]:
        k = min(int(top_k), len(self.docs))
        tokens = _tokenize(queries, self.stopwords)
        try:
            ids, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        except Exception as exc:  # pragma: no cover - bm25s internal failure
            raise SearchError(f"bm25 search failed: {type(exc).__name__}: {exc}") from exc
        out: list[list[Passage] | SearchError] = []
        for row_ids, row_scores in zip(ids, scores):
            hits = []
            for i, s in zip(row_ids, row_scores):
                if float(s) <= 0.0:
                    continue
                d = self.docs[int(i)]
                hits.append(Passage(title=d.title, text=d.text, id=d.id, score=float(s)))
            out.append(hits)
        return out

    def close(self) -> None:
        pass
