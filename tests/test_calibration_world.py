"""The mechanism world (task=calibration): determinism per seed, exact mix, and every type's plan
re-derived with the real tools: each search returns exactly the one keyed fact, each python call
prints the step's value, and no step is satisfied before it is made (the plans are minimal)."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from omegaconf import OmegaConf

from conftest import CONF
from etagent.behaviour import surfaces
from etagent.data.synthetic.calibration import (
    QTYPES,
    RELATIONS,
    THREE_HOP,
    TWO_HOP,
    CalibrationTask,
    build_keyed_world,
    query,
)
from etagent.data.synthetic.common import normalise_question
from etagent.data.synthetic.suite import SPLITS, allocate
from test_synthetic import make_toolset
from run_env import DOMAINS

PLAN_SHAPES = {  # type -> the tools of its plan, in order
    "qa_copy": (), "qa_recall": (), "math_tool": ("python",), "qa_1hop": ("search",),
    "qa_2hop": ("search", "search"), "qa_3hop": ("search", "search", "search"), "qa_calc": ("search", "python"),
}


@pytest.fixture(scope="module")
def task() -> CalibrationTask:
    return CalibrationTask(seed=0, n_train=800, n_dev=100, n_test=300, domains=DOMAINS)


@pytest.fixture(scope="module")
def toolset(task, tmp_path_factory):
    ts = make_toolset(task, tmp_path_factory.mktemp("world"))
    yield ts
    ts.close()


def test_deterministic_per_seed():
    a, b = (CalibrationTask(seed=3, n_train=300, n_dev=50, n_test=50, domains=DOMAINS) for _ in range(2))
    c = CalibrationTask(seed=4, n_train=300, n_dev=50, n_test=50, domains=DOMAINS)
    for split in SPLITS:
        assert [e.to_json() for e in a.load(split)] == [e.to_json() for e in b.load(split)]
    assert a.corpus_records() == b.corpus_records() and a.fingerprint() == b.fingerprint()
    assert [e.question for e in a.load("test")] != [e.question for e in c.load("test")]
    assert a.corpus_records() != c.corpus_records() and a.fingerprint() != c.fingerprint()


def test_splits_disjoint_and_mix_exact(task):
    keys = {s: {normalise_question(e.question) for e in task.load(s)} for s in SPLITS}
    assert not keys["train"] & keys["test"] and not keys["dev"] & keys["test"] and not keys["train"] & keys["dev"]
    assert set(task.mix) == set(QTYPES)
    for split in SPLITS:
        examples = task.load(split)
        assert Counter(e.meta["type"] for e in examples) == +Counter(allocate(len(examples), task.mix))
        assert all(e.source == f"calibration-{e.domain}" for e in examples)


def test_every_type_has_its_plan_shape(task):
    seen = Counter()
    for e in task.load("train"):
        t = e.meta["type"]
        seen[t] += 1
        assert tuple(p.tool for p in e.plan) == PLAN_SHAPES[t], (e.question, e.plan)
        if e.plan:
            assert e.plan[-1].expect == e.answer
        if t in ("qa_2hop", "qa_3hop"):  # a chain: each query names the previous step's value
            for first, second in zip(e.plan, e.plan[1:]):
                assert second.query.startswith(first.expect + " ")
        if t == "qa_calc":  # the python step computes on the searched number and a number of the question
            count = e.plan[0].expect
            assert e.plan[1].query.startswith(f"print({count}") and count not in re.findall(r"\d+", e.question)
            assert e.answer not in re.findall(r"\d+", e.question)
        if t in ("math_tool", "qa_calc"):  # every number is one token (< 1000): copying it is one copy
            numbers = re.findall(r"\d+", e.question + " " + " ".join(p.query + " " + p.expect for p in e.plan))
            assert all(int(n) < 1000 for n in numbers), e
        if t == "qa_copy":
            assert e.answer in e.question
    assert set(seen) == set(QTYPES)
    # the 2-4 call plans the study needs are a large part of the mix
    assert sum(seen[t] for t in ("qa_2hop", "qa_3hop", "qa_calc")) > 0.3 * sum(seen.values())


def test_plans_reproduce_gold_with_the_real_tools(task, toolset):
    """Every plan step: a search returns exactly its keyed fact (top 1), python prints the value;
    and no step's value shows in the question or an earlier step's result (minimal plan)."""
    world = task.keyed_world
    examples = [e for s in SPLITS for e in task.load(s) if e.plan]
    calls = sorted({(p.tool, p.query) for e in examples for p in e.plan})
    out = dict(zip(calls, toolset.execute(calls)))
    for e in examples:
        earlier = [e.question]
        for p in e.plan:
            r = out[(p.tool, p.query)]
            assert r.status == "ok" and not r.truncated, r
            if p.tool == "search":
                relation = next(rel for rel, (_, _, k) in RELATIONS.items() if p.query.endswith(" " + k))
                subject = p.query[: -len(RELATIONS[relation][2]) - 1]
                assert r.output.strip() == world.passage(subject, relation), (p, r.output)
            else:
                assert r.output.strip() == p.expect
            assert surfaces(r.output, p.expect)
            assert not any(surfaces(t, p.expect) for t in earlier), (e.question, p, earlier)
            earlier.append(r.output)


def test_every_fact_is_the_top_hit_of_its_query(task, toolset):
    world = task.keyed_world
    facts = world.facts()
    res = toolset.execute([("search", query(s, r)) for s, r in facts])
    wrong = [(s, r, o.output) for (s, r), o in zip(facts, res) if o.output.strip() != world.passage(s, r)]
    assert not wrong, wrong[:5]


def test_chain_types_and_famous_entities(task):
    """Chains use the declared chain types and never pass a famous entity (those are memorised)."""
    w = task.keyed_world
    chains = {"qa_2hop": {"/".join(c) for c in TWO_HOP}, "qa_3hop": {"/".join(c) for c in THREE_HOP}}
    used = {k: set() for k in chains}
    for e in task.load("train"):
        t = e.meta["type"]
        if t in chains:
            assert e.meta["relation"] in chains[t]
            used[t].add(e.meta["relation"])
        if e.plan and e.meta["type"] != "math_tool":
            names = [p.query for p in e.plan if p.tool == "search"] + [p.expect for p in e.plan]
            assert not any(w.is_famous(n) for n in names), e.question
    assert used == chains  # every chain type occurs


def test_recall_questions_are_famous_facts_learnable_from_train(task):
    w = task.keyed_world
    train = {(e.answer, e.meta["relation"], tuple(e.meta["entities"])) for e in task.load("train")
             if e.meta["type"] == "qa_recall"}
    test = [e for e in task.load("test") if e.meta["type"] == "qa_recall"]
    assert test
    for e in test:
        assert w.is_famous(e.meta["entities"][0]) and not e.plan
        assert (e.answer, e.meta["relation"], tuple(e.meta["entities"])) in train
        assert w.value(e.meta["entities"][0], e.meta["relation"]) == e.answer


def test_world_has_a_mayor_per_city_and_unique_name_words():
    w = build_keyed_world(seed=1, n_people=120, n_famous=4, n_cities=20, n_countries=5)
    assert set(w.mayors) == set(w.base.cities) and len(set(w.mayors.values())) == 20
    assert not any(w.is_famous(m) for m in w.mayors.values())
    titles = sorted({r["title"] for r in w.corpus_records()})
    tokens = Counter(tok for t in titles for tok in t.split())
    assert {t for t, n in tokens.items() if n > 1} <= {"Labs", "Works", "Group", "Foods", "Motors", "Media", "Tech", "Bank"}
    with pytest.raises(ValueError, match="mayors"):
        build_keyed_world(seed=1, n_people=10, n_famous=4, n_cities=20)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="mix.*math_recall"):
        CalibrationTask(mix={"math_recall": 1.0}, domains=DOMAINS)
    with pytest.raises(ValueError, match="world.*passage_style"):
        CalibrationTask(world={"passage_style": "entity"}, domains=DOMAINS)
    with pytest.raises(ValueError, match="search_top_k must be 1"):
        CalibrationTask(search_top_k=3, domains=DOMAINS)


def test_config_file_instantiates(tmp_path):
    from hydra.utils import instantiate

    from etagent.config import validate

    from conftest import compose

    cfg = compose(["task=calibration", "seed_agent=calibration"], run_dir=tmp_path)
    validate(cfg)
    task = instantiate(cfg.task)
    assert isinstance(task, CalibrationTask) and task.corpus_path == str(tmp_path / "world" / "corpus.jsonl")
    assert task.sizes == {"train": 6000, "dev": 200, "test": 300} and set(task.mix) == set(QTYPES)
    assert set(task.domains) == {"math", "qa"}  # the task node names its answer domains
