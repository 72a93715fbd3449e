"""Curriculum behaviour-calibration RL: stages of (sample K -> select questions -> GRPO -> save -> dev eval).

Each stage of the ``schedule`` config group starts from the previous stage's policy
(the first from ``policy_path``), re-samples ``k`` rollouts per question on a subset of
the training questions with that policy, lets the sampler (``sampling=pareto|random|all``)
choose the questions, trains GRPO on them, saves ``<out_dir>/stage_<k>/final`` with
``save_pretrained`` and evaluates it on dev.

The stage loop is three steps per stage (:class:`Curriculum`: ``select`` -> ``train`` ->
``evaluate``). Every component arrives built (``hydra.utils.instantiate`` of its
``_target_`` in :mod:`etagent.pipeline.stage_rl`): the :class:`Schedule`, the ``rl``
hyper-parameters, the reward, the sampler and ``make_trainer``, the trainer factory
(its algorithm is ``rl.algo``), so swapping GRPO for RLOO never touches this file.

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
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from etagent.utils import markers
from etagent.records import Example, write_jsonl
from etagent.rl.grpo import GRPOConfig
from etagent.utils.io import atomic_write_json, read_json

ON_EMPTY = ("sampled", "skip")
START = ("ase", "seed")


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
    start: Literal["ase", "seed"] = "ase"  # the policy RL starts from (etagent.pipeline.stage_rl.start_policy)
    merge_stages: bool = False  # train `stages` as ONE stage at the same budget (merge_stages())
    # tool budget of the Pareto-sampling rollouts: the released direct rollouts allow 6 per kind, then
    # one last generation (direct_rollout/src/sample_processor.py); RL training uses rollout.budget
    sample_budget: Literal["total", "per_kind", "per_kind_then_answer"] = "per_kind_then_answer"

    def __post_init__(self) -> None:
        if self.on_empty not in ON_EMPTY:
            raise ValueError(f"schedule.on_empty must be one of {ON_EMPTY}, got {self.on_empty!r}")
        if self.start not in START:
            raise ValueError(f"schedule.start must be one of {START}, got {self.start!r}")
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
        self.stages = self._merged(specs)

    def _merged(self, specs: list[StageSpec]) -> list[StageSpec]:
        return [merge_stages(specs)] if self.merge_stages else specs


def merge_stages(specs: Sequence[StageSpec]) -> StageSpec:
    """The stages as ONE stage at the same budget (the one-stage ablation, ``schedule.merge_stages``).

    One re-sampling and one selection instead of one per stage: ``steps``, ``sample_questions``
    and ``select`` add up (a stage without ``sample_questions`` re-samples every question, so
    the merged stage does too); ``k``, the sigmas and ``epochs`` must be the same in every
    stage, since one stage cannot keep several. Derived from whatever stage list was composed,
    so the ablation follows a preset's schedule by construction.
    """
    specs = list(specs)
    if len(specs) == 1:
        return specs[0]

    def same(key: str) -> Any:
        vals = [getattr(s, key) for s in specs]
        if any(v != vals[0] for v in vals):
            raise ValueError(f"schedule.merge_stages: the stages differ in `{key}` ({vals}); one stage cannot "
                             f"keep them all: make them equal or leave merge_stages false")
        return vals[0]

    steps = [s.steps for s in specs]
    if all(v is not None for v in steps):
        total_steps, epochs = sum(steps), None
    elif all(v is None for v in steps) and all(s.epochs is not None for s in specs):
        # equal passes over the merged selection ~ the sum of each stage's passes over its own
        total_steps, epochs = None, same("epochs")
    else:
        raise ValueError(f"schedule.merge_stages: every stage needs `steps` (or every stage the same `epochs`), "
                         f"got steps={steps}, epochs={[s.epochs for s in specs]}")
    select = [s.select for s in specs]
    if any(v is None for v in select):
        raise ValueError(f"schedule.merge_stages: every stage needs `select` (the sampler's own count would "
                         f"select one stage's worth), got {select}")
    pool = [s.sample_questions for s in specs]
    return StageSpec(steps=total_steps, epochs=epochs, k=same("k"), select=sum(select),
                     sample_questions=None if any(v is None for v in pool) else sum(pool),
                     sigma_tool=same("sigma_tool"), sigma_len=same("sigma_len"))


def rl_budget(schedule: Schedule, rl: GRPOConfig, n_train: int) -> dict[str, int]:
    """The RL compute a schedule plans: rollouts (re-sampling for selection + training) and optimizer updates.

    A stage re-samples ``k`` rollouts for each of ``min(sample_questions, n_train)`` questions,
    then trains ``steps`` GRPO steps of ``prompts_per_step x group_size`` rollouts and
    ``ppo_epochs x mini_batches`` updates each. Two configurations with equal budgets spend the
    same RL compute whatever their sampler keeps. Stages given in ``epochs`` depend on the
    selection's size, known only at run time: a ValueError.
    """
    out = {"stages": len(schedule.stages), "steps": 0, "sample_rollouts": 0, "train_rollouts": 0, "updates": 0}
    for i, s in enumerate(schedule.stages):
        if s.steps is None:
            raise ValueError(f"schedule.stages[{i}] has no `steps`: its length depends on the selection "
                             "(epochs), so its budget is known only at run time")
        pool = n_train if s.sample_questions is None else min(int(s.sample_questions), n_train)
        out["steps"] += int(s.steps)
        out["sample_rollouts"] += pool * s.k
        out["train_rollouts"] += int(s.steps) * rl.prompts_per_step * rl.group_size
        out["updates"] += int(s.steps) * rl.ppo_epochs * rl.mini_batches
    out["rollouts"] = out["sample_rollouts"] + out["train_rollouts"]
    return out


def _plain(x: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def sample_pool(n: int, count: int | None, seed: int, stage: int) -> list[int]:
    """Seeded subset of question indices for a stage's re-sampling (sorted; all if count is None)."""
    if count is None or count >= n:
        return list(range(n))
    return sorted(np.random.default_rng([seed, stage]).choice(n, size=count, replace=False).tolist())


