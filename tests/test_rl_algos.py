"""RL algorithms as config: advantage estimators and policy losses on hand-computed tensors,
the conf/rl/algo group, and RLOO chosen by one override on the smoke preset in a short RL run."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from conftest import compose
from etagent.rl.advantages import GroupNorm, LeaveOneOut
from etagent.rl.algos import Algorithm
from etagent.rl.losses import PPOClip
from run_env import GRAMMAR

_spec = importlib.util.spec_from_file_location("_curriculum_helpers", Path(__file__).with_name("test_curriculum.py"))
C = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(C)

R = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]])


# --------------------------------------------------------------------------- estimators


def test_grpo_advantage_golden_values():
    a = GroupNorm(eps=0.0)(R)
    s0 = math.sqrt(4 * 0.25 / 3)  # unbiased std of [1, 0, 0, 1]
    s1 = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)  # of [1, 0, 0, 0]
    assert torch.allclose(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / s0)
    assert torch.allclose(a[1], torch.tensor([0.75, -0.25, -0.25, -0.25]) / s1)
    assert torch.equal(a[2], torch.zeros(4))  # equal rewards: exactly 0


def test_dr_grpo_advantage_is_centred_without_std():
    a = GroupNorm(norm_by_std=False)(R)
    assert torch.allclose(a[1], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert torch.equal(a[2], torch.zeros(4))


def test_rloo_advantage_leaves_the_rollout_out_of_its_baseline():
    a = LeaveOneOut()(R)
    assert torch.allclose(a[0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))  # 1 - (0+0+1)/3, 0 - (1+0+1)/3
    assert torch.allclose(a[1], torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    assert torch.equal(a[2], torch.zeros(4))
    with pytest.raises(ValueError, match="group_size"):
        LeaveOneOut()(torch.ones(2, 1))


# --------------------------------------------------------------------------- losses

NEW = torch.log(torch.tensor([[1.5, 1.25, 0.5], [0.5, 1.0, 1.0]]))
OLD = torch.zeros(2, 3)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
ADV = torch.tensor([1.0, -1.0])


def test_ppo_clip_golden_values_and_aggregations():
    loss, st = PPOClip()(NEW, OLD, ADV, MASK)
    # seq 0 (A=+1): max(-r, -clip(r, .8, 1.2)) = -1.2, -1.2, -0.5 ; seq 1 (A=-1, r=.5): max(.5, .8) = .8
    assert loss.item() == pytest.approx((-1.2 - 1.2 - 0.5 + 0.8) / 4)
    assert st["clip_frac"] == pytest.approx(3 / 4)
    seq, _ = PPOClip(agg="seq-mean-token-mean")(NEW, OLD, ADV, MASK)
    assert seq.item() == pytest.approx(((-1.2 - 1.2 - 0.5) / 3 + 0.8) / 2)
    assert PPOClip().denominator(MASK) == 4.0 and PPOClip(agg="seq-mean-token-mean").denominator(MASK) == 2.0
    with pytest.raises(ValueError, match="loss.agg"):
        PPOClip(agg="sum")


def test_dapo_clip_higher_lets_positive_ratios_rise_further():
    loss, st = PPOClip(clip_low=0.2, clip_high=0.28)(NEW, OLD, ADV, MASK)
    # upper bound 1.28: token 0 clipped to 1.28, token 1 (1.25) no longer clipped; the low side is unchanged
    assert loss.item() == pytest.approx((-1.28 - 1.25 - 0.5 + 0.8) / 4)
    assert st["clip_frac"] == pytest.approx(2 / 4)


def test_dual_clip_caps_negative_advantages_golden_values():
    new = torch.log(torch.tensor([[5.0, 0.5], [5.0, 2.0]])).requires_grad_()
    old, mask, adv = torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([-1.0, 1.0])
    plain, _ = PPOClip()(new, old, adv, mask)
    # seq 0 (A=-1): max(r, clip(r)) = 5, 0.8 ; seq 1 (A=+1): -1.2, -1.2
    assert plain.item() == pytest.approx((5.0 + 0.8 - 1.2 - 1.2) / 4)
    dual, st = PPOClip(dual_clip_c=3.0)(new, old, adv, mask)
    # dual clip: the A<0 token at r=5 is capped at -A*c = 3; r=0.5 (0.8 < 3) and A>0 tokens are unchanged
    assert dual.item() == pytest.approx((3.0 + 0.8 - 1.2 - 1.2) / 4)
    assert st["dual_clip_frac"] == pytest.approx(1 / 4)
    (grad,) = torch.autograd.grad(dual, new)
    assert grad[0, 0].item() == 0.0 and grad[0, 1].item() == 0.0  # capped and clipped: no push
    (grad_plain,) = torch.autograd.grad(PPOClip()(new, old, adv, mask)[0], new)
    assert grad_plain[0, 0].item() == pytest.approx(5.0 / 4)  # d(r)/d(log r) = r, token-mean over 4
    same, _ = PPOClip(dual_clip_c=3.0)(NEW, OLD, ADV, MASK)  # no ratio past c: identical to PPO-clip
    assert same.item() == pytest.approx(PPOClip()(NEW, OLD, ADV, MASK)[0].item())
    with pytest.raises(ValueError, match="dual_clip_c"):
        PPOClip(dual_clip_c=1.0)


def test_kl_term_is_added_only_with_a_reference_and_a_coefficient():
    ref = NEW + 0.1
    base, _ = PPOClip()(NEW, OLD, ADV, MASK)
    with_kl, st = PPOClip()(NEW, OLD, ADV, MASK, ref_lp=ref, kl_coef=0.5)
    k3 = math.exp(0.1) - 0.1 - 1.0
    assert st["kl"] == pytest.approx(k3, rel=1e-5)
    assert with_kl.item() == pytest.approx(base.item() + 0.5 * k3, rel=1e-5)


# --------------------------------------------------------------------------- config group


def test_algo_group_builds_each_algorithm(tmp_path):
    from hydra.utils import instantiate

    def algo(name: str) -> Algorithm:
        return instantiate(compose([f"rl/algo={name}"], run_dir=tmp_path).rl.algo)

    assert instantiate(compose([], run_dir=tmp_path).rl.algo) == Algorithm()  # the default is GRPO
    assert algo("grpo") == Algorithm()
    assert algo("rloo") == Algorithm(name="rloo", advantage=LeaveOneOut())
    assert algo("dr_grpo") == Algorithm(name="dr_grpo", advantage=GroupNorm(norm_by_std=False))
    assert algo("dapo") == Algorithm(name="dapo", loss=PPOClip(clip_high=0.28, agg="token-mean"))
    assert algo("grpo_dual_clip") == Algorithm(name="grpo_dual_clip", loss=PPOClip(dual_clip_c=3.0))


def test_a_bad_algorithm_value_fails_naming_the_key(tmp_path):
    from etagent.config.validate import ConfigError, validate
    from etagent.pipeline.stage_rl import rl_components

    bad = compose(["rl.algo.loss.agg=sum"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"rl\.algo\.loss\.agg"):
        validate(bad)  # at start-up, before any stage runs
    with pytest.raises(ConfigError, match="loss.agg"):
        rl_components(bad, GRAMMAR)
    with pytest.raises(ConfigError, match=r"unknown key `rl\.algo\.advantage\.eps`"):
        validate(compose(["rl/algo=rloo", "+rl.algo.advantage.eps=1"], run_dir=tmp_path))  # RLOO has no eps


def test_rloo_by_one_override_on_the_smoke_preset_trains_with_rloo(tmp_path, monkeypatch):
    """`rl/algo=rloo` is the whole change: the stage's components come from config and every step uses RLOO."""
    from etagent.config.validate import validate
    from etagent.pipeline.stage_rl import rl_components
    from etagent.rl.curriculum import run_curriculum
    from etagent.rl.sampling import AllSampler

    calls = {"rloo": [], "grpo": 0}
    real = LeaveOneOut.__call__

    def spy(self, rewards):
        out = real(self, rewards)
        calls["rloo"].append((rewards.clone(), out))
        return out

    monkeypatch.setattr(LeaveOneOut, "__call__", spy)
    monkeypatch.setattr(GroupNorm, "__call__", lambda self, r: calls.__setitem__("grpo", calls["grpo"] + 1))
    cfg = compose(["preset=smoke", "rl/algo=rloo", "rl.bf16=false",
                   "schedule.stages=[{steps:2,sample_questions:6,k:4,select:3}]"], run_dir=tmp_path)
    validate(cfg)  # the start-up check accepts the algo group's keys
    schedule, rl, reward, make_trainer = rl_components(cfg, GRAMMAR)
    assert rl.algo.name == "rloo" and isinstance(rl.algo.advantage, LeaveOneOut)
    assert (rl.group_size, rl.prompts_per_step, len(schedule.stages)) == (4, 4, 1)  # smoke sizes
    policy = tmp_path / "seed"
    tok = C.build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=["<python>print(1+2)</python> the answer is 3", "question 12 34"] * 20, vocab_size=300)
    C.H.tiny_model(vocab=len(tok)).save_pretrained(str(policy))
    tok.save_pretrained(str(policy))
    h = C.Harness()
    summary = run_curriculum(policy, C.H.examples(10), [], schedule, rl, reward, AllSampler(qa_threshold=0.75), tmp_path / "rl",
                             None, None, make_engine=h.make_engine, load_fn=h.load_fn, make_trainer=make_trainer)
    assert summary["stages"][0]["steps"] == 2
    assert len(calls["rloo"]) == 2 and calls["grpo"] == 0  # both steps, only RLOO
    for rewards, adv in calls["rloo"]:
        assert rewards.shape == (4, 4)
        assert torch.allclose(adv, rewards - (rewards.sum(1, keepdim=True) - rewards) / 3)
