"""The embedded task suite (``task=synthetic``): seeded splits of math + knowledge questions.

Guarantees: the same arguments give the same examples, byte for byte; train, dev and
test never share a question (compared after lower-casing and dropping punctuation);
every example carries its gold answers and its minimal tool plan; per-split counts of
each question type follow ``mix`` exactly (largest remainder). Only memorisable types
(``math_recall``, ``qa_recall``) repeat inside train, so they can be learnt; dev/test
use paraphrases of those facts that training never shows.

Departure from the paper: the paper trains and evaluates on public benchmarks with an
LLM judge; this world exists so the whole pipeline runs, and behaviour is labelled
exactly, on a CPU with no downloads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

from etagent.grading import check_domain, domain_rules
from etagent.records import MATH, QA, Example, write_jsonl
from etagent.utils.io import atomic_write_json, atomic_write_text, read_json

from . import math_tasks
from .common import Candidate, RecallFact, normalise_question
from .knowledge_tasks import KnowledgeQuestions
from .knowledge_world import World, build_world

SPLITS: tuple[str, ...] = ("train", "dev", "test")
QTYPES: tuple[str, ...] = ("math_tool", "math_recall", "math_copy", "qa_recall", "qa_1hop", "qa_2hop")
DEFAULT_MIX: dict[str, float] = {"math_tool": 0.30, "math_recall": 0.10, "math_copy": 0.10,
                                 "qa_recall": 0.10, "qa_1hop": 0.22, "qa_2hop": 0.18}
DEFAULT_WORLD: dict[str, Any] = {"n_people": 400, "n_famous": 8, "n_cities": 40, "n_countries": 8,
                                 "founder_share": 0.5, "passage_style": "entity"}
SOURCES = {MATH: "synthetic-math", QA: "synthetic-qa"}
CORPUS_FILE, MANIFEST_FILE = "corpus.jsonl", "manifest.json"
_FORMAT_VERSION = 3  # bump when generation changes, so stale files on disk are rewritten
_MAX_TRIES = 2000


def _plain(mapping: Mapping[str, Any] | None, defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Merge a (possibly OmegaConf) mapping over defaults; unknown keys are an error."""
    out = dict(defaults)
    for k, v in (mapping or {}).items():
        if str(k) not in defaults:
            raise ValueError(f"task.{what}: unknown key {k!r} (known: {sorted(defaults)})")
        out[str(k)] = v
    return out


