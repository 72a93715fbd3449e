"""A fake but complete run directory (every file the pipeline writes that the report reads).

Used by test_report, test_compare and test_notebook: no model, no training, ~0.3 s.
Values are made up but consistent (RL improves correctness and cuts calls), so the
report's "what changed" line and the sweep aggregation can be checked exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from etagent.utils.io import atomic_write_json, atomic_write_text

POLICIES = ("seed", "ase", "rl_stage_1", "rl_stage_2")
DOMAINS = ("math", "qa")

CONFIG_YAML = """\
run_name: etagent
seed: {seed}
resume: false
device: auto
stages: [world, seed, flywheel, ase, rl, eval, report]
export: null
paths:
  run_dir: ${{hydra:runtime.output_dir}}
  shared_dir: ${{oc.env:ETAGENT_SHARED,${{hydra:runtime.cwd}}/../shared}}
grading:
  qa_metric: f1
  qa_threshold: 0.75
tools:
  python:
    _target_: etagent.tools.python_sandbox.PythonSandbox
  search:
    _target_: etagent.tools.search.build_search_tool
model:
  _target_: etagent.models.factory.ModelSpec
  name: tiny
  kind: scratch
  path: null
  size: tiny
  dtype: float32
task:
  _target_: etagent.data.synthetic.SyntheticTask
  name: synthetic
  seed: ${{seed}}
  n_train: 300
  n_dev: 20
  n_test: 30
  domains:
    math: {{_target_: etagent.grading.DomainRule, name: math, metrics: [math], binary: true}}
    qa: {{_target_: etagent.grading.DomainRule, name: qa, metrics: [f1, em], binary: false}}
flywheel:
  _target_: etagent.flywheel.loop.FlywheelConfig
  strategies: [modify_redundancy, global_refine, self_correct, hint_injection]
  max_rounds: 2
  samples_per_question: 4
sampling:
  _target_: etagent.rl.sampling.ParetoSampler
  count: 16
  qa_threshold: 0.75
reward:
  _target_: etagent.rl.reward.RewardFn
  mode: efficiency
  sigma_tool: 0.2
  sigma_len: 0.5
  schedule: linear_decay
schedule:
  _target_: etagent.rl.curriculum.Schedule
  eval_before: true
  stages:
    - steps: 3
      sigma_tool: ${{reward.sigma_tool}}
    - steps: 3
      sigma_tool: ${{reward.sigma_tool}}
eval:
  _target_: etagent.evaluation.EvalConfig
  split: test
  n_samples: 1
  qa_metric: ${{grading.qa_metric}}
  compare: {compare}
