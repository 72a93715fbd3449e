"""GRPO trainer: masked loss, advantages, no-op on equal rewards, learning, logging, resume.

Most tests use a scripted rollout engine (deterministic given ``params.seed``) with a
tiny Qwen2 so they check the trainer, not the sampler. ``ScriptedEngine`` and
``tiny_model`` are reused by tests/test_curriculum.py.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from transformers import Qwen2Config, Qwen2ForCausalLM

from etagent.records import Example, ToolCall, Trajectory
from etagent.rl import reward as rw
from etagent.rl.advantages import group_advantages
from etagent.rl.algos import Algorithm
from etagent.rl.grpo import GRPOConfig, GRPOTrainer, data_order
from etagent.rl.losses import PPOClip, clipped_pg_loss
from etagent.rl.logprobs import pack, sequence_logprobs, token_logprobs
from etagent.tracking import Tracker
from etagent.grading import Grader
from etagent.tools.python_sandbox import PythonSandbox
from run_env import DOMAINS, GRADER, GRAMMAR

CONF = Path(__file__).resolve().parents[1] / "conf"
RESULT_IDS = [10, 11, 12]  # stands for an injected "<result>..</result>" block (mask 0)
FIRST_TOKEN = 13  # model tokens are drawn from [FIRST_TOKEN, vocab)


def tiny_model(vocab: int = 48, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                      tie_word_embeddings=True, eos_token_id=0, pad_token_id=0, bos_token_id=0)
    return Qwen2ForCausalLM(cfg)


def examples(n: int, domain: str = "math") -> list[Example]:
    return [Example(id=f"q{i}", question=f"question {i}", answers=["1"], domain=domain, source="test")
            for i in range(n)]


class SyncCounter:
    def __init__(self):
        self.n = 0

    def sync_weights(self, model) -> None:
        self.n += 1


class ScriptedEngine:
    """Deterministic stand-in for RolloutEngine.

    Each rollout: a random first model token, 0-2 "tool calls" each made of a few model
    tokens followed by an injected result block (mask 0), then 1-3 closing model tokens.
    Correct iff the first token is even (so the policy can learn it), unless
    ``correct_fn`` says otherwise. ``fail_on_call`` raises on that call (a kill).
    """

    grader = GRADER  # the run's: the Pareto sampler decides success with it

    def __init__(self, vocab: int = 48, correct_fn=None, fail_on_call: int | None = None,
                 format_error_rate: float = 0.1):
        self.vocab = vocab
        self.format_error_rate = format_error_rate
        self.correct_fn = correct_fn or (lambda first, j, ex: float(first % 2 == 0))
        self.fail_on_call = fail_on_call
        self.backend = SyncCounter()
        self.calls: list[tuple[str, list[str], int | None]] = []

    def rollout(self, examples, n, params, prefixes=None, extra_calls=0, group_prefix="", budget=None):
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("simulated kill")
        self.calls.append((group_prefix, [e.id for e in examples], params.seed))
        rng = random.Random(params.seed)
        out = []
        for ex in examples:
            prompt = [1, 2 + int(ex.id.lstrip("q") or 0) % 7, 3]
            for j in range(n):
                first = rng.randrange(FIRST_TOKEN, self.vocab)
                ids, mask = [first], [1]
                k = rng.randrange(0, 3)
                for _ in range(k):
                    body = [rng.randrange(FIRST_TOKEN, self.vocab) for _ in range(rng.randrange(2, 5))]
                    ids += body + RESULT_IDS
                    mask += [1] * len(body) + [0] * len(RESULT_IDS)
                tail = [rng.randrange(FIRST_TOKEN, self.vocab) for _ in range(rng.randrange(1, 4))]
                ids += tail
                mask += [1] * len(tail)
                lp = [-math.log(self.vocab - FIRST_TOKEN) if m else 0.0 for m in mask]
                out.append(Trajectory(
                    id=f"{group_prefix}{ex.id}/{j}", example_id=ex.id, group_id=f"{group_prefix}{ex.id}",
                    response_text="", prompt_ids=prompt, response_ids=ids, response_mask=mask, logprobs=lp,
                    tool_calls=[ToolCall("python", "x", "y", "ok") for _ in range(k)],
                    score=self.correct_fn(first, j, ex), format_errors=["answer_missing"] if rng.random() < self.format_error_rate else [],
                    behaviour={"redundant": k > 1, "insufficient": k == 0, "n_calls": k}))
        return out


def cfg(**kw) -> GRPOConfig:
    base = dict(lr=3e-3, group_size=4, prompts_per_step=3, mini_batches=2, bf16=False, checkpoint_every=0, seed=0)
    base.update(kw)
    return GRPOConfig(**base)


EFF = rw.RewardFn(grammar=GRAMMAR, mode="efficiency", sigma_tool=0.2, sigma_len=0.5, schedule="linear_decay")


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- pure pieces


def test_group_advantages_hand_values():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3]])
    a = group_advantages(r, norm_by_std=True, eps=0.0)
    std = math.sqrt(sum((x - 0.5) ** 2 for x in (1, 0, 0, 1)) / 3)  # unbiased, as verl
    assert torch.allclose(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert torch.equal(a[1], torch.zeros(4))  # equal rewards -> exactly 0 (no ulp noise)
    assert torch.allclose(group_advantages(r, norm_by_std=False)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_clipped_loss_clip_and_aggregation():
    new = torch.log(torch.tensor([[1.5, 1.0, 0.5], [1.0, 1.0, 1.0]]))
    old = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, st = clipped_pg_loss(new, old, adv, mask, 0.2, 0.2, agg="token-mean")
    # seq 0 (A=+1): max(-r, -clip(r)) = -1.2, -1, -0.5 ; seq 1 (A=-1): r=1 -> 1
    assert loss.item() == pytest.approx((-1.2 - 1.0 - 0.5 + 1.0) / 4)
    assert st["clip_frac"] == pytest.approx(1 / 4)
    loss2, _ = clipped_pg_loss(new, old, adv, mask, 0.2, 0.2, agg="seq-mean-token-mean")
    assert loss2.item() == pytest.approx(((-1.2 - 1.0 - 0.5) / 3 + 1.0) / 2)


def test_data_order_is_a_function_of_step():
    seen = [data_order(10, 3, s, 4) for s in range(5)]
    assert seen == [data_order(10, 3, s, 4) for s in range(5)]
    flat = [i for s in seen for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epoch-wise permutations


def test_logprobs_alignment_and_temperature():
    model = tiny_model()
    b = pack([[1, 2, 3], [4, 5]], [[20, 21, 10, 22], [30]], [[1, 1, 0, 1], [1]])
    lp, _ = token_logprobs(model, b, temperature=0.7)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 20, 21, 10, 22]])).logits[0].float() / 0.7
    ref = torch.log_softmax(logits, -1)
    manual = [ref[2, 20], ref[3, 21], ref[5, 22]]  # token 10 (tool result) excluded
    assert b.gather(lp)[0] == pytest.approx([manual[0].item(), manual[1].item(), 0.0, manual[2].item()], abs=1e-5)
    assert sequence_logprobs(model, b, 0.7)[0].item() == pytest.approx(sum(m.item() for m in manual), abs=1e-4)
    assert b.gather(b.scatter([[1, 2, 3, 4], [5]])) == [[1, 2, 3, 4], [5]]


class FreeLogits(torch.nn.Module):
    """A 'model' whose logits are a parameter: exposes the gradient each target position gets."""

    def __init__(self, B: int, L: int, V: int):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(B, L, V))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.logits)


def test_tool_result_tokens_get_exactly_zero_gradient():
    resp = [[20, 21, 10, 11, 12, 22, 23], [24, 10, 11, 12, 25]]
    mask = [[1, 1, 0, 0, 0, 1, 1], [1, 0, 0, 0, 1]]
    b = pack([[1, 2], [3, 4, 5]], resp, mask)
    model = FreeLogits(2, b.input_ids.shape[1], 40)
    lp, _ = token_logprobs(model, b)
    old = lp.detach() - 0.05  # a ratio != 1 exercises the clip branch too
    loss, _ = clipped_pg_loss(lp, old, torch.tensor([1.0, -2.0]), b.loss_mask, 0.2, 0.2,
                              ref_lp=old + 0.1, kl_coef=0.5)
    loss.backward()
    g = model.logits.grad.abs().sum(-1)  # [B, L]: gradient reaching the logits that score each next id
    for bi, (p_len, m) in enumerate(((2, mask[0]), (3, mask[1]))):
        for j, mj in enumerate(m):
            pos = p_len - 1 + j  # logits at pos score response id j
            if mj:
                assert g[bi, pos] > 0, (bi, j)
            else:
                assert g[bi, pos] == 0.0, (bi, j)  # exactly zero, not just small
    assert g[:, -1].sum() == 0.0  # last position scores nothing


# --------------------------------------------------------------------------- trainer


def test_equal_rewards_make_the_update_a_noop(tmp_path):
    model = tiny_model()
    before = params_of(model)
    # every trajectory correct and format-valid -> equal rewards in every group
    engine = ScriptedEngine(correct_fn=lambda first, j, ex: 1.0, format_error_rate=0.0)
    tr = GRPOTrainer(model, None, engine, rw.RewardFn(grammar=GRAMMAR, mode="correctness"), cfg(kl_coef=0.1), tmp_path, Tracker(None))
    stats = tr.train(examples(5), "rl/test", total_steps=2)
    h = stats["history"]
    assert all(m["reward/zero_var_groups"] == 1.0 and m["adv_abs_mean"] == 0.0 for m in h)
    assert all(m["kl"] == 0.0 and m["grad_norm"] == 0.0 for m in h)
    assert all(m["updates_skipped"] == 2 for m in h)
    after = dict(tr.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_few_steps_change_policy_and_are_logged(tmp_path):
    model = tiny_model()
    before = params_of(model)
    engine = ScriptedEngine()
    probe = pack([[1, 2, 3]], [[14]], [[1]])

    def p_even() -> float:
        with torch.no_grad():
            logits = model(input_ids=probe.input_ids).logits[0, 2].float()
        p = torch.softmax(logits, -1)[FIRST_TOKEN:]
        ids = torch.arange(FIRST_TOKEN, 48)
        return float(p[ids % 2 == 0].sum() / p.sum())

    p0 = p_even()
    tracker = Tracker(tmp_path / "run")
    tr = GRPOTrainer(model, None, engine, EFF, cfg(lr=1e-2, prompts_per_step=4), tmp_path / "out", tracker)
    stats = tr.train(examples(8), "rl/stage1", total_steps=6)
    assert stats["steps"] == 6 and engine.backend.n >= 6  # weights synced to the backend every step
    assert any(not torch.equal(before[n], p) for n, p in tr.model.named_parameters())
    assert p_even() > p0 + 0.05  # learned: correct rollouts start with an even token
    rows = [json.loads(line) for line in (tmp_path / "run/metrics/rl_stage1.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    keys = {"reward/mean", "reward/std", "reward/correctness_mean", "reward/f_tool_mean", "reward/f_len_mean",
            "reward/format_penalty_mean", "reward/zero_var_groups", "sigma_tool", "sigma_len", "tool_calls_mean",
            "model_tokens_mean", "behaviour/redundant_rate", "behaviour/insufficient_rate", "entropy", "kl",
            "clip_frac", "grad_norm", "correct_mean", "format_error_rate"}
    assert keys <= set(rows[0])
    for f in ("f_tool", "f_len"):  # the spread of the shaping factors, not only their (~1) mean
        for r in rows:
            assert r[f"reward/{f}_min"] <= r[f"reward/{f}_mean"] <= r[f"reward/{f}_max"]
            assert 0.0 <= r[f"reward/{f}_group_std"] <= (r[f"reward/{f}_max"] - r[f"reward/{f}_min"]) / 2 + 1e-6
    # sigma decays linearly to 0 over the stage and is logged
    assert [r["sigma_tool"] for r in rows] == pytest.approx([0.2 * (6 - t) / 5 for t in range(1, 7)])
    assert rows[-1]["sigma_len"] == 0.0
    assert all(r["entropy"] > 0 and r["grad_norm"] > 0 for r in rows)
    assert rows[0]["model_tokens_mean"] < rows[0]["response_tokens_mean"]  # tool results not counted


def test_resume_continues_step_count_and_data_order(tmp_path):
    qs = examples(7)
    c = cfg(checkpoint_every=2, prompts_per_step=3)
    full = ScriptedEngine()
    ref = GRPOTrainer(tiny_model(), None, full, EFF, c, tmp_path / "a", None)
    ref.train(qs, "rl/s", total_steps=5)

    killed = ScriptedEngine(fail_on_call=3)  # dies in step 4; the last checkpoint is step 2
    tr1 = GRPOTrainer(tiny_model(), None, killed, EFF, c, tmp_path / "b", None)
    with pytest.raises(RuntimeError, match="simulated kill"):
        tr1.train(qs, "rl/s", total_steps=5)
    tracker = Tracker(tmp_path / "run")
    resumed = ScriptedEngine()
    tr2 = GRPOTrainer(tiny_model(), None, resumed, EFF, c, tmp_path / "b", tracker)
    stats = tr2.train(qs, "rl/s", total_steps=5)
    assert stats["resumed_from"] == 2 and stats["steps"] == 5
    assert [h["step"] for h in stats["history"]] == [3, 4, 5]
    # same questions (and rollout seeds) for steps 3..5 as the uninterrupted run
    assert resumed.calls == full.calls[2:]
    assert killed.calls == full.calls[:3]
    rows = [json.loads(x) for x in (tmp_path / "run/metrics/rl_s.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 4, 5]
    # and the same weights at the end (RNG, optimizer and data order restored)
    a, b = dict(ref.model.named_parameters()), dict(tr2.model.named_parameters())
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    # a different question list cannot silently resume
    with pytest.raises(ValueError, match="different question list"):
        GRPOTrainer(tiny_model(), None, ScriptedEngine(), EFF, c, tmp_path / "b", None).train(qs[:6], "rl/s", 6)


def test_correctness_and_efficiency_rewards_both_run(tmp_path):
    from conftest import compose

    out = {}
    for mode in ("correctness", "efficiency"):
        node = compose([f"reward={mode}", "grading.qa_metric=f1"]).reward  # correctness: a delta of efficiency
        reward = instantiate(node, grammar=GRAMMAR)
        tr = GRPOTrainer(tiny_model(), None, ScriptedEngine(), reward, cfg(bf16=mode == "efficiency"), tmp_path / mode, None)
        out[mode] = tr.train(examples(6), "rl/x", total_steps=2)["history"]
    c, e = out["correctness"], out["efficiency"]
    assert c[0]["sigma_tool"] == 0.0 and e[0]["sigma_tool"] == pytest.approx(0.2)
    assert c[0]["reward/correctness_mean"] == e[0]["reward/correctness_mean"]  # same rollouts
    assert c[0]["reward/mean"] != e[0]["reward/mean"]  # shaping changes the rewards
    assert all(math.isfinite(m["reward/mean"]) and m["grad_norm"] > 0 for m in c + e)


def test_rollout_logprobs_mode_kl_and_lora(tmp_path):
    model = tiny_model()
    base = params_of(model)
    c = cfg(old_logprobs="rollout", kl_coef=0.05, lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0,
                                                        "target_modules": ["q_proj", "v_proj"]},
            algo=Algorithm(loss=PPOClip(agg="seq-mean-token-mean")), checkpoint_every=1)
    tr = GRPOTrainer(model, None, ScriptedEngine(), EFF, c, tmp_path, None)
    h = tr.train(examples(4), "rl/lora", total_steps=2)["history"]
    assert h[-1]["kl"] > 0 and all(m["grad_norm"] > 0 for m in h)
    # only adapters train; the checkpoint holds the adapter only
    assert (tmp_path / "checkpoints/step-000002/adapter.safetensors").exists()
    merged = tr.save_policy(tmp_path / "final")
    assert (merged / "config.json").exists()
    reloaded = Qwen2ForCausalLM.from_pretrained(str(merged))
    changed = [n for n, p in reloaded.named_parameters() if not torch.equal(p, base[n])]
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)


def test_config_yaml_matches_dataclass():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        node = compose(config_name=None, overrides=["+rl=grpo", "+seed=5"])
    c = instantiate(node.rl)
    assert isinstance(c, GRPOConfig) and c.seed == 5 and c.lora.enabled is False
    assert c.algo == Algorithm()  # the YAML default algorithm is the dataclass default (GRPO)
    with pytest.raises(ValueError, match="loss_agg"):
        GRPOConfig(algo={"loss": {"_target_": "etagent.rl.losses.PPOClip", "agg": "sum"}})
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)


def test_recomputed_logprobs_match_the_hf_backend_convention():
    """old_logprobs=rollout is only valid if the backend's log-probs use our convention (softmax(logits/T))."""
    from etagent.backends.base import SamplingParams
    from etagent.backends.hf import HFBackend
    from etagent.models.tokenizer import build_tokenizer

    tok = build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=["<python>print(1+2)</python> the answer is 3", "question 12 34"] * 20, vocab_size=300)
    model = tiny_model(vocab=len(tok)).eval()
    prompts = [[1, 5, 9, 7], [3, 4]]
    comps = HFBackend(model, tok).generate(prompts, SamplingParams(n=2, temperature=0.7, max_new_tokens=12, seed=3))
    flat = [(p, c) for p, cs in zip(prompts, comps) for c in cs]
    b = pack([p for p, _ in flat], [c.ids for _, c in flat], [[1] * len(c.ids) for _, c in flat])
    with torch.no_grad():
        lp, _ = token_logprobs(model, b, temperature=0.7)
    for got, (_, c) in zip(b.gather(lp), flat):
        assert got == pytest.approx(c.logprobs, abs=1e-4)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batches_accumulate_to_the_mini_batch_gradient(tmp_path, agg):
    grads = {}
    for micro in (0, 3):
        tr = GRPOTrainer(tiny_model(), None, ScriptedEngine(), EFF, cfg(micro_batch_size=micro, algo=Algorithm(loss=PPOClip(agg=agg))),
                         tmp_path / str(micro), None)
        seen = []
        real_step = tr.optimizer.step

        def step(*a, _real=real_step, _seen=seen, _tr=tr, **k):
            _seen.append([p.grad.detach().clone() for p in _tr.params])
            return _real(*a, **k)

        tr.optimizer.step = step
        tr.train(examples(5), "rl/m", total_steps=1)
        grads[micro] = seen
    assert len(grads[0]) == len(grads[3]) == 2  # two mini-batches, one optimizer step each
    for g0, g3 in zip(grads[0], grads[3]):
        assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g0, g3))


