"""``task=jsonl``: train, tune and evaluate on your own question/answer files.

Files are JSONL, a JSON list or parquet (as for benchmarks, :mod:`etagent.data.benchmarks`);
field names are configurable (``question_fields``, ``answer_field``, ``id_field``). Each row's
domain is ``task.domain`` or, with ``task.domain_field``, the row's own value: one of the task's
``domains`` (built-in ``math`` | ``qa``; a new domain is a grading rule plus a ``task.domains``
node, :class:`etagent.grading.DomainRule`); its grading metric is ``task.metric`` or the
domain's own (math-verify / token F1).

* ``train_path`` (required) feeds the seed agent, the flywheel and RL.
* ``dev_path`` (optional): without it, ``dev_fraction`` of the training rows (a seeded shuffle,
  at least one row) is split off for RL's dev evaluation.
* ``test_path`` (required): what the ``eval`` stage reports.
* ``corpus_path`` (optional): a search corpus, one ``{"text": ..., "title": ..., "id": ...}``
  object per line (title and id optional); the ``world`` stage copies it to
  ``world/corpus.jsonl``, which the search tool indexes. Without one, set ``tools.search``
  to another backend (``http``, ``cache``) or to null.
* ``trajectories_path`` (optional): demonstrations for the seed agent, one object per line
  with ``response_text`` (the protocol's format: ``<think>``, ``<python>``/``<search>`` calls
  with their ``<result>``, ``<answer>\\boxed{..}</answer>``) and the training row it answers:
  ``example_id`` (the id in ``world/train.jsonl``), ``id`` (the row's own id) or ``question``.

The seed agent (paper: the instruct model itself) departs from the embedded world here: there
is no flawed teacher for your questions (it needs tool plans), so with the embedded scratch
model the seed is an SFT on ``trajectories_path`` when given, else the freshly initialised
base model (``seed/final`` = ``world/model_init``); with a pretrained model the model is the
seed as usual. The tokenizer of a scratch model is trained on your questions, corpus and
trajectories (the ``world`` stage).

Split sizes ``n_train``, ``n_dev``, ``n_test`` cap each split (first N rows; null = all), so
presets that shrink the synthetic task also shrink this one; ``world`` (the synthetic world's
sizes, set by ``preset=smoke``) is accepted and ignored: a user task has no generated world.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

from etagent.data.benchmarks import DEFAULT_QUESTION_FIELDS, iter_rows, row_to_example
from etagent.grading import Grader, check_domain, domain_rules
from etagent.records import Example, write_jsonl
from etagent.utils.io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
MANIFEST = "jsonl_task.json"


def load_corpus_rows(path: str | Path) -> list[dict[str, str]]:
    """``{id, title, text}`` rows of a user corpus; ``contents`` ("title\\ntext", Search-R1) is accepted."""
    out = []
    for lineno, row in iter_rows(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected an object with a `text` (or `contents`) key")
        if isinstance(row.get("text"), str) and row["text"].strip():
            title, text = str(row.get("title") or ""), row["text"]
        elif isinstance(row.get("contents"), str) and row["contents"].strip():
            title, _, text = row["contents"].partition("\n")
            if not text:
                title, text = "", row["contents"]
        else:
            raise ValueError(f"{where}: no non-empty `text` (or `contents`) string; fields found: {sorted(row)}")
        out.append({"id": str(row.get("id", len(out))), "title": title.strip(), "text": text.strip()})
    if not out:
        raise ValueError(f"{path}: empty search corpus")
    return out


class UserTrajectories:
    """The seed agent's demonstrations from ``task.trajectories_path`` (none: the base model).

    :meth:`write` has the flawed teacher's interface (``world/teacher.jsonl`` rows); the
    behaviour roles of the calls are unknown (``role: "unlabelled"``), so the teacher-stats
    table shows calls and correctness but no redundant/aborted shares.
    """

    def __init__(self, path: str | None, grader: Grader, name: str = "jsonl", held_out: Sequence[Example] = ()) -> None:
        self.path = path
        self.grader = grader  # the run's: grades the demonstrations for the teacher-stats table
        self.name = name
        self.held_out = list(held_out)  # training-file rows split off as dev: their demonstrations are skipped

    def write(self, examples: Sequence[Example], toolset: Any) -> list[dict]:
        """Teacher-file rows of the demonstrations; texts are parsed with ``toolset.grammar``."""
        grammar = toolset.grammar
        if not self.path:
            return []
        every = [*examples, *self.held_out]
        by_id = {e.id: e for e in every}
        by_raw = {str(e.meta.get("row_id")): e for e in every if e.meta.get("row_id") is not None}
        by_q = {e.question.strip(): e for e in every}
        held = {e.id for e in self.held_out}
        out, skipped = [], 0
        for lineno, row in iter_rows(self.path):
            where = f"{self.path}:{lineno}"
            if not isinstance(row, Mapping) or not isinstance(row.get("response_text"), str) \
                    or not row["response_text"].strip():
                raise ValueError(f"{where}: expected an object with a non-empty `response_text`")
            ex = (by_id.get(str(row.get("example_id"))) or by_raw.get(str(row.get("id")))
                  or by_q.get(str(row.get("question", "")).strip()))
            if ex is None:
                raise ValueError(f"{where}: matches no training row (give `example_id` as in world/train.jsonl, "
                                 f"the row's `id`, or its exact `question`); fields found: {sorted(row)}")
            if ex.id in held:
                skipped += 1
                continue
            text = row["response_text"]
            answer, score = self.grader.grade_text(ex, text, grammar)
            calls = [{"kind": c.kind, "query": c.content.strip(), "role": "unlabelled", "status": "unknown"}
                     for c in grammar.parse(text).calls()]
            out.append({"id": f"user-{ex.id}-{len(out)}", "example_id": ex.id, "response_text": text,
                        "flaws": [], "answer": answer, "correct": self.grader.is_success(ex.domain, float(score)),
                        "calls": calls, "missing_calls": None, "plan_ok": None, "domain": ex.domain,
                        "type": "user"})
        if skipped:
            log.info("%s: %d demonstration(s) of rows split off as dev are not trained on", self.path, skipped)
        if not out:
            raise ValueError(f"{self.path}: no trajectories for training rows")
        return out


class JsonlTask:
    """User question files as a task with train/dev/test splits (see module docstring)."""

    splits = SPLITS

    def __init__(self, train_path: str | None = None, test_path: str | None = None, dev_path: str | None = None,
                 name: str = "jsonl", dev_fraction: float = 0.1,
                 question_fields: Sequence[str] = DEFAULT_QUESTION_FIELDS, answer_field: str = "answer",
                 id_field: str | None = None, domain: str | None = "qa", domain_field: str | None = None,
                 metric: str | None = None, corpus_path: str | None = None, trajectories_path: str | None = None,
                 n_train: int | None = None, n_dev: int | None = None, n_test: int | None = None,
                 seed: int = 0, out_dir: str | None = None, world: Any = None, *,
                 domains: Mapping[str, Any]) -> None:
        for key, value in (("train_path", train_path), ("test_path", test_path)):
            if not value:
                raise ValueError(f"task.{key}: required for task=jsonl (a JSONL/JSON/parquet file of questions)")
        for key, value in (("train_path", train_path), ("test_path", test_path), ("dev_path", dev_path),
                           ("corpus_path", corpus_path), ("trajectories_path", trajectories_path)):
            if value and not Path(str(value)).is_file():
                raise FileNotFoundError(f"task.{key}: no such file: {value}")
        self.domains = domain_rules(domains, "task.domains")
        if domain_field is None:
            check_domain(domain, self.domains, "task.domain (or set task.domain_field)")
        known = {m for rule in self.domains.values() for m in rule.fns}
        if metric is not None and metric not in known:
            raise ValueError(f"task.metric must be one of {sorted(known)} (the domains' metrics) or null, got {metric!r}")
        if not 0.0 < float(dev_fraction) < 1.0:
            raise ValueError(f"task.dev_fraction must be in (0, 1), got {dev_fraction}")
        self.name, self.train_path, self.dev_path, self.test_path = name, train_path, dev_path, test_path
        self.dev_fraction = float(dev_fraction)
        self.question_fields, self.answer_field, self.id_field = tuple(question_fields), answer_field, id_field
        self.domain, self.domain_field, self.metric = domain, domain_field, metric
        self.corpus_path, self.trajectories_path = corpus_path, trajectories_path
        self.caps = {"train": n_train, "dev": n_dev, "test": n_test}
        self.seed, self.out_dir = int(seed), out_dir
        if world:
            log.info("task=jsonl: task.world (the synthetic world's sizes, e.g. from a preset) is ignored")
        self._cache: dict[str, list[Example]] = {}

    # ----------------------------------------------------------------- reading
    def _read(self, path: str, split: str) -> list[Example]:
        out: list[Example] = []
        seen: dict[str, str] = {}
        for lineno, row in iter_rows(path):
            where = f"{path}:{lineno}"
            domain = self.domain
            if self.domain_field is not None:
                domain = row.get(self.domain_field) if isinstance(row, Mapping) else None
                check_domain(domain, self.domains, f"{where}: task.domain_field {self.domain_field!r}")
            rule = self.domains[domain]
            try:
                ex = row_to_example(row, source=f"{self.name}/{split}", domain=str(domain), split=split,
                                    lineno=lineno, id_field=self.id_field, question_fields=self.question_fields,
                                    answer_field=self.answer_field)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            ex.source = self.name
            ex.meta.pop(self.domain_field or "", None)
            ex.meta["metric"] = self.metric or rule.metric
            if ex.meta["metric"] not in rule.fns:
                raise ValueError(f"{where}: task.metric {self.metric!r} cannot grade domain {domain!r} "
                                 f"(its metrics: {sorted(rule.fns)})")
            if ex.id in seen:
                raise ValueError(f"{where}: duplicate id {ex.id!r} (first at {seen[ex.id]})")
            seen[ex.id] = where
            out.append(ex)
        if not out:
            raise ValueError(f"{path}: no rows")
        return out

    def _splits(self) -> dict[str, list[Example]]:
        if self._cache:
            return self._cache
        train = self._read(self.train_path, "train")
        if self.dev_path:
            dev = self._read(self.dev_path, "dev")
        else:  # a seeded shuffle of the training rows; the split is part of the manifest
            if len(train) < 2:
                raise ValueError(f"{self.train_path}: needs at least 2 rows to split off a dev set "
                                 "(or set task.dev_path)")
            order = list(range(len(train)))
            random.Random(f"jsonl-dev:{self.seed}").shuffle(order)
            n_dev = max(1, round(self.dev_fraction * len(train)))
            dev_idx = set(order[:n_dev])
            dev = [train[i] for i in sorted(dev_idx)]
            train = [train[i] for i in range(len(train)) if i not in dev_idx]
            for e in dev:
                e.split = "dev"
        test = self._read(self.test_path, "test")
        splits = {"train": train, "dev": dev, "test": test}
        for s, cap in self.caps.items():
            if cap is not None:
                splits[s] = splits[s][: int(cap)]
        self._cache = splits
        return splits

    def load(self, split: str = "test") -> list[Example]:
        if split not in SPLITS:
            raise ValueError(f"task=jsonl: unknown split {split!r} (have {SPLITS})")
        return list(self._splits()[split])

    def seed_agent(self, grader: Grader) -> UserTrajectories:
        """Replaces the flawed teacher (which needs tool plans) in the `world` stage; ``grader``: the run's."""
        held = self.load("dev") if not self.dev_path else []
        return UserTrajectories(self.trajectories_path, grader, self.name, held_out=held)

    # ----------------------------------------------------------------- writing
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in (self.train_path, self.dev_path, self.test_path, self.corpus_path, self.trajectories_path):
            h.update(str(p).encode())
            if p:
                h.update(Path(p).read_bytes())
        h.update(json.dumps([self.name, self.dev_fraction, self.question_fields, self.answer_field, self.id_field,
                             self.domain, self.domain_field, self.metric, self.caps, self.seed]).encode())
        return h.hexdigest()

    def write(self, out_dir: str | None = None) -> dict[str, str]:
        """``{train,dev,test}.jsonl`` (+ ``corpus.jsonl``) atomically, manifest last; skipped when unchanged."""
        target = out_dir or self.out_dir
        if not target:
            raise ValueError("JsonlTask.write: no out_dir given (argument or task.out_dir)")
        root = Path(target)
        files = {s: root / f"{s}.jsonl" for s in SPLITS}
        if self.corpus_path:
            files["corpus"] = root / "corpus.jsonl"
        result = {k: str(v) for k, v in files.items()}
        manifest = root / MANIFEST
        fp = self.fingerprint()
        if manifest.exists() and all(p.exists() for p in files.values()) and read_json(manifest).get("fingerprint") == fp:
            return result
        splits = self._splits()
        for s in SPLITS:
            write_jsonl(files[s], splits[s])
        if self.corpus_path:
            atomic_write_text(files["corpus"], "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                       for r in load_corpus_rows(self.corpus_path)))
        atomic_write_json(manifest, {"fingerprint": fp, "files": result, "sizes": {s: len(v) for s, v in splits.items()},
                                     "sources": {"train": self.train_path, "dev": self.dev_path or "split off train",
                                                 "test": self.test_path, "corpus": self.corpus_path,
                                                 "trajectories": self.trajectories_path}})
        return result
