"""Reward shaping against hand-computed values, the sigma schedule, and one-rollout scoring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from etagent import protocol
from etagent.records import Example, ToolCall, Trajectory
from etagent.rl.reward import (
    RewardFn,
    group_score,
    reward_components,
    score_components,
    shape_rewards,
    shaping_factors,
    sigma_schedule,
)
from run_env import ENV, GRAMMAR, grader

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_hand_computed_group():
    # calls [0,2,1,1] mean 1 ; lengths [10,20,30,40] mean 25, population std sqrt(125)
    # z = [-1.3416, -0.4472, 0.4472, 1.3416]
    # f_tool = 2/(1+e^{0.2*(k-1)}) = [1.099668, 0.900332, 1, 1]
    # f_len  = 2/(1+e^{0.5*z})     = [1.323374, 1.111340, 0.888660, 0.676626]
    # score  = c * f_tool * f_len + fmt, c = [1,1,0,1], last has invalid format (-1)
    comps = reward_components([[1, 1, 0, 1]], [[0, 2, 1, 1]], [[10, 20, 30, 40]], [[1, 1, 1, 0]])
    assert comps.shape == (1, 4, 4)
    f_tool, f_len = shaping_factors(comps, 0.2, 0.5)
    assert f_tool[0].tolist() == pytest.approx([1.099668, 0.900332, 1.0, 1.0], abs=1e-5)
    assert f_len[0].tolist() == pytest.approx([1.323374, 1.111340, 0.888660, 0.676626], abs=1e-5)
    r = shape_rewards(comps, 0.2, 0.5)
    assert r.shape == (1, 4)
    assert r[0].tolist() == pytest.approx([1.455272, 1.000575, 0.0, -0.323374], abs=1e-5)


def test_zero_length_variance_and_equal_tool_counts_give_plain_correctness():
    comps = reward_components([[1.0, 0.5, 0.0]], [[2, 2, 2]], [[7, 7, 7]], [[1, 1, 0]])
    f_tool, f_len = shaping_factors(comps, 0.2, 0.5)
    assert f_tool.tolist() == [[1.0, 1.0, 1.0]] and f_len.tolist() == [[1.0, 1.0, 1.0]]
    assert shape_rewards(comps, 0.2, 0.5).tolist() == [[1.0, 0.5, -1.0]]


def test_groups_are_independent_and_batched():
    # row 0: equal lengths -> f_len = 1; calls [0, 2] mean 1 -> f_tool [1.099668, 0.900332]
    # row 1: equal calls -> f_tool = 1; lengths [1, 3] -> z [-1, 1] -> f_len [2/(1+e^-.5), 2/(1+e^.5)]
    comps = reward_components([[1, 1], [1, 1]], [[0, 2], [3, 3]], [[5, 5], [1, 3]], [[1, 1], [1, 1]])
    r = shape_rewards(comps, 0.2, 0.5)
    assert r[0].tolist() == pytest.approx([1.099668, 0.900332], abs=1e-5)
    assert r[1].tolist() == pytest.approx([1.244919, 0.755081], abs=1e-5)


def test_correctness_mode_and_sigma_zero():
    comps = reward_components([[1, 0, 0.4]], [[0, 5, 1]], [[3, 90, 20]], [[1, 0, 1]])
    assert shape_rewards(comps, 0.2, 0.5, mode="correctness")[0].tolist() == pytest.approx([1, -1, 0.4])
    # sigma = 0 (the official scripts' setting) switches shaping off as well
    assert shape_rewards(comps, 0.0, 0.0)[0].tolist() == pytest.approx([1, -1, 0.4])
    with pytest.raises(ValueError, match="reward.mode"):
        shape_rewards(comps, 0.2, 0.5, mode="nope")


def test_mask_excludes_padding_from_group_statistics():
    # valid entries: calls [0, 2] and lengths [5, 5]; the padded third entry must not count
    comps = reward_components([[1, 1, 1]], [[0, 2, 100]], [[5, 5, 999]], [[1, 1, 1]])
    mask = torch.tensor([[1, 1, 0]])
    r = shape_rewards(comps, 0.2, 0.5, mask=mask)
    assert r[0].tolist() == pytest.approx([1.099668, 0.900332, 0.0], abs=1e-5)


def test_tensor_inputs_and_shape_errors():
    comps = reward_components(torch.ones(2, 3), torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3))
    assert comps.shape == (2, 3, 4)
    with pytest.raises(ValueError, match="n_calls has shape"):
        reward_components([[1, 1]], [[1, 1, 1]], [[1, 1]], [[1, 1]])
    with pytest.raises(ValueError, match=r"\[prompts, group\]"):
        reward_components([1, 1], [1, 1], [1, 1], [1, 1])


def test_sigma_schedule():
    assert [sigma_schedule(0.2, t, 5) for t in range(5)] == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.0])
    assert sigma_schedule(0.5, 3, 5, "constant") == 0.5
    assert sigma_schedule(0.5, 0, 1) == 0.5
    with pytest.raises(ValueError, match="reward.schedule"):
        sigma_schedule(0.5, 0, 3, "cosine")


MATH_EX = Example(id="m1", question="What is 6*7?", answers=["42"], domain="math", source="t")
QA_EX = Example(id="q1", question="Capital of France?", answers=["Paris", "Paris, France"], domain="qa", source="t")


def test_score_components_one_rollout():
    good = (
        "<think>multiply</think>" + protocol.format_call("python", "print(6*7)")
        + GRAMMAR.format_result("42") + protocol.format_answer("42")
    )
    c = score_components(good, MATH_EX, model_tokens=12, **ENV)
    assert c == {"correctness": 1.0, "n_calls": 1, "length": 12, "format_ok": True, "answer": "42"}
    bad = "<think>no answer tags</think> 42"
    c = score_components(bad, MATH_EX, model_tokens=5, **ENV)
    assert c["correctness"] == 0.0 and c["format_ok"] is False and c["n_calls"] == 0
    qa = protocol.format_answer("the city of Paris")
    # F1 vs "Paris": pred tokens [city, of, paris] (articles dropped) -> p=1/3, r=1 -> 0.5
    assert score_components(qa, QA_EX, model_tokens=3, **ENV)["correctness"] == pytest.approx(0.5)
    assert score_components(qa, QA_EX, model_tokens=3, grader=grader("em"), grammar=GRAMMAR)["correctness"] == 0.0


def test_group_score_uses_one_path():
    responses = [
        "<think>t</think>" + protocol.format_call("python", "print(6*7)") + GRAMMAR.format_result("42")
        + protocol.format_answer("42"),
        "<think>t</think>" + protocol.format_answer("42"),
    ]
    out = group_score(responses, MATH_EX, sigma_tool=0.2, sigma_len=0.5, lengths=[4, 4], **ENV)
    # calls [1, 0] mean 0.5, equal lengths: scores 2/(1+e^{0.1}), 2/(1+e^{-0.1})
    assert [o["score"] for o in out] == pytest.approx([0.950042, 1.049958], abs=1e-6)


def _traj(correct, calls, mask, ok=True):
    text = "<think>t</think>" + "<python>x</python><result>\n1\n</result>" * calls + "<answer>\\boxed{1}</answer>"
    return Trajectory(
        id="t", example_id="e", group_id="g", response_text=text, response_ids=list(range(len(mask))),
        response_mask=mask, tool_calls=[ToolCall("python", "x", "1", "ok")] * calls, score=correct,
        format_errors=[] if ok else ["answer_missing"],
    )


def test_reward_fn_from_trajectories_and_config():
    groups = [[_traj(1.0, 0, [1, 1, 0, 0]), _traj(1.0, 2, [1, 1, 0, 0])]]
    node = OmegaConf.create({"grading": {"qa_metric": "f1"}, "r": OmegaConf.load(CONF / "reward" / "efficiency.yaml")}).r
    fn = instantiate(node, grammar=GRAMMAR)
    assert isinstance(fn, RewardFn) and fn.length_source == "model_tokens" and fn.sigma_tool == 0.2
    comps = fn.components(groups)
    assert comps[0, :, 2].tolist() == [2.0, 2.0]  # model tokens exclude the masked result tokens
    first, last = fn(groups, step=0, total_steps=3), fn(groups, step=2, total_steps=3)
    assert first.rewards[0].tolist() == pytest.approx([1.099668, 0.900332], abs=1e-5)
    assert (first.sigma_tool, first.sigma_len) == (0.2, 0.5) and torch.equal(first.components, comps)
    assert last.rewards[0].tolist() == pytest.approx([1.0, 1.0]) and last.sigma_tool == 0.0  # sigma decayed to 0
    # a stage's own sigma follows the same schedule
    assert fn.sigmas(0, 3, {"sigma_tool": 0.4, "sigma_len": None}) == (0.4, 0.5)
    assert fn.sigmas(1, 3, {"sigma_tool": 0.4}) == pytest.approx((0.2, 0.25))
    assert RewardFn(grammar=GRAMMAR, length_source="all_tokens").components(groups)[0, :, 2].tolist() == [4.0, 4.0]
    from conftest import compose

    base = instantiate(compose(["reward=correctness", "grading.qa_metric=f1"]).reward, grammar=GRAMMAR)  # a delta
    assert base.mode == "correctness"
    out = base(groups, step=0, total_steps=3, sigma0={"sigma_tool": 0.4})
    assert out.rewards[0].tolist() == [1.0, 1.0] and (out.sigma_tool, out.sigma_len) == (0.0, 0.0)  # no shaping
    with pytest.raises(ValueError, match="reward.length_source"):
        RewardFn(grammar=GRAMMAR, length_source="chars")
    with pytest.raises(ValueError, match="equal size"):
        fn.components([[groups[0][0]], groups[0]])
    with pytest.raises(TypeError, match="grammar"):
        RewardFn(mode="efficiency")  # the run's grammar counts the calls: required
