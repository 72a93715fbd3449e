"""Adding an answer domain = its grading rule (tests/code_domain.py) + one config node under the task's
``domains``, no other file: the JSONL task loads rows of the new domain, the run's grader (built from
the composed config) grades them, and the verl reward (which composes etagent's config with the
same overrides) grades them too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from code_domain import NODE
from conftest import compose
from etagent.runenv import RunEnv

ADD_CODE = [f"+task.domains.code={NODE}"]


def _files(tmp_path: Path) -> dict[str, Path]:
    rows = [{"id": i, "question": f"Print {i}.", "answer": f"print({i})", "domain": "code"} for i in range(4)]
    rows += [{"id": 9, "question": "What is 2+2?", "answer": "4", "domain": "math"}]
    out = {}
    for split in ("train", "test"):
        out[split] = tmp_path / f"{split}.jsonl"
        out[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_a_config_declared_domain_is_loaded_by_the_jsonl_task_and_graded(tmp_path):
    f = _files(tmp_path)
    cfg = compose(["task=jsonl", f"task.train_path={f['train']}", f"task.test_path={f['test']}", "task.domain_field=domain",
                   *ADD_CODE], run_dir=tmp_path)
    task = instantiate(cfg.task)
    test = task.load("test")
    code = [e for e in test if e.domain == "code"]
    assert len(code) == 4 and all(e.meta["metric"] == "exact_code" for e in code)  # the domain's own metric
    assert {e.domain for e in test} == {"code", "math"}
    grader = RunEnv.from_config(cfg).grader
    assert grader.grade(code[1], " print(1) ") == 1.0 and grader.grade(code[1], "print(2)") == 0.0
    assert grader.is_success("code", 1.0) and not grader.is_success("code", 0.9)  # binary rule
    # without the node the same rows are refused, naming the file, line and key
    bare = compose(["task=jsonl", f"task.train_path={f['train']}", f"task.test_path={f['test']}",
                    "task.domain_field=domain"], run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"train\.jsonl:1: task\.domain_field 'domain': domain must be one of \['math', 'qa'\]"):
        instantiate(bare.task).load("test")


def test_a_config_declared_domain_is_graded_by_the_verl_reward():
    from etagent.export.verl_reward import compute_score, compute_score_batch

    text = "<think>t</think><answer>\\boxed{print(1)}</answer>"
    right = compute_score("code", text, ["print(1)"], {"index": 0}, overrides=ADD_CODE)
    assert right["correctness"] == 1.0 and right["score"] == 1.0 and right["format_ok"] == 1.0
    wrong = compute_score("mbpp", text, ["print(2)"], {"index": 0}, domain="code", overrides=ADD_CODE)
    assert wrong["correctness"] == 0.0
    batch = compute_score_batch(["code", "code"], [text, text], [["print(1)"], ["print(2)"]],
                                [{"index": 0}, {"index": 0}], overrides=ADD_CODE)
    assert [b["correctness"] for b in batch] == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"unknown data_source 'code'"):
        compute_score("code", text, ["print(1)"], {"index": 0})  # the default config has no such domain