"""


def fake_metrics(level: float, calls: float) -> dict[str, Any]:
    """Every key of etagent.evaluation.metrics.compute_metrics, derived from two knobs."""
    return {
        "n": 30, "n_questions": 30, "correctness": level, "efficiency": level / max(calls, 1.0),
        "tool_productivity": level / calls if calls else None, "conciseness": min(1.0, 0.4 + level / 2),
        "call_success_rate": 0.9, "exec_score": level * 0.9, "mean_calls": calls,
        "model_tokens_mean": 40 + 20 * calls, "length_score": 1000 * level / (40 + 20 * calls),
        "redundant_call_share": 0.3 / (1 + level), "insufficient_share_of_wrong": 0.5,
        "redundant_rate": 0.4 * (1 - level), "insufficient_rate": 0.2 * (1 - level),
        "aborted_rate": 0.1 * (1 - level), "erroneous_rate": 0.05 * (1 - level),
    }


def _rl_line(stage: str, step: int, k: int) -> dict[str, Any]:
    x = (k - 1) * 3 + step
    return {"stage": stage, "step": step, "time": 0.5 * x, "reward/mean": 0.2 + 0.05 * x, "reward/std": 0.3,
            "reward/zero_var_groups": 0.25, "sigma_tool": 0.2 * (3 - step) / 2, "sigma_len": 0.5 * (3 - step) / 2,
            "correct_mean": 0.3 + 0.04 * x, "tool_calls_mean": 2.0 - 0.1 * x, "model_tokens_mean": 80 - 2 * x,
            "reward/f_tool_mean": 1.0, "reward/f_len_mean": 1.0, "reward/format_penalty_mean": -0.05,
            "reward/f_tool_min": 0.8 + 0.02 * x, "reward/f_tool_max": 1.2 - 0.02 * x, "reward/f_tool_group_std": 0.1,
            "reward/f_len_min": 0.7, "reward/f_len_max": 1.3, "reward/f_len_group_std": 0.15 - 0.01 * x,
            "kl": 0.001 * x, "ppo_kl": 0.0005 * x, "entropy": 2.0 - 0.1 * x, "clip_frac": 0.05, "format_error_rate": 0.1,
            "behaviour/redundant_rate": 0.3 - 0.02 * x, "behaviour/insufficient_rate": 0.2,
            "behaviour/aborted_rate": 0.05, "behaviour/erroneous_rate": 0.1}


def make_run(run_dir: Path, *, seed: int = 0, levels: Sequence[float] = (0.3, 0.4, 0.5, 0.6),
             calls: Sequence[float] = (2.0, 1.6, 1.4, 1.2), overrides: Sequence[str] | None = None,
             compare: Sequence[str] = (), policies: Sequence[str] = POLICIES, flywheel: bool = True,
             trajectories: bool = False) -> Path:
    """Write a finished run with the given per-policy correctness/calls; returns ``run_dir``."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "config.yaml", CONFIG_YAML.format(seed=seed, compare=json.dumps(list(compare))))
    choices = {"model": "tiny", "task": "synthetic", "flywheel": "full", "sampling": "pareto", "reward": "efficiency",
               "schedule": "default", "experiment": None, "preset": "smoke", "logger": "none",
               "hydra/launcher": "basic"}
    atomic_write_text(run_dir / ".hydra" / "hydra.yaml",
                      "hydra:\n  runtime:\n    choices:\n"
                      + "".join(f"      {k}: {'null' if v is None else v}\n" for k, v in choices.items()))
    ov = list(overrides if overrides is not None else ["preset=smoke", f"seed={seed}"])
    atomic_write_text(run_dir / ".hydra" / "overrides.yaml", "".join(f"- {o}\n" for o in ov))
    summaries = {
        "world": {"task": "synthetic", "n_train": 300, "n_test": 30, "params": 2400000},
        "seed": {"sequences": 300, "loss_last": 1.2},
        "flywheel": {"rounds": 2, "pool": 120, "sft": 90},
        "ase": {"sequences": 90, "loss_last": 0.9},
        "rl": {"stages": 2, "final": "rl/stage_2/final"},
        "eval": {"policies": len(policies), "final": policies[-1], "objective": levels[len(policies) - 1] / 1.2},
    }
    for i, (stage, s) in enumerate(summaries.items()):
        atomic_write_json(run_dir / stage / ".done.json", {"summary": s, "wall_s": 1.5 + i, "finished_at": 1.0 + i})
    atomic_write_json(run_dir / "summary.json",
                      {"run_dir": str(run_dir), "wall_s": 30.0, "stages": summaries, "objective": 0.5})
    atomic_write_json(run_dir / "world" / "teacher_stats.json", {
        d: {"trajectories": 150, "calls_per_traj": 1.8, "redundant_call_share": 0.2, "aborted_call_share": 0.05,
            "redundant_rate": 0.3, "insufficient_rate": 0.2, "aborted_rate": 0.1, "erroneous_rate": 0.05,
            "wrong_rate": 0.3} for d in ("all", *DOMAINS)})
    if flywheel:  # its plot costs ~1 s; sweeps skip it
        _flywheel(run_dir / "flywheel")
    overall = {}
    for p, lv, c in zip(policies, levels, calls):
        m = {"policy": p, "overall": fake_metrics(lv, c),
             "by_domain": {"math": fake_metrics(lv + 0.05, c - 0.2), "qa": fake_metrics(lv - 0.05, c + 0.2)}}
        atomic_write_json(run_dir / "eval" / p / "metrics.json", m)
        atomic_write_text(run_dir / "eval" / p / "trajectories.jsonl",
                          _trajectories(run_dir, policies.index(p)) if trajectories else "")
        overall[p] = m["overall"]
    atomic_write_json(run_dir / "eval" / "summary.json", {"policies": list(policies), "overall": overall})
    lines: dict[str, list[dict[str, Any]]] = {"seed": [], "ase": []}
    for step in range(1, 6):
        lines["seed"].append({"stage": "seed", "step": step, "time": step, "loss": 3.0 / step, "lr": 1e-3})
        lines["ase"].append({"stage": "ase", "step": step, "time": step, "loss": 1.5 / step, "lr": 1e-3})
    for k in (1, 2):
        name = f"rl/stage{k}"
        lines[name] = [_rl_line(name, s, k) for s in (1, 2, 3)]
        lines[f"{name}/select"] = [{"stage": f"{name}/select", "step": 0, "n_selected": 12, "n_sampled": 24}]
        lines[f"{name}/dev"] = [{"stage": f"{name}/dev", "step": 3, **fake_metrics(0.5, 1.3)}]
        _samples(run_dir / "rl" / f"stage_{k}", k)
        atomic_write_json(run_dir / "rl" / f"stage_{k}" / ".done.json", {"summary": {
            "stage": k, "name": name, "n_sampled": 24, "n_selected": 12, "sample_correct_mean": 0.4,
            "sample_tool_calls_mean": 1.7, "sample_mixed_share": 0.5, "steps": 3, "reward_mean_first": 0.25,
            "reward_mean_last": 0.35, "dev": fake_metrics(0.5, 1.3)}, "wall_s": 4.0, "finished_at": 2.0})
    lines["pipeline/eval"] = [{"stage": "pipeline/eval", "step": None, "time": 9.0, "wall_s": 3.0}]
    for stage, ls in lines.items():
        atomic_write_text(run_dir / "metrics" / f"{stage.replace('/', '_')}.jsonl",
                          "".join(json.dumps(x) + "\n" for x in ls))
    return run_dir


