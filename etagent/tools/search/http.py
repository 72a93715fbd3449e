"""Client for a retrieval server speaking the FlashRAG / Search-R1 ``/retrieve`` protocol.

Request:  ``POST {"queries": [...], "topk": k, "return_scores": true}``
Response: ``{"result": [[{"document": {"id": ..., "contents": "\\"Title\\"\\ntext"}, "score": s}, ...], ...]}``
(with ``return_scores: false`` the inner items are the documents themselves). As in Search-R1,
the first line of ``contents`` is the title. Connection errors, timeouts and 5xx answers are
retried with back-off; afterwards every query of the batch gets a clear "unreachable" error.
"""

from __future__ import annotations

import time

from etagent.tools.search.base import Passage, SearchError


def _passage(item: dict) -> Passage:
    doc = item.get("document", item) if isinstance(item, dict) else {}
    contents = str(doc.get("contents", doc.get("text", "")))
    title, _, text = contents.partition("\n")
    if not text and "title" in doc:
        title, text = str(doc["title"]), contents
    score = item.get("score") if isinstance(item, dict) else None
    return Passage(title=title.strip().strip('"'), text=text.strip(), id=doc.get("id"), score=score)


class HTTPBackend:
    def __init__(self, url: str = "http://127.0.0.1:8000/retrieve", timeout_s: float = 10.0, retries: int = 2, backoff_s: float = 0.5):
        import httpx

        self.url = url
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self.backend_id = f"http:{url}"
        self._client = httpx.Client(timeout=httpx.Timeout(float(timeout_s)), trust_env=False)

    def _post(self, payload: dict) -> dict:
        import httpx

        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self._client.post(self.url, json=payload)
            except httpx.HTTPError as exc:  # connect error, timeout, protocol error: retry
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code >= 400:
                raise SearchError(f"search server {self.url} rejected the request: HTTP {resp.status_code} {resp.text[:200]}")
            try:
                return resp.json()
            except ValueError as exc:
                raise SearchError(f"search server {self.url} returned invalid JSON") from exc
        raise SearchError(f"search server {self.url} unreachable after {self.retries + 1} tries ({last})")

    def search_batch(self, queries: list[str], top_k: int) -> list[list[Passage] | SearchError]:
        data = self._post({"queries": list(queries), "topk": int(top_k), "return_scores": True})
        result = data.get("result") if isinstance(data, dict) else None
        if not isinstance(result, list) or len(result) != len(queries):
            raise SearchError(f"search server {self.url} returned a malformed answer (expected 'result' with {len(queries)} lists)")
        return [[_passage(item) for item in hits[: int(top_k)]] for hits in result]

    def close(self) -> None:
        self._client.close()
