"""Evaluation metrics against hand-computed values, the markdown table and the radar chart."""

from __future__ import annotations

import struct
import zlib

import pytest

from etagent import protocol
from etagent.evaluation.metrics import compute_metrics, metrics_table_markdown, per_question_correctness
from etagent.evaluation.radar import radar_chart
from etagent.records import Example, PlanStep, ToolCall, Trajectory
from run_env import ENV, GRAMMAR

M1 = Example(id="m1", question="8453*89?", answers=["752317"], domain="math", source="syn",
             plan=[PlanStep("python", "print(8453*89)", "752317")])
M2 = Example(id="m2", question="2+3?", answers=["5"], domain="math", source="syn", plan=[])
Q1 = Example(id="q1", question="Capital?", answers=["Paris"], domain="qa", source="syn",
             plan=[PlanStep("search", "capital", "Paris")])
EXAMPLES = {e.id: e for e in (M1, M2, Q1)}


def traj(tid, ex, calls, correct, tokens, answer="x"):
    text = "".join(protocol.format_call(k, q) + GRAMMAR.format_result(r) for k, q, r, _ in calls)
    text += protocol.format_answer(answer)
    return Trajectory(
        id=tid, example_id=ex.id, group_id=ex.id, response_text=text,
        response_ids=list(range(tokens + 3)), response_mask=[1] * tokens + [0] * 3,
        tool_calls=[ToolCall(k, q, r, s) for k, q, r, s in calls], score=correct,
    )


def four():
    return [
        traj("t1", M1, [("python", "print(8453*89)", "752317", "ok"),
                        ("python", "print(8453*89)", "752317", "ok"),  # duplicate -> redundant
                        ("python", "import time", "", "timeout"),
                        ("python", "print(x)", "Traceback NameError", "error")], 1.0, 10),
        traj("t2", M2, [], 1.0, 5),
        traj("t3", M1, [("python", "print(8453*89", "SyntaxError", "error")], 0.0, 20),
        traj("t4", Q1, [("search", "capital", "Search error: no results about Paris", "ok")], 0.5, 4),
    ]


def test_hand_computed_metrics():
    m = compute_metrics(four(), EXAMPLES, **ENV)
    # c = [1, 1, 0, .5]; calls = [4, 0, 1, 1]; paper-failed = [2, 0, 1, 1]; tokens = [10, 5, 20, 4]
    expected = {
        "n": 4,
        "n_questions": 3,
        "correctness": 2.5 / 4,
        "efficiency": (1 / 4 + 1 + 0 + 0.5) / 4,  # zero-call trajectory counts its correctness
        "tool_productivity": 2.5 / 6,
        "conciseness": 3 / 4,  # over all samples (official radar): only t1 has a redundant call
        "call_success_rate": 3 / 6,
        "exec_score": (1 / 2 + 1 + 0 + 0.5 / 1) / 4,  # t4's ok result contains "error": failed
        "mean_calls": 1.5,
        "model_tokens_mean": 39 / 4,
        "length_score": 1000 * (1 / 10 + 1 / 5 + 0 + 0.5 / 4) / 4,
        "redundant_call_share": 1 / 6,
        "insufficient_share_of_wrong": 1 / 2,  # wrong: t3 (insufficient), t4 (erroneous)
        "redundant_rate": 1 / 4,
        "insufficient_rate": 1 / 4,
        "aborted_rate": 2 / 4,
        "erroneous_rate": 1 / 4,
        "budget_refusal_rate": 0.0,
    }
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v), k


def test_zero_calls_everywhere():
    trajs = [traj("a", M2, [], 1.0, 3), traj("b", M2, [], 0.0, 0)]
    m = compute_metrics(trajs, EXAMPLES, **ENV)
    assert m["efficiency"] == pytest.approx(0.5) == m["correctness"]
    assert m["tool_productivity"] is None and m["call_success_rate"] is None and m["redundant_call_share"] is None
    assert m["exec_score"] == pytest.approx(0.5)
    assert m["length_score"] == pytest.approx(1000 * (1 / 3 + 0) / 2)
    assert m["conciseness"] == 1.0


def test_all_wrong():
    trajs = [traj("a", M1, [("python", "print(1)", "1", "ok")], 0.0, 4), traj("b", M1, [], 0.0, 2)]
    m = compute_metrics(trajs, EXAMPLES, **ENV)
    assert m["correctness"] == 0.0 and m["efficiency"] == 0.0 and m["tool_productivity"] == 0.0
    assert m["conciseness"] == 1.0 and m["exec_score"] == 0.0 and m["length_score"] == 0.0
    assert m["insufficient_rate"] == 1.0 and m["insufficient_share_of_wrong"] == 1.0
    assert m["erroneous_rate"] == 0.0


def test_uses_stored_labels_and_judge_hook():
    ts = four()
    ts[1].behaviour = {"n_redundant": 1, "redundant": True, "insufficient": False, "aborted": False,
                       "erroneous": False}
    m = compute_metrics(ts, EXAMPLES, concise_fn=lambda t, ex: t.id == "t1", **ENV)
    assert m["conciseness"] == 0.5 and m["redundant_rate"] == 0.5  # t1 and the stored t2 label
    assert m["conciseness_judge"] == 0.25  # judge accepts t1 only, out of all 4 samples


def test_per_question_and_errors():
    assert per_question_correctness(four()) == {"m1": 0.5, "m2": 1.0, "q1": 0.5}
    with pytest.raises(ValueError, match="unknown example 'm1'"):
        compute_metrics(four(), {"m2": M2}, **ENV)


def test_markdown_table():
    md = metrics_table_markdown({"base": compute_metrics(four(), EXAMPLES, **ENV),
                                 "none": compute_metrics([traj("a", M2, [], 1.0, 3)], EXAMPLES, **ENV)})
    lines = md.strip().splitlines()
    assert lines[0].startswith("| name | N | Correct % | Effi % | TP |")
    assert lines[2].startswith("| base | 4 | 62.5 | 43.8 | 0.417 | 75.0 |")
    assert "| none | 1 | 100.0 | 100.0 | - |" in lines[3]


def _png_ok(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    return struct.unpack(">II", data[16:24])


def test_radar_chart_png(tmp_path):
    runs = {"base": compute_metrics(four(), EXAMPLES, **ENV), "et-agent": compute_metrics(four()[:2], EXAMPLES, **ENV)}
    out = radar_chart(runs, tmp_path / "sub" / "radar.png")
    assert out == tmp_path / "sub" / "radar.png"
    w, h = _png_ok(out)
    assert w > 100 and h > 100
    with pytest.raises(ValueError, match="no runs"):
        radar_chart({}, tmp_path / "x.png")


def test_eval_config_instantiates():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from etagent.evaluation import EvalConfig

    node = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "eval" / "default.yaml")
    cfg = instantiate(OmegaConf.create({"grading": {"qa_metric": "f1"}, "eval": node}).eval)
    assert isinstance(cfg, EvalConfig) and cfg.n_samples == 1 and cfg.compare == []
    with pytest.raises(ValueError, match="eval.qa_metric"):
        EvalConfig(qa_metric="bleu")
