"""Curriculum behaviour-calibration RL: stages of (sample K -> select questions -> GRPO -> save -> dev eval).

Each stage of the ``schedule`` config group starts from the previous stage's policy
(the first from ``policy_path``), re-samples ``k`` rollouts per question on a subset of
the training questions with that policy, lets the sampler (``sampling=pareto|random|all``)
choose the questions, trains GRPO on them, saves ``<out_dir>/stage_<k>/final`` with
``save_pretrained`` and evaluates it on dev.

Resume: a stage is finished iff its marker ``stage_<k>/.done.json`` exists (written last);
a rerun skips finished stages, reuses an interrupted stage's saved selection
(``selection.json``) and lets the trainer continue from its last checkpoint.

Departures from the official scripts: stage length is given in GRPO steps (``steps``;
or ``epochs`` over the selected questions, like the official 3 epochs per stage); the
question pool per stage is a seeded subset (``sample_questions``) so a CPU stage stays
short; the sigma of each stage is explicit config (official scripts ship sigma = 0). If
the sampler selects nothing (all groups all-right or all-wrong), ``on_empty=sampled``
trains on every sampled question instead: ``selection.json`` then says
``"selected_by": "fallback_all_sampled"`` (and ``n_selected: 0``), the report's RL table
shows it and the verl export flags those rows (``extra_info.selection``); ``skip`` leaves
the policy as is.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from etagent.utils import markers
from etagent.records import Example, write_jsonl
from etagent.rl.grpo import GRPOConfig, GRPOTrainer, as_reward_fn
from etagent.utils.io import atomic_write_json, read_json

ON_EMPTY = ("sampled", "skip")


@dataclass
class StageSpec:
    """One curriculum stage (an item of ``schedule.stages``)."""

    steps: int | None = None  # GRPO steps; None -> from epochs, else rl.max_steps
    epochs: float | None = None  # passes over the selected questions (official: 3)
    sample_questions: int | None = None  # training questions re-sampled; None = all
    k: int = 8  # rollouts per question for selection
    select: int | None = None  # sampler.count for this stage; None = the sampler's own
    sigma_tool: float | None = None  # None = reward.sigma_tool
    sigma_len: float | None = None  # None = reward.sigma_len
    name: str | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"schedule stage {self.name or ''}: steps must be >= 1, got {self.steps}")
        if self.k < 1:
            raise ValueError(f"schedule stage {self.name or ''}: k must be >= 1, got {self.k}")

    def num_steps(self, n_questions: int, prompts_per_step: int, default: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * n_questions / prompts_per_step))
        return int(default)


@dataclass
class Schedule:
    """The ``schedule`` config group (``conf/schedule/*.yaml``)."""

    stages: list = field(default_factory=lambda: [{}])
    eval_before: bool = True  # dev eval of the starting policy (logged as stage 0)
    on_empty: Literal["sampled", "skip"] = "sampled"  # sampled | skip
    sample_batch: int = 64  # questions per rollout call while sampling
    save_samples: bool = True  # keep stage_<k>/samples.jsonl (the sampled trajectories)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.on_empty not in ON_EMPTY:
            raise ValueError(f"schedule.on_empty must be one of {ON_EMPTY}, got {self.on_empty!r}")
        if not self.stages:
            raise ValueError("schedule.stages is empty")
        specs = []
        for i, s in enumerate(self.stages):
            if isinstance(s, StageSpec):
                specs.append(s)
                continue
            s = _plain(s)
            if not isinstance(s, Mapping):
                raise ValueError(f"schedule.stages[{i}] must be a mapping, got {s!r}")
            unknown = set(s) - set(StageSpec.__dataclass_fields__)
            if unknown:
                raise ValueError(f"schedule.stages[{i}]: unknown key(s) {sorted(unknown)} "
                                 f"(allowed: {sorted(StageSpec.__dataclass_fields__)})")
            specs.append(StageSpec(**s))
        self.stages = specs


def _plain(x: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def _coerce(obj: Any, cls):
    if isinstance(obj, cls):
        return obj
    d = _plain(obj)
    return cls(**{k: v for k, v in dict(d).items() if not str(k).startswith("_")})


def sample_pool(n: int, count: int | None, seed: int, stage: int) -> list[int]:
    """Seeded subset of question indices for a stage's re-sampling (sorted; all if count is None)."""
    if count is None or count >= n:
        return list(range(n))
    return sorted(np.random.default_rng([seed, stage]).choice(n, size=count, replace=False).tolist())


def sample_and_select(engine, pool: Sequence[Example], spec: StageSpec, sampler, rl: GRPOConfig,
                      sched: Schedule, stage: int, samples_path: Path | None = None) -> dict[str, Any]:
    """Roll out ``spec.k`` per pool question, run the sampler, return ids and stats."""
    from etagent.backends.base import SamplingParams

    trajs = []
    for start in range(0, len(pool), max(1, sched.sample_batch)):
        chunk = list(pool[start : start + sched.sample_batch])
        params = SamplingParams(n=spec.k, temperature=rl.temperature, top_p=rl.top_p,
                                seed=(sched.seed * 100_003 + stage * 1_009 + start) % (2**31))
        if rl.max_response_tokens is not None:
            params = params.replace(max_new_tokens=int(rl.max_response_tokens))
        trajs.extend(engine.rollout(chunk, spec.k, params, group_prefix=f"sample{stage}/"))
    by_group: dict[str, list[Any]] = {}
    for t in trajs:
        by_group.setdefault(t.group_id, []).append(t)
    groups = [by_group.get(f"sample{stage}/{ex.id}", []) for ex in pool]
    tool_counts = [[t.num_calls for t in g] for g in groups]
    correctness = [[float(t.correct) for t in g] for g in groups]
    domains = [ex.domain for ex in pool]
    sel = copy.copy(sampler)
    if spec.select is not None and hasattr(sel, "count"):
        sel.count = int(spec.select)
    idx = list(sel.select(tool_counts, correctness, domains))
    fallback = False
    if not idx and sched.on_empty == "sampled":
        idx, fallback = list(range(len(pool))), True
    if samples_path is not None and sched.save_samples:
        write_jsonl(samples_path, trajs)
    all_c = [c for g in correctness for c in g]
    return {
        "selected_ids": [pool[i].id for i in idx],
        "n_sampled": len(pool),
        "n_selected": 0 if fallback else len(idx),
        "fallback_all_sampled": fallback,
        # never pass a fallback off as the sampler's choice (report column, verl export flag)
        "selected_by": "fallback_all_sampled" if fallback else getattr(sel, "name", type(sel).__name__),
        "sample_correct_mean": float(np.mean(all_c)) if all_c else 0.0,
        "sample_tool_calls_mean": float(np.mean([c for g in tool_counts for c in g])) if trajs else 0.0,
        "sample_mixed_share": float(np.mean([len(set(c)) > 1 for c in correctness])) if correctness else 0.0,
        "sampler": getattr(sel, "name", type(sel).__name__),
    }


def run_curriculum(
    policy_path: str | Path,
    train_examples: Sequence[Example],
    dev_examples: Sequence[Example],
    schedule_cfg: Any,
    rl_cfg: Any,
    reward_cfg: Any,
    sampler: Any,
    out_dir: str | Path,
    tracker: Any,
    evaluate_fn: Callable[..., Mapping[str, Any]] | None,
    *,
    make_engine: Callable[[Any, Any], Any],
    load_fn: Callable[[Path], tuple[Any, Any]] | None = None,
) -> dict[str, Any]:
    """Run every stage of the schedule; returns the final policy path and per-stage summaries.

    ``make_engine(model, tokenizer)`` builds the rollout engine for a stage's policy (its
    backend must see the trainer's weights after ``sync_weights``); ``load_fn(path)``
    loads ``(model, tokenizer)`` (default :func:`etagent.models.factory.load_policy`);
    ``evaluate_fn(model, tokenizer, dev_examples, name) -> metrics`` scores a policy on
    dev (None skips evaluation).
    """
    if make_engine is None:
        raise ValueError("run_curriculum needs make_engine(model, tokenizer) -> RolloutEngine")
    if load_fn is None:
        from etagent.models.factory import load_policy

        load_fn = load_policy
    sched = _coerce(schedule_cfg, Schedule)
    rl = _coerce(rl_cfg, GRPOConfig)
    reward_fn = as_reward_fn(reward_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_examples, dev_examples = list(train_examples), list(dev_examples)
    by_id = {e.id: e for e in train_examples}
    if len(by_id) != len(train_examples):
        raise ValueError("run_curriculum: training example ids must be unique")
    current = Path(policy_path)
    summary: dict[str, Any] = {"stages": [], "reward": asdict(reward_fn), "sampler": getattr(sampler, "name", None)}

    if sched.eval_before and evaluate_fn is not None and dev_examples:
        before = out_dir / "eval_before.json"
        if before.exists():
            summary["before"] = read_json(before)
        else:
            model, tok = load_fn(current)
            metrics = dict(evaluate_fn(model, tok, dev_examples, "rl/stage0"))
            _log(tracker, metrics, 0, "rl/stage0/dev")
            atomic_write_json(before, metrics)
            summary["before"] = metrics
            del model

    for k, spec in enumerate(sched.stages, 1):
        sdir = out_dir / f"stage_{k}"
        name = spec.name or f"rl/stage{k}"
        if markers.is_done(sdir):
            summary["stages"].append(markers.read_marker(sdir)["summary"])
            current = sdir / "final"
            continue
        t0 = time.time()
        sdir.mkdir(parents=True, exist_ok=True)
        model, tok = load_fn(current)
        engine = make_engine(model, tok)
        sel_path = sdir / "selection.json"
        if sel_path.exists():  # interrupted stage: keep its questions (the checkpoint's data order)
            selection = read_json(sel_path)
        else:
            pool_idx = sample_pool(len(train_examples), spec.sample_questions, sched.seed, k)
            selection = sample_and_select(engine, [train_examples[i] for i in pool_idx], spec, sampler, rl,
                                          sched, k, sdir / "samples.jsonl")
            selection["sample_s"] = round(time.time() - t0, 2)
            atomic_write_json(sel_path, selection)
            _log(tracker, {k2: v for k2, v in selection.items() if k2 != "selected_ids"}, 0, f"{name}/select")
        questions = [by_id[i] for i in selection["selected_ids"]]
        stage_sum: dict[str, Any] = {"stage": k, "name": name, "start_policy": str(current),
                                     **{k2: v for k2, v in selection.items() if k2 != "selected_ids"}}
        if questions:
            steps = spec.num_steps(len(questions), rl.prompts_per_step, rl.max_steps)
            trainer = GRPOTrainer(model, tok, engine, reward_fn, rl, sdir, tracker)
            sigma0 = {"sigma_tool": spec.sigma_tool, "sigma_len": spec.sigma_len}
            stats = trainer.train(questions, name, steps, sigma0=sigma0)
            final = trainer.save_policy(sdir / "final")
            model = trainer.model
            hist = stats.pop("history")
            stage_sum.update({k2: v for k2, v in stats.items()})
            if hist:
                last = hist[-1]
                stage_sum.update({"reward_mean_first": hist[0]["reward/mean"], "reward_mean_last": last["reward/mean"]})
        else:  # on_empty=skip: the stage keeps the policy unchanged
            from etagent.train.checkpoint import atomic_dir

            with atomic_dir(sdir / "final") as tmp:
                model.save_pretrained(str(tmp))
                tok.save_pretrained(str(tmp))
            final = sdir / "final"
            stage_sum["skipped"] = True
        if evaluate_fn is not None and dev_examples:
            metrics = dict(evaluate_fn(model, tok, dev_examples, name))
            _log(tracker, metrics, stage_sum.get("steps", 0), f"{name}/dev")
            stage_sum["dev"] = metrics
        stage_sum["final"] = str(final)
        markers.mark_done(sdir, stage_sum, time.time() - t0)
        summary["stages"].append(stage_sum)
        current = final
        del model, engine
    summary["final_policy"] = str(current)
    return summary


def _log(tracker: Any, metrics: Mapping[str, Any], step: int, stage: str) -> None:
    if tracker is not None:
        tracker.log({k: v for k, v in metrics.items() if isinstance(v, (int, float, bool))}, step=step, stage=stage)