def _trajectories(run_dir: Path, k: int, n: int = 6) -> str:
    """world/test.jsonl + one policy's eval trajectories: question i is right under policy k when
    (i + k) % 4 == 0, so questions flip between policies; math uses python, qa search."""
    from etagent.records import Example, ToolCall, Trajectory, write_jsonl

    exs = [Example(id=f"t{i}", question=f"What is {i} + {i}?", answers=[str(2 * i)], domain=DOMAINS[i % 2],
                   source=f"synthetic-{DOMAINS[i % 2]}", split="test") for i in range(n)]
    write_jsonl(run_dir / "world" / "test.jsonl", exs)
    lines = []
    for i, ex in enumerate(exs):
        tool = "python" if ex.domain == "math" else "search"
        calls = [ToolCall(tool, f"{i}+{i}", str(2 * i), "ok")] * (1 + (i + k) % 2)
        right = (i + k) % 4 == 0
        answer = str(2 * i) if right else "7"
        text = "<think>add</think>\n" + "".join(f"<{tool}>{c.query}</{tool}>\n<result>{c.result}</result>\n"
                                               for c in calls) + f"<answer>\\boxed{{{answer}}}</answer>"
        beh = {"n_calls": len(calls), "n_redundant": len(calls) - 1, "n_aborted": 0, "n_budget": 0,
               "redundant": len(calls) > 1, "aborted": False, "insufficient": False, "erroneous": not right}
        t = Trajectory(id=f"eval:{ex.id}#0", example_id=ex.id, group_id=f"eval:{ex.id}", response_text=text,
                       response_ids=[1] * 20, response_mask=[1] * 20, tool_calls=calls, answer=answer,
                       score=float(right), finish_reason="answer", behaviour=beh, meta={"sample": 0})
        lines.append(t.to_json() + "\n")
    return "".join(lines)