def allocate(n: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Split ``n`` into integer counts proportional to ``shares`` (largest remainder)."""
    total = float(sum(shares.values()))
    raw = {k: n * v / total for k, v in shares.items()}
    counts = {k: int(r) for k, r in raw.items()}
    for k in sorted(raw, key=lambda k: (counts[k] - raw[k], k))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


class SyntheticTask:
    """Deterministic generator of the embedded suite; see the module docstring."""

    splits: tuple[str, ...] = SPLITS
    domain = "mixed"  # math + qa; per example in Example.domain
    metric = None  # per example: meta["metric"] (math for math, f1 for qa)
    # what a subclass world changes (etagent.data.synthetic.calibration): its types, mix and world sizes
    qtypes: tuple[str, ...] = QTYPES
    default_mix: dict[str, float] = DEFAULT_MIX
    default_world: dict[str, Any] = DEFAULT_WORLD
    sources: dict[str, str] = SOURCES

    def __init__(
        self,
        name: str = "synthetic",
        seed: int = 0,
        n_train: int = 6000,
        n_dev: int = 200,
        n_test: int = 300,
        mix: Mapping[str, float] | None = None,
        world: Mapping[str, Any] | None = None,
        out_dir: str | None = None,
        corpus_path: str | None = None,
        recall_max_operand: int = 5,
        search_top_k: int = 1,
        *,
        domains: Mapping[str, Any],
    ) -> None:
        self.name = name
        # the task node's answer-domain rules: the suite writes math and qa questions
        self.domains = domain_rules(domains, "task.domains")
        for d in (MATH, QA):
            check_domain(d, self.domains, "task.domains (the synthetic suite writes math and qa questions)")
        self.seed = int(seed)
        self.sizes = {"train": int(n_train), "dev": int(n_dev), "test": int(n_test)}
        for split, n in self.sizes.items():
            if n < 0:
                raise ValueError(f"task.n_{split} must be >= 0, got {n}")
        self.mix = {k: float(v) for k, v in _plain(mix, {q: 0.0 for q in self.qtypes} if mix else self.default_mix,
                                                   "mix").items()}
        if any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(f"task.mix: shares must be >= 0 with a positive sum, got {self.mix}")
        self.world_cfg = _plain(world, self.default_world, "world")
        self.recall_max_operand = int(recall_max_operand)
        # Passages per search the corpus is written for (conf/tools reads task.search_top_k): one
        # compact passage per entity needs one hit; fact-style passages need 3 (a company has 3).
        if int(search_top_k) < 1:
            raise ValueError(f"task.search_top_k must be >= 1, got {search_top_k}")
        self.search_top_k = int(search_top_k)
        self.out_dir = str(out_dir) if out_dir else None
        self._corpus_path = str(corpus_path) if corpus_path else None
        self._world: World | None = None
        self._examples: dict[str, list[Example]] | None = None

    # ------------------------------------------------------------------ public API
    @property
    def corpus_path(self) -> str | None:
        """Where the passage corpus is (or will be) written; the search tool reads it."""
        if self._corpus_path:
            return self._corpus_path
        return str(Path(self.out_dir) / CORPUS_FILE) if self.out_dir else None

    @property
    def world(self) -> World:
        if self._world is None:
            self._world = build_world(seed=self.seed, **self.world_cfg)
        return self._world

    def load(self, split: str = "test") -> list[Example]:
        """Examples of ``split`` (fresh copies: callers may mutate them)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [copy.deepcopy(e) for e in self._generate()[split]]

    def corpus_records(self) -> list[dict]:
        return self.world.corpus_records()

    def lexicon(self) -> list[str]:
        """Words the embedded tokenizer keeps atomic: every word of every entity name (no
        name word is shared between entities, so one id always means one entity)."""
        return self.world.name_words()

    def domain_of(self, example: Example) -> str:
        return example.domain

    def fingerprint(self) -> str:
        spec = {"v": _FORMAT_VERSION, "name": self.name, "seed": self.seed, "sizes": self.sizes,
                "mix": self.mix, "world": self.world_cfg, "recall_max_operand": self.recall_max_operand}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def write(self, out_dir: str | None = None) -> dict[str, str]:
        """Write ``{train,dev,test}.jsonl`` + ``corpus.jsonl`` atomically, manifest last.

        Skips the work when a manifest with the same fingerprint and all files exist
        (resume); returns the file paths by name.
        """
        target = out_dir or self.out_dir
        if not target:
            raise ValueError("SyntheticTask.write: no out_dir given (argument or task.out_dir)")
        root = Path(target)
        paths = {s: root / f"{s}.jsonl" for s in SPLITS}
        paths["corpus"] = Path(self.corpus_path) if (self._corpus_path and not out_dir) else root / CORPUS_FILE
        manifest = root / MANIFEST_FILE
        result = {k: str(v) for k, v in paths.items()}
        if manifest.exists() and all(p.exists() for p in paths.values()):
            if read_json(manifest).get("fingerprint") == self.fingerprint():
                return result
        examples = self._generate()
        for split in SPLITS:
            write_jsonl(paths[split], examples[split])
        atomic_write_text(paths["corpus"], "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                    for r in self.corpus_records()))
        atomic_write_json(manifest, {"fingerprint": self.fingerprint(), "seed": self.seed, "sizes": self.sizes,
                                     "mix": self.mix, "world": self.world_cfg, "files": result,
                                     "type_counts": {s: _type_counts(examples[s]) for s in SPLITS}})
        return result

    # ------------------------------------------------------------------ generation
    def _generate(self) -> dict[str, list[Example]]:
        if self._examples is not None:
            return self._examples
        recall, fresh = self._sources()
        seen: dict[str, str] = {}  # normalised question -> split that owns it
        out: dict[str, list[Example]] = {}
        # test first: it is the split whose questions must be most surely unseen
        for split in ("test", "dev", "train"):
            rng = random.Random(f"synthetic:{self.seed}:{split}")
            cands: list[Candidate] = []
            for qtype, count in allocate(self.sizes[split], self.mix).items():
                if qtype in recall:
                    cands += self._draw_recall(recall[qtype], split, count, rng, seen)
                else:
                    cands += [self._draw_fresh(fresh[qtype], qtype, split, rng, seen) for _ in range(count)]
            rng.shuffle(cands)
            out[split] = [self._to_example(c, split, i) for i, c in enumerate(cands)]
        self._examples = out
        return out

    def _sources(self) -> tuple[dict[str, list[RecallFact]], dict[str, Callable[[random.Random], Candidate]]]:
        """(memorised facts by type, fresh-question generators by type): every type of ``qtypes``."""
        kq = KnowledgeQuestions(self.world)
        recall: dict[str, list[RecallFact]] = {"math_recall": math_tasks.recall_facts(self.recall_max_operand),
                                               "qa_recall": kq.recall_facts(self.seed)}
        fresh: dict[str, Callable[[random.Random], Candidate]] = {
            "math_tool": math_tasks.tool_question, "math_copy": math_tasks.copy_question,
            "qa_1hop": kq.one_hop, "qa_2hop": kq.two_hop}
        return recall, fresh

    def _draw_recall(self, facts: list[RecallFact], split: str, count: int, rng: random.Random,
                     seen: dict[str, str]) -> list[Candidate]:
        """Train samples with replacement; dev/test without, until the held-out pool is used up."""
        pool = [(f, i) for f in facts for i in f.indices_for(split, self.seed)]
        pool = [(f, i) for f, i in pool if seen.get(normalise_question(f.questions[i]), split) == split]
        if count and not pool:
            raise ValueError(f"task: no recall questions left for split {split!r}; enlarge the world")
        picks: list[tuple[RecallFact, int]] = []
        if split == "train":
            picks = [rng.choice(pool) for _ in range(count)]
        else:
            while len(picks) < count:  # a tiny pool repeats inside the split, never across
                order = pool[:]
                rng.shuffle(order)
                picks += order[: count - len(picks)]
        for f, i in picks:
            seen[normalise_question(f.questions[i])] = split
        return [f.make(f.questions[i]) for f, i in picks]

    def _draw_fresh(self, gen: Callable[[random.Random], Candidate], qtype: str, split: str,
                    rng: random.Random, seen: dict[str, str]) -> Candidate:
        for _ in range(_MAX_TRIES):
            cand = gen(rng)
            key = normalise_question(cand.question)
            if key not in seen:
                seen[key] = split
                return cand
        raise ValueError(f"task: cannot find a new {qtype} question for {split!r} after {_MAX_TRIES} tries; "
                         "enlarge the world or reduce the split sizes")

    def _to_example(self, c: Candidate, split: str, i: int) -> Example:
        return Example(id=f"{self.name}-{split}-{i:05d}", question=c.question, answers=list(c.answers),
                       domain=c.domain, source=self.sources[c.domain], split=split, plan=list(c.plan),
                       meta={"type": c.qtype, "metric": self.domains[c.domain].metric, **copy.deepcopy(c.meta)})


def _type_counts(examples: list[Example]) -> dict[str, int]:
    return dict(Counter(e.meta["type"] for e in examples))
