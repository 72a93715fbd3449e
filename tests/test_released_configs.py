"""Real models scored as the authors score them (issue 23): `experiment=paper_eval` with `preset=paper`
carries the released evaluation settings while the embedded default keeps the tiny model's limits, and
`experiment=et_agent_released` is the released RL recipe scaled to this world. Composition, validation
and building only (a GPU run would use exactly these values)."""

from __future__ import annotations

import os
import subprocess
import sys

from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, SHARED, compose
from run_env import GRADER, GRAMMAR
from etagent.config import build, validate


def test_paper_eval_carries_the_released_evaluation_settings(tmp_path):
    cfg = compose(["experiment=paper_eval"], run_dir=tmp_path)
    validate(cfg)
    assert cfg.rollout.max_turn_tokens >= 4096 and cfg.rollout.max_response_tokens >= 4 * 4096
    assert cfg.rollout.max_result_chars > 256 and cfg.tools.python.max_output_chars > 256
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.top_k, cfg.eval.repetition_penalty) == (0.6, 0.95, 20, 1.1)
    assert cfg.eval.budget == "per_kind_then_answer" and cfg.rollout.max_calls_per_kind == 6
    assert cfg.eval.answer_extraction == "official"
    assert cfg.tools.search.top_k == 5 and cfg.backend.max_model_len is None  # vLLM: the model's own context
    ecfg = build(cfg.eval, "eval")
    assert ecfg.engine_extraction == "official_eval"
    from etagent.evaluation.evaluate import sampling_params

    p = sampling_params(ecfg, cfg.rollout.max_turn_tokens)
    assert (p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (4096, 0.6, 0.95, 20, 1.1)
    # the engine paper_eval builds (everything but its backend and tools)
    eng = instantiate(cfg.rollout, backend=type("B", (), {"tokenizer": None, "generate": lambda *a: []})(),
                      toolset=None, grader=GRADER, grammar=GRAMMAR, system_prompt=None, budget=ecfg.budget,
                      answer_extraction=ecfg.engine_extraction)
    assert (eng.budget, eng.answer_extraction, eng.max_turn_tokens) == ("per_kind_then_answer", "official_eval", 4096)


def test_embedded_default_keeps_the_tiny_limits(tmp_path):
    cfg = compose([], run_dir=tmp_path)
    assert (cfg.rollout.max_response_tokens, cfg.rollout.max_turn_tokens, cfg.rollout.max_result_chars) == (512, 256, 256)
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.top_k, cfg.eval.repetition_penalty) == (0.0, 1.0, 0, 1.0)
    assert cfg.eval.answer_extraction == "strict" and cfg.tools.python.max_output_chars == 256
    assert cfg.run_name == "etagent"
    paper = compose(["preset=paper"], run_dir=tmp_path)  # the preset alone, on any model
    validate(paper)
    assert paper.rollout.max_turn_tokens == 4096 and paper.eval.repetition_penalty == 1.1


def test_cfg_job_prints_the_released_settings():
    """`python -m etagent experiment=paper_eval --cfg job` (the issue's check), in a subprocess."""
    env = dict(os.environ, ETAGENT_SHARED=str(SHARED))
    out = subprocess.run([sys.executable, "-m", "etagent", "experiment=paper_eval", "--cfg", "job"],
                         cwd=CONF.parent, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = OmegaConf.create(out.stdout)
    assert cfg.rollout.max_turn_tokens == 4096
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.repetition_penalty) == (0.6, 0.95, 1.1)
    assert cfg.eval.budget == "per_kind_then_answer" and cfg.eval.answer_extraction == "official"


def test_et_agent_released_is_the_released_rl_recipe_scaled(tmp_path):
    cfg = compose(["experiment=et_agent_released"], run_dir=tmp_path)
    validate(cfg)
    default = compose([], run_dir=tmp_path)
    # reward = correctness + format (sigmas 0), released format rules and answer reader
    assert cfg.reward.sigma_tool == cfg.reward.sigma_len == 0.0 and cfg.reward.mode == "efficiency"
    assert (cfg.reward.format_rules, cfg.reward.answer_extraction, cfg.reward.qa_metric) == ("official", "official", "em")
    # 3 stages, each re-sampling and re-selecting, each with the default schedule's step budget
    stages = OmegaConf.to_container(cfg.schedule.stages, resolve=True)
    base = OmegaConf.to_container(default.schedule.stages, resolve=True)[0]
    assert len(stages) == 3 and all(s["steps"] == base["steps"] and s["sample_questions"] and s["select"]
                                    for s in stages)
    assert all(s["sigma_tool"] == s["sigma_len"] == 0.0 for s in stages)
    # ARPO branching at the released ratio: 8 initial of n = 16 -> 4 of rl.group_size = 8, beam 2
    assert cfg.rollout.strategy == "branching"
    br = cfg.rollout.branching
    assert br.initial_rollouts * 2 == cfg.rl.group_size == 8
    assert (br.beam, br.branch_prob, br.entropy_weight) == (2, 0.5, 0.2)
    # dual-clip PPO, PPO mini-batches of 4 prompts, no KL
    assert cfg.rl.algo.loss.dual_clip_c == 3.0 and cfg.rl.kl_coef == 0.0
    assert cfg.rl.prompts_per_step // cfg.rl.mini_batches == 4
    from etagent.pipeline.stage_rl import rl_components

    schedule, rl, reward, _ = rl_components(cfg, GRAMMAR)
    assert len(schedule.stages) == 3 and rl.algo.loss.dual_clip_c == 3.0 and reward.engine_extraction == "official_reward"
    engine = instantiate(cfg.rollout, backend=type("B", (), {"tokenizer": None, "generate": lambda *a: []})(), toolset=None,
                         grader=GRADER, grammar=GRAMMAR, system_prompt=None)
    assert engine.brancher.n_initial(rl.group_size) == 4 and engine.budget == "total"  # released RL: 6 in all
    header = (CONF / "experiment" / "et_agent_released.yaml").read_text()
    assert "Scaled" in header and "step budget" in header  # what was scaled and why is stated
