"""Curriculum RL: stages sample -> select -> GRPO -> save_pretrained -> dev eval, with markers and resume.

Uses the scripted rollout engine of tests/test_grpo.py on a tiny Qwen2 saved with the
real tokenizer, so the stage loop, checkpoints and policy hand-off are real.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from etagent.models.tokenizer import build_tokenizer
from etagent.rl.curriculum import Schedule, StageSpec, run_curriculum, sample_pool
from etagent.rl.grpo import GRPOConfig
from etagent.rl.reward import RewardFn
from etagent.rl.sampling import AllSampler, ParetoSampler, RandomSampler
from etagent.tracking import Tracker
from run_env import GRAMMAR

_spec = importlib.util.spec_from_file_location("_grpo_helpers", Path(__file__).with_name("test_grpo.py"))
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """A tiny scratch policy saved like every etagent checkpoint (model + tokenizer)."""
    path = tmp_path_factory.mktemp("policy") / "seed"
    tok = build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=["<python>print(1+2)</python> the answer is 3", "question 12 34"] * 20, vocab_size=300)
    H.tiny_model(vocab=len(tok)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def rl_cfg(**kw) -> GRPOConfig:
    base = dict(lr=5e-3, group_size=4, prompts_per_step=2, mini_batches=1, bf16=False, checkpoint_every=1)
    base.update(kw)
    return GRPOConfig(**base)


def schedule(n_stages: int = 2, **kw) -> Schedule:
    stage = {"steps": 2, "sample_questions": 6, "k": 4, "select": 3, "sigma_tool": 0.2, "sigma_len": 0.5}
    return Schedule(stages=[dict(stage) for _ in range(n_stages)], seed=1, **kw)


class Harness:
    """make_engine / load_fn / evaluate_fn that record what the curriculum asked for."""

    def __init__(self, engines: list | None = None, **engine_kw):
        self.engines_made: list = []
        self.pending = list(engines or [])
        self.loaded: list[str] = []
        self.evals: list[str] = []
        self.engine_kw = engine_kw

    def make_engine(self, model, tok):
        e = self.pending.pop(0) if self.pending else H.ScriptedEngine(vocab=model.config.vocab_size, **self.engine_kw)
        self.engines_made.append(e)
        return e

    def load_fn(self, path):
        from etagent.models.factory import load_policy

        self.loaded.append(str(path))
        return load_policy(path, device="cpu", dtype="float32")

    def evaluate(self, model, tok, dev, name):
        self.evals.append(name)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[1, 2, 3, 14]])).logits[0, 2].float()
        return {"dev_score": float(torch.log_softmax(logits, -1)[14]), "n": len(dev)}


def run(policy, out, harness, sched=None, sampler=None, tracker=None, rl=None):
    return run_curriculum(policy, H.examples(10), H.examples(3), sched or schedule(), rl or rl_cfg(),
                          RewardFn(grammar=GRAMMAR), sampler or ParetoSampler(count=4, qa_threshold=0.75), out, tracker,
                          harness.evaluate,
                          make_engine=harness.make_engine, load_fn=harness.load_fn)


def test_stages_train_save_evaluate_and_rerun_skips(policy, tmp_path):
    tracker = Tracker(tmp_path / "run")
    h = Harness()
    out = tmp_path / "rl"
    summary = run(policy, out, h, tracker=tracker)
    assert summary["final_policy"] == str(out / "stage_2" / "final")
    assert h.loaded == [str(policy), str(policy), str(out / "stage_1" / "final")]  # stage 2 starts from stage 1
    assert h.evals == ["rl/stage0", "rl/stage1", "rl/stage2"]
    for k in (1, 2):
        sdir = out / f"stage_{k}"
        assert (sdir / "final" / "config.json").exists() and (sdir / "final" / "tokenizer_config.json").exists()
        assert (sdir / ".done.json").exists() and (sdir / "selection.json").exists()
        sel = json.loads((sdir / "selection.json").read_text())
        assert sel["n_sampled"] == 6 and 1 <= len(sel["selected_ids"]) <= 3  # stage's select=3 overrides count=4
        st = summary["stages"][k - 1]
        assert st["steps"] == 2 and "dev_score" in st["dev"]
        # the engine re-sampled K=4 per pool question with this stage's policy, then trained on the selection
        calls = h.engines_made[k - 1].calls
        assert calls[0][0] == f"sample{k}/" and len(calls[0][1]) == 6
        trained = {q for c in calls[1:] for q in c[1]}
        assert trained <= set(sel["selected_ids"])
    metrics = {p.name for p in (tmp_path / "run" / "metrics").iterdir()}
    assert {"rl_stage0_dev.jsonl", "rl_stage1.jsonl", "rl_stage1_select.jsonl", "rl_stage1_dev.jsonl",
            "rl_stage2.jsonl"} <= metrics
    # rerun: every stage is done -> nothing is loaded, sampled or trained
    h2 = Harness()
    again = run(policy, out, h2)
    assert h2.loaded == [] and h2.engines_made == [] and h2.evals == []
    assert again["final_policy"] == summary["final_policy"]
    assert [s["steps"] for s in again["stages"]] == [2, 2]


def test_interrupted_stage_resumes_from_checkpoint_and_selection(policy, tmp_path):
    out = tmp_path / "rl"
    # stage 2's engine dies at its 3rd call: sampling, step 1 (checkpointed), step 2 -> killed
    vocab = json.loads((policy / "config.json").read_text())["vocab_size"]
    h = Harness(engines=[H.ScriptedEngine(vocab=vocab), H.ScriptedEngine(vocab=vocab, fail_on_call=2)])
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(policy, out, h)
    assert (out / "stage_1" / ".done.json").exists() and not (out / "stage_2" / ".done.json").exists()
    sel_before = (out / "stage_2" / "selection.json").read_text()
    h2 = Harness()
    summary = run(policy, out, h2)
    assert h2.loaded == [str(out / "stage_1" / "final")]  # stage 1 skipped, stage 2 restarted from its start policy
    calls = h2.engines_made[0].calls
    assert all(not c[0].startswith("sample") for c in calls) and len(calls) == 1  # no re-sampling, only step 2
    assert (out / "stage_2" / "selection.json").read_text() == sel_before
    st2 = summary["stages"][1]
    assert st2["resumed_from"] == 1 and st2["steps"] == 2
    # the resumed step 2 draws the questions an uninterrupted run would (data order of step index 1)
    assert h2.engines_made[0].calls[0][1] == _expected_step_questions(out, step=1)
    assert h.engines_made[1].calls[1][1] == _expected_step_questions(out, step=0)


def _expected_step_questions(out: Path, step: int) -> list[str]:
    from etagent.rl.grpo import data_order

    ids = json.loads((out / "stage_2" / "selection.json").read_text())["selected_ids"]
    return [ids[i] for i in data_order(len(ids), rl_cfg().seed, step, rl_cfg().prompts_per_step)]


@pytest.mark.parametrize("sampler", [RandomSampler(count=3, qa_threshold=0.75, seed=0), AllSampler(qa_threshold=0.75)],
                         ids=["random", "all"])
def test_ablation_samplers_run(policy, tmp_path, sampler):
    h = Harness()
    s = schedule(1, eval_before=False)
    s.stages[0].steps = 1
    summary = run(policy, tmp_path / "rl", h, sched=s, sampler=sampler)
    st = summary["stages"][0]
    assert st["sampler"] == sampler.name
    assert st["n_selected"] == (3 if sampler.name == "random" else 6)
    assert h.evals == ["rl/stage1"]


def test_empty_selection_falls_back_or_skips(policy, tmp_path):
    s = schedule(1, eval_before=False)
    s.stages[0].steps = 1
    h = Harness(correct_fn=lambda first, j, ex: 1.0)  # all rollouts right: Pareto's mixed filter drops all
    st = run(policy, tmp_path / "a", h, sched=s)["stages"][0]
    assert st["fallback_all_sampled"] and st["n_selected"] == 0 and st["steps"] == 1
    s_skip = schedule(1, eval_before=False, on_empty="skip")
    h2 = Harness(correct_fn=lambda first, j, ex: 1.0)
    st2 = run(policy, tmp_path / "b", h2, sched=s_skip)["stages"][0]
    assert st2["skipped"] and len(h2.engines_made[0].calls) == 1  # sampled, nothing trained
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(str(policy)).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(tmp_path / "b" / "stage_1" / "final")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_parsing():
    s = Schedule(stages=[{"epochs": 3, "k": 4}])
    assert s.stages[0].num_steps(10, 4, 99) == 8  # ceil(3 * 10 / 4)
    assert StageSpec().num_steps(10, 4, 99) == 99
    with pytest.raises(ValueError, match=r"stages\[0\].*unknown key"):
        Schedule(stages=[{"stpes": 3}])
    with pytest.raises(ValueError, match="on_empty"):
        Schedule(on_empty="never")
    assert sample_pool(10, 4, 0, 1) == sample_pool(10, 4, 0, 1) != sample_pool(10, 4, 0, 2)
    assert sample_pool(10, None, 0, 1) == list(range(10))
