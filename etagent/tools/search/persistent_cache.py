"""SQLite cache in front of any search backend: same (backend, query, top_k) -> same result.

WAL journal + busy timeout make it safe for concurrent rollouts (threads and processes);
every ``put_many`` is one committed transaction, so a killed run keeps what it stored.
The first stored result wins (``INSERT OR IGNORE``), so concurrent writers agree.
Only successful results are cached; errors (server down, cache miss) are retried next time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS search_cache (
    backend TEXT NOT NULL,
    query   TEXT NOT NULL,
    top_k   INTEGER NOT NULL,
    result  TEXT NOT NULL,
    PRIMARY KEY (backend, query, top_k)
) WITHOUT ROWID
"""
_CHUNK = 500  # stay under SQLite's bound-parameter limit


class PersistentCache:
    def __init__(self, path: str | os.PathLike, timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = float(timeout_s)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross fork(); reopen in a child process.
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable against a process kill in WAL mode
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            conn.execute(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get_many(self, backend: str, queries: list[str], top_k: int) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._lock:
            conn = self._connect()
            for start in range(0, len(queries), _CHUNK):
                chunk = queries[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT query, result FROM search_cache WHERE backend=? AND top_k=? AND query IN ({marks})",
                    (backend, int(top_k), *chunk),
                ).fetchall()
                found.update(rows)
            self.hits += len(found)
            self.misses += len(set(queries)) - len(found)
        return found

    def get(self, backend: str, query: str, top_k: int) -> str | None:
        return self.get_many(backend, [query], top_k).get(query)

    def put_many(self, backend: str, results: dict[str, str], top_k: int) -> None:
        if not results:
            return
        with self._lock:
            conn = self._connect()
            with conn:  # one transaction
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT OR IGNORE INTO search_cache (backend, query, top_k, result) VALUES (?, ?, ?, ?)",
                    [(backend, q, int(top_k), r) for q, r in results.items()],
                )

    def put(self, backend: str, query: str, top_k: int, result: str) -> None:
        self.put_many(backend, {query: result}, top_k)

    def __len__(self) -> int:
        with self._lock:
            return self._connect().execute("SELECT COUNT(*) FROM search_cache").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