def _samples(sdir: Path, k: int, n_questions: int = 8, group: int = 4) -> None:
    """rl/stage_k/samples.jsonl (only the fields the Pareto plot reads) + selection.json."""
    rows = []
    for q in range(n_questions):
        for j in range(group):
            calls = [{"kind": "python", "query": "1", "result": "1", "status": "ok"}] * ((q * j + k) % 3)
            rows.append({"id": f"sample{k}/q{q}#{j}", "example_id": f"q{q}", "group_id": f"sample{k}/q{q}",
                         "tool_calls": calls, "correct": float((q + j) % (q % 3 + 2) == 0)})
    atomic_write_text(sdir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(sdir / "selection.json", {"selected_ids": [f"q{q}" for q in range(1, n_questions, 2)],
                                                "n_sampled": n_questions, "n_selected": n_questions // 2,
                                                "fallback_all_sampled": False})


def _flywheel(fdir: Path) -> None:
    from etagent.flywheel.report import write_round_report

    rows = []
    for r in (1, 2):
        rows.append({"round": r, "questions": 50, "samples": 200, "sample_correct": 0.3 + 0.1 * r,
                     "sample_mean_calls": 2.0 - 0.2 * r, "accepted": 20 * r, "rejected": 10, "added": 18 * r,
                     "pool_size": 40 * r, "pool_correct": 1.0, "pool_mean_calls": 1.5, "pool_redundant": 0.1,
                     "pool_insufficient": 0.0, "pool_aborted": 0.02, "pool_erroneous": 0.01, "sft_size": 35 * r,
                     "wall_s": 3.0, "strategies": {"modify_redundancy": {"proposed": 10, "accepted": 8, "rejected": 2,
                                                                         "added": 8, "rejected_by": {"answer": 2}}}})
    write_round_report(rows, fdir)


def make_sweep(root: Path, groups: Mapping[str, Sequence[float]]) -> Path:
    """A Hydra-like multirun dir: ``root/<ts>/experiment=<g>,seed=<i>/`` with the final correctness given."""
    ts = Path(root) / "2026-01-01_00-00-00"
    atomic_write_text(ts / "multirun.yaml", "hydra: {}\n")
    for g, finals in groups.items():
        for i, final in enumerate(finals):
            ov = [f"experiment={g}", f"seed={i}"]
            make_run(ts / ",".join(ov), seed=i, levels=(0.3, 0.4, 0.5, final), overrides=ov, flywheel=False)
    return ts


def make_question_run(run_dir: Path, *, seed: int, overrides: Sequence[str], questions: Sequence[tuple[str, str]],
                      outcomes: Sequence[tuple[bool, int]], policy: str = "rl_stage_2") -> Path:
    """A run whose final ``policy`` answered test question ``questions[i] = (id, type)`` with
    ``outcomes[i] = (right, calls)``: world/test.jsonl, eval/<policy>/trajectories.jsonl and the
    metrics compute_metrics gives for them (so per-question values average to the run's metrics)."""
    from etagent.evaluation.metrics import compute_metrics
    from etagent.records import Example, ToolCall, Trajectory, write_jsonl

    run_dir = Path(run_dir)
    exs = [Example(id=q, question=f"What is {i} + {i}?", answers=[str(2 * i)], domain="math", source="synthetic-math",
                   split="test", meta={"type": qtype}) for i, (q, qtype) in enumerate(questions)]
    write_jsonl(run_dir / "world" / "test.jsonl", exs)
    trajs = []
    for i, (ex, (right, n_calls)) in enumerate(zip(exs, outcomes)):
        calls = [ToolCall("python", f"print({i}+{i})", str(2 * i), "ok")] * n_calls
        answer = str(2 * i) if right else "-1"
        text = "<think>add</think>\n" + "".join(f"<python>{c.query}</python>\n<result>{c.result}</result>\n"
                                               for c in calls) + f"<answer>\\boxed{{{answer}}}</answer>"
        trajs.append(Trajectory(id=f"eval:{ex.id}#0", example_id=ex.id, group_id=f"eval:{ex.id}", response_text=text,
                                response_ids=[1] * (10 + 5 * n_calls), response_mask=[1] * (10 + 5 * n_calls),
                                tool_calls=calls, answer=answer, score=float(right), finish_reason="answer",
                                meta={"sample": 0}))
    write_jsonl(run_dir / "eval" / policy / "trajectories.jsonl", trajs)
    from run_env import ENV

    overall = compute_metrics(trajs, {e.id: e for e in exs}, **ENV)
    atomic_write_json(run_dir / "eval" / policy / "metrics.json", {"policy": policy, "overall": overall, "by_domain": {}})
    atomic_write_json(run_dir / "eval" / "summary.json", {"policies": [policy], "overall": {policy: overall}})
    atomic_write_text(run_dir / "config.yaml", CONFIG_YAML.format(seed=seed, compare="[]"))
    atomic_write_text(run_dir / ".hydra" / "overrides.yaml", "".join(f"- {o}\n" for o in [*overrides, f"seed={seed}"]))
    return run_dir
