"""experiments/mechanism/stage_types.py: per question type and policy over seeds, and what an ASE set holds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from fake_run import make_question_run

from etagent.records import Example, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("stage_types", ROOT / "experiments" / "mechanism" / "stage_types.py")
stage_types = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_types)

QUESTIONS = [("q0", "calc"), ("q1", "calc"), ("q2", "hop1"), ("q3", "hop1")]


def _sweep(root: Path) -> Path:
    # seed 0: calc 1 of 2 right with 2 and 1 calls; seed 1: calc 2 of 2 right with 2 calls each
    for seed, outcomes in ((0, [(True, 2), (False, 1), (True, 1), (True, 2)]),
                           (1, [(True, 2), (True, 2), (False, 1), (True, 1)])):
        run = make_question_run(root / "full" / f"seed_{seed}", seed=seed, overrides=["experiment=full"],
                                questions=QUESTIONS, outcomes=outcomes, policy="rl_stage_1")
        write_jsonl(run / "world" / "train.jsonl", [Example(id=f"t{i}", question="x", answers=["1"], domain="math",
                                                            source="synthetic-math", split="train", meta={"type": t})
                                                    for i, t in enumerate(["calc", "hop1"])])
        rows = [{"example_id": "t0", "tool_calls": [{}, {}], "meta": {"strategy": "sample"}},
                {"example_id": "t1", "tool_calls": [{}], "meta": {"strategy": "modify_redundancy"}},
                {"example_id": "t1", "tool_calls": [{}, {}], "meta": {"strategy": "sample"}}]
        (run / "flywheel").mkdir()
        (run / "flywheel" / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_policy_types_are_averaged_over_seeds_and_the_ase_set_described(tmp_path: Path):
    res = stage_types.collect(_sweep(tmp_path), ["full"], ["full"])
    cells = {(r["type"], r["policy"]): r for r in res["policies"]}
    calc, hop1 = cells[("calc", "rl_stage_1")], cells[("hop1", "rl_stage_1")]
    assert calc["seeds"] == [0, 1]
    assert calc["correct"] == pytest.approx((0.5 + 1.0) / 2) and calc["calls"] == pytest.approx((1.5 + 2.0) / 2)
    assert hop1["correct"] == pytest.approx((1.0 + 0.5) / 2) and hop1["calls"] == pytest.approx((1.5 + 1.0) / 2)
    ase = {r["type"]: r for r in res["ase_sets"]}
    assert ase["calc"]["trajectories"] == 2 and ase["calc"]["calls_hist"] == {2: 2} and ase["calc"]["edited"] == 0
    assert ase["hop1"]["trajectories"] == 4 and ase["hop1"]["calls_hist"] == {1: 2, 2: 2}
    assert ase["hop1"]["edited"] == pytest.approx(0.5) and ase["hop1"]["mean_calls"] == pytest.approx(1.5)
    md = stage_types.markdown(res)
    assert "| calc | full | rl_stage_1 | 0,1 | 75.0 |" in md and "| hop1 | full | 0,1 | 4 | 1: 2, 2: 2 | 1.50 | 50.0 |" in md


def test_missing_inputs_fail_naming_the_file(tmp_path: Path, capsys):
    sweep = _sweep(tmp_path)
    (sweep / "full" / "seed_1" / "flywheel" / "sft.jsonl").unlink()
    assert stage_types.main([str(sweep), "--groups", "full", "--ase-sets", "full", "--out", str(tmp_path / "o")]) == 2
    assert "seed_1/flywheel/sft.jsonl is missing" in capsys.readouterr().err
    (sweep / "full" / "seed_0" / "flywheel" / "sft.jsonl").write_text('{"example_id": "t0"}\n{"example_id"\n')
    with pytest.raises(ValueError, match=r"seed_0/flywheel/sft.jsonl:2: "):  # file and line named
        stage_types.collect(sweep, ["full"], ["full"])
    (sweep / "full" / "seed_0" / "world" / "test.jsonl").write_text('{"id": "q0"\n')
    with pytest.raises(ValueError, match=r"seed_0/world/test.jsonl:1: "):  # file and line named
        stage_types.collect(sweep, ["full"], [])
