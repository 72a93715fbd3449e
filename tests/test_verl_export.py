"""verl parquet export: schema and value conventions of the authors' reference file, run-dir export, CLI."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etagent.data.benchmarks import load_examples
from etagent.export.__main__ import main as cli_main
from etagent.export.verl import DATA_SOURCES, export_from_run, export_verl, ids_path, read_verl
from etagent.records import Example, write_jsonl
from run_env import GRAMMAR


@pytest.fixture(scope="module")
def reference(shared_dir):
    return pq.read_table(shared_dir / "benchmarks" / "verl_valid_reference.parquet")


def _examples(shared_dir) -> list[Example]:
    bdir = shared_dir / "benchmarks"
    return load_examples(bdir / "aime24" / "test.jsonl", "aime24", "math", limit=3) + load_examples(
        bdir / "2wiki" / "test.jsonl", "2wiki", "qa", limit=3
    )


def _assert_same_types(table: pa.Table, reference: pa.Table) -> None:
    assert table.schema.names == reference.schema.names
    for ours, ref in zip(table.schema, reference.schema):
        assert ours.type == ref.type, f"column {ours.name}: {ours.type} != {ref.type}"
    assert table.schema.equals(reference.schema)  # pandas metadata is not compared


def _assert_value_conventions(rows: list[dict], split: str) -> None:
    for i, r in enumerate(rows):
        assert r["data_source"] == DATA_SOURCES[r["ability"]]
        assert [m["role"] for m in r["prompt"]] == ["system", "user"]
        assert r["prompt"][1]["content"] == r["extra_info"]["question"]
        assert r["reward_model"]["style"] == "rule"
        gt = r["reward_model"]["ground_truth"]
        assert isinstance(gt, list) and gt and all(isinstance(a, str) for a in gt)
        info = r["extra_info"]
        assert info["index"] == i and isinstance(info["index"], int)
        assert info["need_tools_kwargs"] is True and info["split"] == split
        assert r["metadata"] is None


def test_reference_file_follows_the_conventions_we_assert(reference):
    # the checks below describe the reference, so they are fair to apply to our export
    _assert_value_conventions(reference.to_pylist(), "valid")


def test_export_has_exactly_the_reference_schema_and_value_types(tmp_path, shared_dir, reference):
    examples = _examples(shared_dir)
    out = tmp_path / "train.parquet"
    assert export_verl(examples, out, system_prompt=GRAMMAR.system_prompt) == len(examples)
    table = pq.read_table(out)
    _assert_same_types(table, reference)
    rows = table.to_pylist()
    _assert_value_conventions(rows, "train")
    assert {r["data_source"] for r in rows} == {"math_effi_rl", "qa_effi_rl"}
    assert all(r["prompt"][0]["content"] == GRAMMAR.system_prompt for r in rows)
    # aliases are kept as the ground-truth list, questions verbatim
    assert [r["reward_model"]["ground_truth"] for r in rows] == [e.answers for e in examples]
    assert [r["extra_info"]["question"] for r in rows] == [e.question for e in examples]
    assert json.loads(ids_path(out).read_text())["ids"] == [e.id for e in examples]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_reproduces_the_reference_rows(tmp_path, shared_dir, reference):
    ref_rows = reference.to_pylist()
    examples = read_verl(shared_dir / "benchmarks" / "verl_valid_reference.parquet")
    assert len(examples) == len(ref_rows)
    assert {e.domain for e in examples} == {"math", "qa"}
    out = tmp_path / "again.parquet"
    export_verl(examples, out, split="valid", system_prompt=ref_rows[0]["prompt"][0]["content"])
    again = pq.read_table(out)
    _assert_same_types(again, reference)
    assert again.to_pylist() == ref_rows
    # with the sidecar, ids survive a second round trip
    assert [e.id for e in read_verl(out)] == [e.id for e in examples]


def test_options_system_prompt_data_source_start_index(tmp_path, shared_dir, reference):
    examples = _examples(shared_dir)[:2]
    out = tmp_path / "x.parquet"
    export_verl(examples, out, data_source="custom", system_prompt=None, start_index=10, split="stage1")
    table = pq.read_table(out)
    assert table.schema.equals(reference.schema)
    rows = table.to_pylist()
    assert [r["data_source"] for r in rows] == ["custom", "custom"]
    assert [[m["role"] for m in r["prompt"]] for r in rows] == [["user"], ["user"]]
    assert [r["extra_info"]["index"] for r in rows] == [10, 11]
    assert {r["extra_info"]["split"] for r in rows} == {"stage1"}


def test_empty_export_keeps_the_schema(tmp_path, reference):
    out = tmp_path / "empty.parquet"
    assert export_verl([], out, system_prompt=None) == 0
    assert pq.read_table(out).schema.equals(reference.schema)


def test_bad_input_is_rejected(tmp_path):
    e = Example(id="a", question="q", answers=["1"], domain="math", source="s")
    with pytest.raises(ValueError, match="duplicate example id 'a'"):
        export_verl([e, e], tmp_path / "d.parquet", system_prompt=None)
    with pytest.raises(ValueError, match="has no gold answer"):
        export_verl([Example(id="b", question="q", answers=[], domain="qa", source="s")], tmp_path / "e.parquet",
                    system_prompt=None)


# --------------------------------------------------------------------------- run dir


def _fake_run(tmp_path, shared_dir):
    examples = _examples(shared_dir)
    run = tmp_path / "run"
    write_jsonl(run / "world" / "train.jsonl", examples)
    (run / "rl" / "stage_1").mkdir(parents=True)
    (run / "rl" / "stage_1" / "selection.json").write_text(
        json.dumps({"selected_ids": [examples[4].id, examples[0].id], "n_sampled": 6})
    )
    (run / "rl" / "stage_2").mkdir(parents=True)
    lines = [json.dumps(examples[1].id), json.dumps({"id": examples[3].id}), json.dumps({"example_id": examples[5].id})]
    (run / "rl" / "stage_2" / "selected.jsonl").write_text("\n".join(lines) + "\n")
    (run / "rl" / "stage_3").mkdir(parents=True)  # an unfinished stage without a selection is ignored
    return run, examples


def test_export_from_run_writes_one_file_per_stage(tmp_path, shared_dir, reference):
    run, ex = _fake_run(tmp_path, shared_dir)
    written = export_from_run(run, tmp_path / "out" / "et.parquet", system_prompt=GRAMMAR.system_prompt)
    assert sorted(written) == [1, 2]
    assert written[1].name == "et_stage1.parquet" and written[2].name == "et_stage2.parquet"
    s1, s2 = (pq.read_table(written[k]) for k in (1, 2))
    assert s1.schema.equals(reference.schema) and s2.schema.equals(reference.schema)
    assert [r["extra_info"]["question"] for r in s1.to_pylist()] == [ex[4].question, ex[0].question]
    assert [e.id for e in read_verl(written[2])] == [ex[1].id, ex[3].id, ex[5].id]


def test_export_from_run_single_stage_and_errors(tmp_path, shared_dir):
    run, ex = _fake_run(tmp_path, shared_dir)
    out = tmp_path / "s2.parquet"
    assert export_from_run(run, out, stage=2, system_prompt=None) == {2: out}
    assert len(pq.read_table(out)) == 3
    with pytest.raises(ValueError, match="stage 7 not found"):
        export_from_run(run, out, stage=7, system_prompt=None)
    (run / "rl" / "stage_1" / "selection.json").write_text(json.dumps({"selected_ids": ["nope"]}))
    with pytest.raises(ValueError, match=r"selection\.json: 1 id\(s\) not in .*'nope'"):
        export_from_run(run, out, stage=1, system_prompt=None)
    with pytest.raises(FileNotFoundError, match="no stage_<k>"):
        export_from_run(run, out, rl_dir=tmp_path / "missing", system_prompt=None)
    with pytest.raises(FileNotFoundError, match="training examples not found"):
        export_from_run(tmp_path / "no_run", out, system_prompt=None)


def test_cli(tmp_path, shared_dir, capsys, reference):
    run, ex = _fake_run(tmp_path, shared_dir)
    out = tmp_path / "cli.parquet"
    assert cli_main(["verl", "--run-dir", str(run), "--out", str(out), "--stage", "1"]) == 0
    assert str(out) in capsys.readouterr().out
    assert pq.read_table(out).schema.equals(reference.schema)
    assert cli_main(["verl", "--examples", str(run / "world" / "train.jsonl"), "--out", str(out),
                     "--no-system-prompt"]) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == len(ex) and all(len(r["prompt"]) == 1 for r in rows)
    assert cli_main(["verl", "--run-dir", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err