def sample_and_select(engine, pool: Sequence[Example], spec: StageSpec, sampler, rl: GRPOConfig,
                      sched: Schedule, stage: int, samples_path: Path | None = None) -> dict[str, Any]:
    """Roll out ``spec.k`` per pool question, run the sampler, return ids and stats.

    The sampler's statistics are per rollout: its executed tool calls (``Trajectory.n_executed``:
    budget-refused and invalid calls did not run; released ``pareto/data_process.py``) and its
    correctness; success is decided with the engine's grader (the run's, at the sampler's threshold).
    """
    from etagent.backends.base import SamplingParams

    trajs = []
    for start in range(0, len(pool), max(1, sched.sample_batch)):
        chunk = list(pool[start : start + sched.sample_batch])
        params = SamplingParams(n=spec.k, temperature=rl.temperature, top_p=rl.top_p,
                                seed=(sched.seed * 100_003 + stage * 1_009 + start) % (2**31))
        if rl.max_response_tokens is not None:
            params = params.replace(max_new_tokens=int(rl.max_response_tokens))
        trajs.extend(engine.rollout(chunk, spec.k, params, group_prefix=f"sample{stage}/", budget=sched.sample_budget))
    by_group: dict[str, list[Any]] = {}
    for t in trajs:
        by_group.setdefault(t.group_id, []).append(t)
    groups = [by_group.get(f"sample{stage}/{ex.id}", []) for ex in pool]
    tool_counts = [[t.n_executed for t in g] for g in groups]
    correctness = [[float(t.score) for t in g] for g in groups]
    domains = [ex.domain for ex in pool]
    sel = copy.copy(sampler)
    if spec.select is not None and hasattr(sel, "count"):
        sel.count = int(spec.select)
    idx = list(sel.select(tool_counts, correctness, domains, engine.grader))
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
    schedule: Schedule,
    rl: GRPOConfig,
    reward: Any,
    sampler: Any,
    out_dir: str | Path,
    tracker: Any,
    evaluate_fn: Callable[..., Mapping[str, Any]] | None,
    *,
    make_engine: Callable[[Any, Any], Any],
    load_fn: Callable[[Path], tuple[Any, Any]],
    make_trainer: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Run every stage of the schedule; returns the final policy path and per-stage summaries.

    ``schedule``, ``rl`` and ``reward`` are built objects (:class:`Schedule`,
    :class:`~etagent.rl.grpo.GRPOConfig`, :class:`~etagent.rl.reward.RewardFn`).
    ``make_engine(model, tokenizer)`` builds the rollout engine for a stage's policy (its
    backend must see the trainer's weights after ``sync_weights``; its grader is the run's);
    ``load_fn(path)`` loads ``(model, tokenizer)`` (the run's dtype and device);
    ``evaluate_fn(model, tokenizer, dev_examples, name) -> metrics`` scores a policy on
    dev (None skips evaluation); ``make_trainer(model, tokenizer, engine, out_dir=,
    tracker=)`` builds a stage's trainer (default: :class:`~etagent.rl.grpo.GRPOTrainer`
    with ``rl`` and ``reward``).
    """
    if make_engine is None:
        raise ValueError("run_curriculum needs make_engine(model, tokenizer) -> RolloutEngine")
    for obj, cls, key in ((schedule, Schedule, "schedule"), (rl, GRPOConfig, "rl")):
        if not isinstance(obj, cls):
            raise TypeError(f"run_curriculum: `{key}` must be a built {cls.__name__} "
                            f"(hydra.utils.instantiate of its _target_), got {type(obj).__name__}")
    if make_trainer is None:
        from etagent.rl.grpo import GRPOTrainer

        make_trainer = functools.partial(GRPOTrainer, reward_fn=reward, cfg=rl)
    train_examples = list(train_examples)
    by_id = {e.id: e for e in train_examples}
    if len(by_id) != len(train_examples):
        raise ValueError("run_curriculum: training example ids must be unique")
    cur = Curriculum(train_examples, list(dev_examples), schedule, rl, sampler, Path(out_dir), tracker,
                     evaluate_fn, make_engine, load_fn, make_trainer)
    cur.out_dir.mkdir(parents=True, exist_ok=True)
    current = Path(policy_path)
    summary: dict[str, Any] = {"stages": [], "reward": reward.settings(), "sampler": getattr(sampler, "name", None)}
    before = cur.evaluate_start(current)
    if before is not None:
        summary["before"] = before
    for k, spec in enumerate(schedule.stages, 1):
        stage_sum, current = cur.run_stage(k, spec, current)
        summary["stages"].append(stage_sum)
    summary["final_policy"] = str(current)
    return summary


@dataclass
class Curriculum:
    """What the stages share; :meth:`run_stage` is select -> train -> evaluate, then the marker."""

    train_examples: list
    dev_examples: list
    schedule: Schedule
    rl: GRPOConfig
    sampler: Any
    out_dir: Path
    tracker: Any
    evaluate_fn: Callable[..., Mapping[str, Any]] | None
    make_engine: Callable[[Any, Any], Any]
    load_fn: Callable[[Path], tuple[Any, Any]]
    make_trainer: Callable[..., Any]

    def __post_init__(self) -> None:
        self.by_id = {e.id: e for e in self.train_examples}

    def evaluate_start(self, policy: Path) -> dict[str, Any] | None:
        """Dev metrics of the starting policy (``eval_before``), computed once and kept in eval_before.json."""
        if not (self.schedule.eval_before and self.evaluate_fn is not None and self.dev_examples):
            return None
        path = self.out_dir / "eval_before.json"
        if path.exists():
            return read_json(path)
        model, tok = self.load_fn(policy)
        metrics = dict(self.evaluate_fn(model, tok, self.dev_examples, "rl/stage0"))
        _log(self.tracker, metrics, 0, "rl/stage0/dev")
        atomic_write_json(path, metrics)
        return metrics

    def run_stage(self, k: int, spec: StageSpec, current: Path) -> tuple[dict[str, Any], Path]:
        """(stage summary, final policy) of stage ``k``; a finished stage (marker) is only read back."""
        sdir = self.out_dir / f"stage_{k}"
        name = spec.name or f"rl/stage{k}"
        if markers.is_done(sdir):
            return markers.read_marker(sdir)["summary"], sdir / "final"
        t0 = time.time()
        sdir.mkdir(parents=True, exist_ok=True)
        model, tok = self.load_fn(current)
        engine = self.make_engine(model, tok)
        selection = self.select(k, spec, sdir, name, engine, t0)
        stage_sum: dict[str, Any] = {"stage": k, "name": name, "start_policy": str(current),
                                     **{k2: v for k2, v in selection.items() if k2 != "selected_ids"}}
        questions = [self.by_id[i] for i in selection["selected_ids"]]
        model, final = self.train(spec, sdir, name, model, tok, engine, questions, stage_sum)
        dev = self.evaluate(model, tok, name, stage_sum.get("steps", 0))
        if dev is not None:
            stage_sum["dev"] = dev
        stage_sum["final"] = str(final)
        markers.mark_done(sdir, stage_sum, time.time() - t0)
        return stage_sum, final

    def select(self, k: int, spec: StageSpec, sdir: Path, name: str, engine: Any, t0: float) -> dict[str, Any]:
        """The stage's questions: re-sample and let the sampler choose, or an interrupted stage's selection.json."""
        path = sdir / "selection.json"
        if path.exists():  # interrupted stage: keep its questions (the checkpoint's data order)
            return read_json(path)
        pool_idx = sample_pool(len(self.train_examples), spec.sample_questions, self.schedule.seed, k)
        selection = sample_and_select(engine, [self.train_examples[i] for i in pool_idx], spec, self.sampler,
                                      self.rl, self.schedule, k, sdir / "samples.jsonl")
        selection["sample_s"] = round(time.time() - t0, 2)
        atomic_write_json(path, selection)
        _log(self.tracker, {k2: v for k2, v in selection.items() if k2 != "selected_ids"}, 0, f"{name}/select")
        return selection

    def train(self, spec: StageSpec, sdir: Path, name: str, model: Any, tok: Any, engine: Any,
              questions: list[Example], stage_sum: dict[str, Any]) -> tuple[Any, Path]:
        """Train on ``questions`` (resuming the stage's checkpoint) and save ``sdir/final``; adds stats to ``stage_sum``."""
        if not questions:  # on_empty=skip: the stage keeps the policy unchanged
            from etagent.train.checkpoint import atomic_dir

            with atomic_dir(sdir / "final") as tmp:
                model.save_pretrained(str(tmp))
                tok.save_pretrained(str(tmp))
            stage_sum["skipped"] = True
            return model, sdir / "final"
        steps = spec.num_steps(len(questions), self.rl.prompts_per_step, self.rl.max_steps)
        trainer = self.make_trainer(model, tok, engine, out_dir=sdir, tracker=self.tracker)
        sigma0 = {"sigma_tool": spec.sigma_tool, "sigma_len": spec.sigma_len}
        stats = trainer.train(questions, name, steps, sigma0=sigma0)
        final = trainer.save_policy(sdir / "final")
        hist = stats.pop("history")
        stage_sum.update(stats)
        if hist:
            stage_sum.update({"reward_mean_first": hist[0]["reward/mean"], "reward_mean_last": hist[-1]["reward/mean"]})
        return trainer.model, final

    def evaluate(self, model: Any, tok: Any, name: str, step: int) -> dict[str, Any] | None:
        if self.evaluate_fn is None or not self.dev_examples:
            return None
        metrics = dict(self.evaluate_fn(model, tok, self.dev_examples, name))
        _log(self.tracker, metrics, step, f"{name}/dev")
        return metrics


def _log(tracker: Any, metrics: Mapping[str, Any], step: int, stage: str) -> None:
    if tracker is not None:
        tracker.log({k: v for k, v in metrics.items() if isinstance(v, (int, float, bool))}, step=step, stage=stage)
