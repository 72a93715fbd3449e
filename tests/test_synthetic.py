"""Synthetic suite: determinism, split disjointness, exact mix, and every gold answer re-derived
by executing the example's plan with the real python sandbox and a BM25 search over the corpus."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF
from etagent.data.synthetic import SPLITS, SyntheticTask
from etagent.data.synthetic.common import normalise_question
from etagent.data.synthetic.suite import allocate
from etagent.records import Example, read_jsonl
from etagent.tools.base import ToolSet
from etagent.tools.python_sandbox import PythonSandbox
from etagent.tools.search import build_search_tool
from run_env import DOMAINS


def search_settings() -> dict:
    """top_k / max_chars of the search tool as the default config sets them (top_k is the task's)."""
    root = OmegaConf.create({"task": OmegaConf.load(CONF / "task" / "synthetic.yaml"),
                             "tools": OmegaConf.load(CONF / "tools" / "default.yaml")})
    node = root.tools.search
    return {"top_k": int(node.top_k), "max_chars": int(node.max_chars), "style": str(node.style)}


def make_toolset(task: SyntheticTask, directory: Path, **search_kw) -> ToolSet:
    """The real tools: python sandbox + BM25 search over the task's corpus written to ``directory``."""
    corpus = task.write(str(directory))["corpus"]
    kw = {**search_settings(), **search_kw}
    search = build_search_tool(backend="bm25", corpus_path=corpus, cache_path=None, **kw)
    return ToolSet({"python": PythonSandbox(pool_size=2, wall_seconds=5), "search": search})


@pytest.fixture(scope="module")
def task() -> SyntheticTask:
    return SyntheticTask(seed=0, domains=DOMAINS)  # the default sizes: what the main job uses


@pytest.fixture(scope="module")
def toolset(task, tmp_path_factory):
    ts = make_toolset(task, tmp_path_factory.mktemp("world"))
    yield ts
    ts.close()


def test_deterministic_by_seed():
    a = SyntheticTask(seed=3, n_train=200, n_dev=50, n_test=50, domains=DOMAINS)
    b = SyntheticTask(seed=3, n_train=200, n_dev=50, n_test=50, domains=DOMAINS)
    c = SyntheticTask(seed=4, n_train=200, n_dev=50, n_test=50, domains=DOMAINS)
    for split in SPLITS:
        assert [e.to_json() for e in a.load(split)] == [e.to_json() for e in b.load(split)]
    assert a.corpus_records() == b.corpus_records()
    assert [e.question for e in a.load("test")] != [e.question for e in c.load("test")]
    assert a.corpus_records() != c.corpus_records()


def test_splits_never_share_a_question(task):
    keys = {s: {normalise_question(e.question) for e in task.load(s)} for s in SPLITS}
    assert not keys["train"] & keys["dev"]
    assert not keys["train"] & keys["test"]
    assert not keys["dev"] & keys["test"]
    ids = [e.id for s in SPLITS for e in task.load(s)]
    assert len(ids) == len(set(ids))


def test_sizes_and_mix_are_exact(task):
    for split in SPLITS:
        examples = task.load(split)
        assert len(examples) == task.sizes[split]
        assert Counter(e.meta["type"] for e in examples) == +Counter(allocate(len(examples), task.mix))
        for e in examples:
            assert e.split == split and e.source == f"synthetic-{e.domain}" and e.plan is not None
            assert e.answers and all(isinstance(a, str) and a for a in e.answers)
            assert task.domain_of(e) == e.domain
            if e.meta["type"].startswith("math"):
                assert re.fullmatch(r"\d+", e.answer), e  # plain integers
            no_tool = e.meta["type"] in ("math_recall", "math_copy", "qa_recall")
            assert (e.plan == []) == no_tool
    # tool results vary in length (a tiny model must not learn a fixed answer length)
    lengths = Counter(len(e.answer) for e in task.load("train") if e.meta["type"] == "math_tool")
    assert len(lengths) >= 6


def test_recall_facts_are_learnable_from_train(task):
    """Memorisable types repeat in train; dev/test ask the same facts in unseen paraphrases."""
    train = task.load("train")
    train_facts = {(e.meta["type"], e.answer, tuple(e.meta.get("entities", [])), e.meta.get("relation"))
                   for e in train if e.meta["type"] == "qa_recall"}
    counts = Counter(e.question for e in train if e.meta["type"] == "qa_recall")
    assert max(counts.values()) >= 3
    for split in ("dev", "test"):
        for e in task.load(split):
            if e.meta["type"] == "qa_recall":
                fact = (e.meta["type"], e.answer, tuple(e.meta["entities"]), e.meta["relation"])
                assert fact in train_facts


def test_math_plans_reproduce_gold_with_the_sandbox(task, toolset):
    examples = [e for s in SPLITS for e in task.load(s) if e.domain == "math"]
    calls, golds = [], []
    for e in examples:
        if e.plan:
            assert len(e.plan) == 1 and e.plan[0].tool == "python" and e.plan[0].expect == e.answer
            calls.append(("python", e.plan[0].query))
        elif e.meta["op"] in ("mul", "add"):  # recall facts: recompute independently
            a, b = re.findall(r"\d+", e.question)
            calls.append(("python", f"print({a}{'*' if e.meta['op'] == 'mul' else '+'}{b})"))
        else:  # the answer is stated in the question
            assert e.answer in re.findall(r"\d+", e.question)
            continue
        golds.append(e.answer)
    unique = list(dict.fromkeys(calls))  # recall facts repeat: run each distinct call once
    by_call = dict(zip(unique, toolset.execute(unique)))
    results = [by_call[c] for c in calls]
    bad = [(c, g, r.output) for c, g, r in zip(calls, golds, results) if r.status != "ok" or r.output.strip() != g]
    assert not bad, bad[:5]


def _check_knowledge_plans(task: SyntheticTask, toolset: ToolSet) -> None:
    examples = [e for s in SPLITS for e in task.load(s) if e.domain == "qa"]
    queries = sorted({p.query for e in examples for p in e.plan} | {e.meta["entities"][0] for e in examples})
    out = {q: r for q, r in zip(queries, toolset.execute([("search", q) for q in queries]))}
    for e in examples:
        for p in e.plan:
            r = out[p.query]
            assert r.status == "ok" and not r.truncated, r
            # the queried entity ranks first and the fact the step needs is shown, uncut
            first = r.output.split("\n")[0]
            # plain style: passages open with their entity's name; search_r1: "Doc 1(Title: ..)"
            head = p.query if search_settings()["style"] == "plain" else f"Doc 1(Title: {p.query})"
            assert first.startswith(head), (e.question, r.output)
            assert p.expect in r.output, (e.question, p, r.output)
        if e.plan:
            assert e.plan[-1].expect == e.answer
            for first, second in zip(e.plan, e.plan[1:]):
                assert second.query == first.expect  # the second query needs the first result
                # and the first hop alone never shows the answer: the plan is minimal
                assert not any(a in out[first.query].output for a in e.answers), (e.question, out[first.query])
        else:  # famous facts are in the corpus too (a search there is redundant, not useless)
            assert e.answer in out[e.meta["entities"][0]].output


def test_knowledge_plans_find_gold_with_search(task, toolset):
    """Default world + the default search tool settings (top-3 passages, ~256 chars)."""
    _check_knowledge_plans(task, toolset)


def test_entity_passages_suit_a_top1_search(tmp_path):
    task = SyntheticTask(seed=2, n_train=300, n_dev=50, n_test=50, world={"passage_style": "entity"}, domains=DOMAINS)
    with make_toolset(task, tmp_path, top_k=1) as ts:
        _check_knowledge_plans(task, ts)


def test_corpus_is_well_formed(task):
    recs = task.corpus_records()
    assert len({r["id"] for r in recs}) == len(recs)
    # the configured number of passages per search fits the ~256-char result cap uncut
    cfg = search_settings()
    assert cfg["top_k"] * max(len(r["text"]) for r in recs) + cfg["top_k"] < cfg["max_chars"]
    titles = sorted({r["title"] for r in recs})
    tokens = Counter(tok for t in titles for tok in t.split())
    shared = {t for t, n in tokens.items() if n > 1}  # every name token belongs to one entity
    assert shared <= {"Labs", "Works", "Group", "Foods", "Motors", "Media", "Tech", "Bank"}


def test_write_is_atomic_resumable_and_roundtrips(tmp_path):
    task = SyntheticTask(seed=1, n_train=60, n_dev=20, n_test=20, out_dir=str(tmp_path / "world"), domains=DOMAINS)
    paths = task.write()
    assert set(paths) == {"train", "dev", "test", "corpus"}
    for split in SPLITS:
        assert [e.to_json() for e in read_jsonl(paths[split], Example)] == [e.to_json() for e in task.load(split)]
    corpus = [json.loads(line) for line in open(paths["corpus"], encoding="utf-8")]
    assert corpus == task.corpus_records() and task.corpus_path == paths["corpus"]
    mtimes = {k: (tmp_path / "world" / f"{k}.jsonl").stat().st_mtime_ns for k in SPLITS}
    SyntheticTask(seed=1, n_train=60, n_dev=20, n_test=20, out_dir=str(tmp_path / "world"), domains=DOMAINS).write()
    assert mtimes == {k: (tmp_path / "world" / f"{k}.jsonl").stat().st_mtime_ns for k in SPLITS}  # skipped
    SyntheticTask(seed=2, n_train=60, n_dev=20, n_test=20, out_dir=str(tmp_path / "world"), domains=DOMAINS).write()
    assert mtimes != {k: (tmp_path / "world" / f"{k}.jsonl").stat().st_mtime_ns for k in SPLITS}  # rewritten
    assert not list((tmp_path / "world").glob("*.tmp"))


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="mix.*math_tol"):
        SyntheticTask(mix={"math_tol": 1.0}, domains=DOMAINS)
    with pytest.raises(ValueError, match="world.*n_persons"):
        SyntheticTask(world={"n_persons": 3}, domains=DOMAINS)
    with pytest.raises(ValueError, match="split"):
        SyntheticTask(n_train=5, domains=DOMAINS).load("validation")


