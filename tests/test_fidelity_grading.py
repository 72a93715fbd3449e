"""Method fidelity, grading and loading robustness (issue 13): token-less gold answers,
boolean/numeric gold, task YAMLs naming their fields, loader errors naming what they found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from etagent import grading
from etagent.data.benchmarks import load_examples
from etagent.records import Example

CONF = Path(__file__).resolve().parents[1] / "conf" / "task"


@pytest.mark.parametrize("gold", ["(A)", "A", "a."])
def test_letter_choice_gold_is_graded_by_exact_match(gold):
    ex = Example(id="q", question="Which option?", answers=[gold], domain="qa", source="t")
    for metric in ("f1", "em"):
        assert grading.grade(ex, "A", metric) == 1.0
        assert grading.grade(ex, "(a)", metric) == 1.0
        assert grading.grade(ex, "B", metric) == 0.0
        assert grading.grade(ex, "the", metric) == 0.0  # also normalises to "": not a match
    assert grading.qa_f1("Paris", ["(A)", "Paris"]) == 1.0  # other aliases keep token F1


def test_boolean_and_numeric_gold_load_as_strings(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in (
        {"question": "Is Paris in France?", "answer": True},
        {"question": "How many?", "answer": 3.0},
        {"question": "Which?", "answer": [False, 7]},
    )))
    exs = load_examples(f, "b", "qa")
    assert [e.answers for e in exs] == [["True"], ["3"], ["False", "7"]]
    assert grading.grade(exs[0], "true", "em") == 1.0


def test_loader_errors_name_file_row_and_fields_found(tmp_path):
    f = tmp_path / "odd.jsonl"
    f.write_text(json.dumps({"query": "What?", "gold": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"odd\.jsonl:1: missing question.*fields found: \['gold', 'query'\].*question_fields"):
        load_examples(f, "odd", "qa")
    with pytest.raises(ValueError, match=r"odd\.jsonl:1: missing key 'answer' \(fields found: \['gold', 'query'\]; set task.answer_field"):
        load_examples(f, "odd", "qa", question_fields=["query"])
    (ex,) = load_examples(f, "odd", "qa", question_fields=["query"], answer_field="gold")  # one override away
    assert (ex.question, ex.answers) == ("What?", ["x"])


def test_every_benchmark_task_yaml_names_its_fields():
    nodes = {p.stem: OmegaConf.load(p) for p in CONF.glob("*.yaml")}
    bench = {n: node for n, node in nodes.items() if node.get("_target_") == "etagent.data.benchmarks.BenchmarkTask"}
    assert len(bench) == 7
    for name, node in bench.items():
        assert list(node.question_fields) and node.answer_field == "answer" and "id_field" in node, name
