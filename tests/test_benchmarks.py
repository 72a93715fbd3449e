"""Benchmark loaders: the seven shared files, field normalisation, clear errors, task configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from etagent.data.benchmarks import BenchmarkTask, MultiTask, load_examples, normalize_answers
from etagent.records import Example
from run_env import DOMAINS

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETAGENT_SHARED", REPO.parent / "shared"))
BENCH = SHARED / "benchmarks"

BENCHMARKS = {  # name: (domain, rows)
    "aime24": ("math", 30),
    "amc23": ("math", 40),
    "math500": ("math", 500),
    "2wiki": ("qa", 200),
    "hotpotqa": ("qa", 200),
    "musique": ("qa", 200),
    "bamboogle": ("qa", 125),
}


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_load_shared_files(name):
    domain, rows = BENCHMARKS[name]
    examples = load_examples(BENCH / name / "test.jsonl", source=name, domain=domain)
    assert len(examples) == rows
    assert len({e.id for e in examples}) == rows
    for e in examples:
        assert isinstance(e, Example) and e.domain == domain and e.source == name and e.split == "test"
        assert e.question.strip() and e.answers and all(isinstance(a, str) and a for a in e.answers)
    raw = [json.loads(line) for line in open(BENCH / name / "test.jsonl", encoding="utf-8")]
    first = raw[0]
    assert examples[0].question == (first.get("question") or first["problem"]).strip()
    gold = first["answer"]
    assert examples[0].answers == ([gold] if isinstance(gold, str) else list(dict.fromkeys(gold)))


def test_ids_and_meta():
    aime = load_examples(BENCH / "aime24" / "test.jsonl", source="aime24", domain="math")
    assert aime[0].id == "aime24-60" and aime[0].meta["row_id"] == 60
    assert "solution" in aime[0].meta and "url" in aime[0].meta
    assert "problem" not in aime[0].meta  # a question field, not metadata
    wiki = load_examples(BENCH / "2wiki" / "test.jsonl", source="2wiki", domain="qa", limit=3)
    assert [e.id for e in wiki] == ["2wiki-1", "2wiki-2", "2wiki-3"]  # no id field -> line number
    assert wiki[0].answers[:2] == ["the five boroughs", "City of New York"]


def test_normalize_answers():
    assert normalize_answers("  27 ") == ["27"]
    assert normalize_answers(27) == ["27"]
    assert normalize_answers(27.0) == ["27"]
    assert normalize_answers(0.5) == ["0.5"]
    assert normalize_answers(["NYC", "NYC", 5]) == ["NYC", "5"]  # deduplicated, stringified
    assert normalize_answers(True) == ["True"] and normalize_answers([False, "no"]) == ["False", "no"]
    for bad in (None, "", [], [""], {"a": 1}, float("nan")):
        with pytest.raises(ValueError):
            normalize_answers(bad)


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_field_variants_and_custom_fields(tmp_path):
    f = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"problem": "What is 1+1?", "answer": 2},
            {"question": "Capital?", "answer": ["Paris", "paris"]},
            {"question": "Half?", "answer": 0.5, "id": "h"},
        ],
    )
    ex = load_examples(f, source="mix", domain="math")
    assert [e.question for e in ex] == ["What is 1+1?", "Capital?", "Half?"]
    assert [e.answers for e in ex] == [["2"], ["Paris", "paris"], ["0.5"]]
    assert [e.id for e in ex] == ["mix-1", "mix-2", "mix-h"]
    g = _write_jsonl(tmp_path / "custom.jsonl", [{"qid": "a", "query": "Q?", "gold": "x"}])
    ex = load_examples(g, source="c", domain="qa", id_field="qid", question_fields=["query"], answer_field="gold")
    assert ex[0].id == "c-a" and ex[0].question == "Q?" and ex[0].answers == ["x"]


@pytest.mark.parametrize(
    "bad_row,message",
    [
        ({"question": "Q"}, "missing key 'answer'"),
        ({"answer": "1"}, "missing question: none of the keys ['question', 'problem']"),
        ({"question": "Q", "answer": []}, "key 'answer': answer list is empty"),
        ({"question": "Q", "answer": None}, "key 'answer'"),
        ('{"question": "Q", "answer": ', "invalid JSON"),
        ("[1, 2]", "row is a list"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, bad_row, message):
    f = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "ok", "answer": "1"}, "", bad_row])
    with pytest.raises(ValueError) as err:
        load_examples(f, source="bad", domain="qa")
    assert f"{f}:3:" in str(err.value)  # blank line 2 is skipped but still counted
    assert message in str(err.value)


def test_duplicate_ids_and_bad_arguments(tmp_path):
    f = _write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "question": "a", "answer": "1"}] * 2)
    with pytest.raises(ValueError, match=r"dup.jsonl:2: duplicate id 'dup-1' \(first at .*dup.jsonl:1\)"):
        load_examples(f, source="dup", domain="math")
    with pytest.raises(ValueError, match="missing id key 'qid'"):
        load_examples(f, source="dup", domain="math", id_field="qid")
    with pytest.raises(ValueError, match=r"task dup: domain must be one of \['math', 'qa'\].*got 'code'"):
        BenchmarkTask(name="dup", domain="code", path=str(f), domains=DOMAINS)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_examples(tmp_path / "nope.jsonl", source="x", domain="qa")
    (tmp_path / "x.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_examples(tmp_path / "x.csv", source="x", domain="qa")


def test_json_list_input(tmp_path):
    rows = [{"id": 7, "problem": "P?", "answer": "\\frac{1}{2}"}, {"question": "Q?", "answer": [3, "three"]}]
    f = tmp_path / "list.json"
    f.write_text(json.dumps(rows, indent=2))
    ex = load_examples(f, source="j", domain="math")
    assert [e.id for e in ex] == ["j-7", "j-2"] and ex[1].answers == ["3", "three"]
    f.write_text(json.dumps({"data": rows}))  # {"data": [...]} wrapper
    assert len(load_examples(f, source="j", domain="math")) == 2
    f.write_text(json.dumps(rows + [{"question": "no answer"}]))
    with pytest.raises(ValueError, match=r"list.json:item 3: missing key 'answer'"):
        load_examples(f, source="j", domain="math")
    f.write_text(json.dumps({"question": "Q"}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_examples(f, source="j", domain="math")
    f.write_text("[{,}]")
    with pytest.raises(ValueError, match=r"list.json:1: invalid JSON"):
        load_examples(f, source="j", domain="math")


def test_parquet_input(tmp_path):
    # list-valued answers come back from parquet as numpy arrays; ints as numpy ints
    df = pd.DataFrame(
        {"id": [10, 11, 12], "question": ["a?", "b?", "c?"], "answer": [["x", "y"], ["z"], ["w"]], "hops": [2, 3, 4]}
    )
    f = tmp_path / "q.parquet"
    df.to_parquet(f)
    ex = load_examples(f, source="pq", domain="qa")
    assert [e.id for e in ex] == ["pq-10", "pq-11", "pq-12"]
    assert ex[0].answers == ["x", "y"] and ex[0].meta == {"hops": 2, "row_id": 10}
    assert type(ex[0].meta["hops"]) is int  # numpy scalars converted: meta stays JSON-serialisable
    assert Example.from_json(ex[0].to_json()) == ex[0]
    assert len(load_examples(f, source="pq", domain="qa", limit=2)) == 2
    pd.DataFrame({"question": ["a?", "b?"], "answer": [["x"], []]}).to_parquet(f)
    with pytest.raises(ValueError, match=r"q.parquet:row 2: key 'answer': answer list is empty"):
        load_examples(f, source="pq", domain="qa")


# --------------------------------------------------------------------------- task objects


def test_benchmark_task_load_and_splits():
    t = BenchmarkTask(name="amc23", domain="math", path=str(BENCH / "amc23" / "test.jsonl"), limit=5, domains=DOMAINS)
    assert t.metric == "math" and t.source == "amc23"
    ex = t.load()
    assert len(ex) == 5 and all(e.meta["metric"] == "math" for e in ex)
    assert t.load("test")[0].id == "amc23-0"
    with pytest.raises(ValueError, match="only the \\['test'\\] split"):
        t.load("train")
    assert BenchmarkTask(name="m", domain="qa", path="x", domains=DOMAINS).metric == "f1"
    with pytest.raises(ValueError, match="metric must be one of"):
        BenchmarkTask(name="m", domain="qa", path="x", metric="bleu", domains=DOMAINS)
    with pytest.raises(ValueError, match="neither a path nor hf_name"):
        BenchmarkTask(name="m", domain="qa", domains=DOMAINS).load()


def _compose_task(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(overrides=[*overrides, f"+paths.benchmarks_dir={BENCH}"])


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_task_configs_compose_and_load(name):
    cfg = _compose_task(f"+task={name}")
    assert cfg.task.path == f"{BENCH}/{name}/test.jsonl"
    assert cfg.task.hf_name is None
    task = instantiate(cfg.task)
    domain, rows = BENCHMARKS[name]
    assert isinstance(task, BenchmarkTask) and task.name == name and task.domain == domain
    assert task.metric == ("math" if domain == "math" else "f1")
    assert len(task.load("test")) == rows


def test_paper_multitasks():
    math = instantiate(_compose_task("+task=paper_math").task)
    assert isinstance(math, MultiTask) and math.name == "paper_math"
    assert math.names == ["aime24", "amc23", "math500"] and math.domain == "math" and math.metric == "math"
    ex = math.load("test")
    assert len(ex) == 570 and len({e.id for e in ex}) == 570
    qa = instantiate(_compose_task("+task=paper_qa", "task.tasks.musique.limit=7", "task.limit=100").task)
    assert qa.names == ["2wiki", "hotpotqa", "musique", "bamboogle"] and qa.metric == "f1"
    ex = qa.load()
    by_source = {s: sum(e.source == s for e in ex) for s in qa.names}
    assert by_source == {"2wiki": 100, "hotpotqa": 100, "musique": 7, "bamboogle": 100}
    with pytest.raises(ValueError, match="split 'train' is not available"):
        qa.load("train")
    mixed = MultiTask(name="mix", tasks=[math.tasks[0], qa.tasks[0]], domains=DOMAINS)
    assert mixed.domain == "mixed" and mixed.metric is None
    with pytest.raises(ValueError, match="has no load"):
        MultiTask(name="bad", tasks={"a": {"name": "a"}}, domains=DOMAINS)