def test_config_file_instantiates(tmp_path):
    from hydra.utils import instantiate

    from etagent.config import validate

    from conftest import compose

    cfg = compose(["task=synthetic"], run_dir=tmp_path)
    validate(cfg)
    task = instantiate(cfg.task)
    assert set(task.domains) == {"math", "qa"} and task.domains["qa"].metric == "f1"  # the task names its domains
    assert isinstance(task, SyntheticTask) and task.corpus_path == str(tmp_path / "world" / "corpus.jsonl")
    assert task.sizes == {"train": 6000, "dev": 200, "test": 300}


def test_recall_table_size_is_configurable():
    import re

    from etagent.data.synthetic import math_tasks

    assert len(math_tasks.recall_facts()) == 8 * 8 + 9 * 9
    assert len(math_tasks.recall_facts(5)) == 4 * 4 + 5 * 5
    with pytest.raises(ValueError, match="recall_max_operand"):
        math_tasks.recall_facts(10)
    small = SyntheticTask(seed=0, n_train=200, n_dev=10, n_test=10, recall_max_operand=5,
                          world={"n_people": 40, "n_famous": 4, "n_cities": 10, "n_countries": 4}, domains=DOMAINS)
    recall = [e for split in ("train", "dev", "test") for e in small.load(split) if e.meta["type"] == "math_recall"]
    assert recall and all(max(map(int, re.findall(r"\d+", e.question))) <= 5 for e in recall)
    assert small.fingerprint() != SyntheticTask(seed=0, n_train=200, n_dev=10, n_test=10, recall_max_operand=9,
                                                world={"n_people": 40, "n_famous": 4, "n_cities": 10,
                                                       "n_countries": 4}, domains=DOMAINS).fingerprint()
