"""verl reward module: compute_score, group shaping, and agreement with etagent's own reward."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from etagent import grading, protocol
from etagent.export import verl_reward
from etagent.export.verl_reward import compute_score, compute_score_batch, shape_group_scores
from etagent.records import Example, Trajectory
from etagent.rl.reward import RewardFn, group_score
from run_env import ENV, GRADER, GRAMMAR

TOOL = "<think>compute</think><python>print(6*7)</python><result>\n42\n</result>"
RIGHT = TOOL + "<answer>The answer is \\boxed{42}</answer>"
WRONG = "<think>guess</think><answer>\\boxed{41}</answer>"
SHORT = "<think>7</think><answer>\\boxed{42}</answer>"
TWO_CALLS = TOOL + "<search>six times seven</search><result>\n42\n</result><answer>\\boxed{42}</answer>"
NO_TAGS = "I think it is \\boxed{42}."


def test_compute_score_math_components():
    r = compute_score("math_effi_rl", RIGHT, ["42"], {"index": 0, "question": "6*7?"})
    assert r["score"] == 1.0 and r["correctness"] == r["acc"] == 1.0
    assert r["n_calls"] == 1.0 and r["format_ok"] == 1.0 and r["format_penalty"] == 0.0
    assert r["model_tokens"] > 0
    assert all(isinstance(v, float) for v in r.values())  # numpy-friendly for verl's metrics
    w = compute_score("math_effi_rl", WRONG, ["42"])
    assert (w["score"], w["correctness"], w["n_calls"]) == (0.0, 0.0, 0.0)
    # a boxed answer without an answer block earns no correctness: format penalty only
    n = compute_score("math_effi_rl", NO_TAGS, "42")
    assert (n["correctness"], n["format_ok"], n["format_penalty"], n["score"]) == (0.0, 0.0, -1.0, -1.0)
    # equivalent forms via math-verify
    assert compute_score("math_effi_rl", "<think>t</think><answer>\\boxed{\\frac{1}{2}}</answer>", ["0.5"])["score"] == 1.0


def test_compute_score_qa_accepts_verl_ground_truth_arrays():
    gt = np.array(["New York City", "NYC"], dtype=object)  # what verl passes after reading parquet
    r = compute_score("qa_effi_rl", "<think>t</think><answer>\\boxed{New York}</answer>", gt, {"index": np.int64(3)})
    assert r["correctness"] == pytest.approx(grading.qa_f1("New York", ["New York City", "NYC"]))
    assert 0 < r["score"] < 1
    assert compute_score("qa_effi_rl", "<think>t</think><answer>\\boxed{NYC}</answer>", gt)["score"] == 1.0
    em = compute_score("qa_effi_rl", "<think>t</think><answer>\\boxed{New York}</answer>", gt, qa_metric="em")
    assert em["correctness"] == 0.0


def test_data_source_mapping_and_errors():
    assert compute_score("aime24", SHORT, ["42"])["score"] == 1.0
    assert compute_score("bamboogle", "<think>t</think><answer>\\boxed{Paris}</answer>", ["Paris"])["score"] == 1.0
    assert compute_score("my_set", SHORT, ["42"], domain="math")["score"] == 1.0
    with pytest.raises(ValueError, match="unknown data_source 'my_set'"):
        compute_score("my_set", SHORT, ["42"])
    with pytest.raises(ValueError, match="bad ground_truth"):
        compute_score("math_effi_rl", SHORT, [])
    # extra keyword arguments (reward_kwargs meant for the batch function) are accepted
    assert compute_score("math_effi_rl", SHORT, ["42"], sigma_tool=0.3)["score"] == 1.0


def test_compute_score_matches_etagent_single_rollout_reward():
    ex = Example(id="m", question="6*7?", answers=["42"], domain="math", source="t")
    for text in (RIGHT, WRONG, SHORT, TWO_CALLS, NO_TAGS, ""):
        ours = compute_score("math_effi_rl", text, ["42"])
        theirs = group_score([text], ex, sigma_tool=0.2, sigma_len=0.5, mode="correctness", **ENV)[0]
        assert ours["score"] == pytest.approx(theirs["score"])
        assert (ours["n_calls"], ours["model_tokens"]) == (theirs["n_calls"], theirs["length"])


def test_model_tokens_sources(tmp_path):
    r = compute_score("math_effi_rl", RIGHT, ["42"], {"index": 0, "model_tokens": 17})
    assert r["model_tokens"] == 17.0
    assert compute_score("math_effi_rl", RIGHT, ["42"], model_tokens=5)["model_tokens"] == 5.0
    # exact count with a tokenizer given by path (verl: reward_kwargs.tokenizer_path)
    from etagent.models.tokenizer import build_tokenizer, save_tokenizer

    tok = build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=[RIGHT, TWO_CALLS, WRONG] * 20, vocab_size=300)
    save_tokenizer(tok, tmp_path / "tok")
    r = compute_score("math_effi_rl", TWO_CALLS, ["42"], tokenizer_path=str(tmp_path / "tok"))
    ids, mask = GRAMMAR.encode_response(tok, TWO_CALLS)
    assert r["model_tokens"] == protocol.model_token_length(mask) < len(ids)


def _trajectory(text: str, ex: Example, length: int, tid: str) -> Trajectory:
    answer = grading.block_answer(text, GRAMMAR)  # as the rollout engine credits it
    return Trajectory(
        id=tid, example_id=ex.id, group_id=ex.id, response_text=text,
        response_ids=list(range(length)), response_mask=[1] * length,
        tool_calls=[{"kind": s.kind, "query": s.content, "result": "", "status": "ok"}
                    for s in GRAMMAR.parse(text).calls()],
        answer=answer, score=GRADER.grade(ex, answer),
        format_errors=[e.code for e in GRAMMAR.validate(text)],
    )


def test_batch_matches_etagent_reward_on_the_same_rollouts():
    """compute_score_batch (verl) == RewardFn (etagent's GRPO) on identical groups."""
    rng = random.Random(0)
    texts = [RIGHT, WRONG, SHORT, TWO_CALLS, NO_TAGS]
    examples = [Example(id=f"q{i}", question="6*7?", answers=["42"], domain="math", source="t") for i in range(3)]
    groups, flat = [], []
    for qi, ex in enumerate(examples):
        g = []
        for j in range(4):
            text, length = rng.choice(texts), rng.randint(5, 60)
            g.append(_trajectory(text, ex, length, f"{ex.id}-{j}"))
            flat.append((qi, text, length, len(g) - 1))
        groups.append(g)
    fn = RewardFn(grammar=GRAMMAR, mode="efficiency", sigma_tool=0.2, sigma_len=0.5, schedule="constant")
    expected = fn(groups).rewards.tolist()
    rng.shuffle(flat)  # verl batches need not keep groups contiguous
    out = compute_score_batch(
        ["math_effi_rl"] * len(flat),
        [f[1] for f in flat],
        [np.array(["42"])] * len(flat),
        [{"index": np.int64(f[0]), "model_tokens": f[2]} for f in flat],
        sigma_tool=0.2, sigma_len=0.5,
    )
    for (qi, _, _, j), r in zip(flat, out):
        assert r["score"] == pytest.approx(expected[qi][j], abs=1e-5)
    # correctness mode == the baseline reward
    base = RewardFn(grammar=GRAMMAR, mode="correctness", sigma_tool=0.0, sigma_len=0.0, schedule="constant")
    expected = base(groups).rewards.tolist()
    out = compute_score_batch(["math_effi_rl"] * len(flat), [f[1] for f in flat], [["42"]] * len(flat),
                              [{"index": f[0], "model_tokens": f[2]} for f in flat], mode="correctness")
    for (qi, _, _, j), r in zip(flat, out):
        assert r["score"] == pytest.approx(expected[qi][j], abs=1e-6)


def test_shaping_prefers_fewer_calls_and_shorter_answers_within_a_group():
    out = compute_score_batch(["math_effi_rl"] * 3, [SHORT, RIGHT, TWO_CALLS], [["42"]] * 3,
                              [{"index": 7}] * 3)
    s = [r["score"] for r in out]
    assert s[0] > s[1] > s[2] > 0
    bare = compute_score_batch(["math_effi_rl"] * 3, [SHORT, RIGHT, TWO_CALLS], [["42"]] * 3,
                               [{"index": 7}] * 3, return_dict=False)
    assert bare == pytest.approx(s)
    assert sum(s) / 3 == pytest.approx(1.0, abs=0.35)  # factors are 1 at the group mean


def test_shape_group_scores_inputs_and_unequal_groups():
    items = [
        {"correctness": 1, "n_calls": 0, "model_tokens": 10, "format_ok": 1, "extra_info": {"index": "a"}},
        {"correctness": 1, "n_calls": 3, "model_tokens": 50, "format_ok": 1, "extra_info": {"index": "a"}},
        {"correctness": 1, "n_calls": 1, "model_tokens": 20, "format_ok": 1, "index": "b"},
        {"correctness": 0, "n_calls": 1, "model_tokens": 20, "format_ok": 0, "index": "b"},
        {"correctness": 1, "n_calls": 2, "model_tokens": 30, "format_ok": 1, "index": "b"},
    ]
    mixed = shape_group_scores(items)
    # each group on its own gives the same numbers (padding is masked out of the statistics)
    alone_a = shape_group_scores(items[:2], group_key=None)
    alone_b = shape_group_scores(items[2:], group_key=None)
    assert mixed == pytest.approx(alone_a + alone_b)
    assert mixed[3] == -1.0  # wrong and malformed: 0 * f + (-1)
    cols = {k: [it[k] for it in items[2:]] for k in ("correctness", "n_calls", "model_tokens", "format_ok", "index")}
    assert shape_group_scores(cols) == pytest.approx(alone_b)
    assert shape_group_scores([]) == []
    with pytest.raises(ValueError, match="item 0 has no 'uid'"):
        shape_group_scores(items, group_key="uid")
    with pytest.raises(ValueError, match=r"item 0 lacks \['format_ok'\]"):
        shape_group_scores([{"correctness": 1, "n_calls": 0, "model_tokens": 1, "index": 0}])
    with pytest.raises(ValueError, match="3 data_sources, 2 solutions"):
        compute_score_batch(["qa_effi_rl"] * 3, ["a", "b"], [["x"]] * 3)


def test_loadable_by_path_like_verl_and_scores_reference_rows(shared_dir):
    # verl: importlib.util.spec_from_file_location("custom_module", custom_reward_function.path)
    path = Path(verl_reward.__file__)
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = pq.read_table(shared_dir / "benchmarks" / "verl_valid_reference.parquet").to_pandas()
    for _, row in rows.iloc[[0, 20, 50, 90]].iterrows():  # qa, math, qa, math
        gold = row["reward_model"]["ground_truth"]  # a numpy array, as verl hands it over
        good = f"<think>ok</think><answer>\\boxed{{{gold[0]}}}</answer>"
        r = module.compute_score(row["data_source"], good, gold, row["extra_info"])
        assert r["score"] == 1.0, (row["data_source"], gold[0])
        bad = module.compute_score(row["data_source"], "<think>t</think><answer>\\boxed{zzz}</answer>", gold, row["extra_info"])
        assert bad["score"] == 0.0