def test_integration_real_engine_hf_backend(tmp_path):
    """GRPO with the real RolloutEngine + HFBackend (shared module) on a tiny model and an echo tool."""
    import itertools

    from etagent.backends.hf import HFBackend
    from etagent.models.tokenizer import build_tokenizer
    from etagent.rollout.engine import RolloutEngine
    from etagent.tools.base import ToolResult, ToolSet

    class Echo:
        spec = PythonSandbox.spec
        name = "python"

        def run_batch(self, queries):
            return [ToolResult("ok", q[::-1], 0.0) for q in queries]

        def close(self):
            pass

    tok = build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=["<python>print(1+2)</python><result>3</result> <answer>\\boxed{3}</answer>"] * 20,
                          vocab_size=300)
    model = tiny_model(vocab=len(tok))
    before = params_of(model)
    flip = itertools.count()

    class Flip(Grader):  # varied rewards
        def grade(self, example, answer):
            return float(next(flip) % 3 == 0)

        __call__ = grade

    tools = ToolSet({"python": Echo()})
    engine = RolloutEngine(HFBackend(model, tok), tools, Flip(DOMAINS, "f1", 0.75), tools.grammar,
                           max_response_tokens=40, max_turn_tokens=20, system_prompt=None)
    tracker = Tracker(tmp_path / "run")
    tr = GRPOTrainer(model, tok, engine, EFF, cfg(lr=1e-2, max_response_tokens=32, checkpoint_every=1),
                     tmp_path / "out", tracker)
    stats = tr.train(examples(4), "rl/int", total_steps=2)
    assert stats["steps"] == 2 and engine.backend.model is tr.model  # the backend samples the trained module
    assert engine.max_response_tokens == 32
    assert any(not torch.equal(before[n], p) for n, p in tr.model.named_parameters())
    rows = [json.loads(x) for x in (tmp_path / "run/metrics/rl_int.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0 < r["model_tokens_mean"] <= r["response_tokens_mean"] <= 32 + 40 for r in rows)
    assert (tmp_path / "out/checkpoints/step-000002/model.safetensors").exists()
