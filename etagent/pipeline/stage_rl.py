"""Stage `rl`: iterative group-wise Pareto sampling + curriculum GRPO (paper Part II-b/c).

Each stage of the `schedule` group re-samples K rollouts per training question with the
current policy, selects questions with the `sampling` group (NSGA-II Pareto by default),
trains GRPO with the `reward` group's reward, checkpoints and evaluates on dev. Stage
markers and GRPO checkpoints make a killed run resume where it stopped.

The rollouts are graded by the run's :class:`etagent.grading.Grader` with
``reward.qa_metric`` (what the reward sees is what the engine graded); the reward counts calls
with the run's grammar and the Pareto sampler decides success with that grader at
``sampling.qa_threshold``. Backends: ``hf`` shares the trainer's in-process model; ``vllm`` is handed a saved
checkpoint directory (``rl/vllm_weights``) and reloaded from it after every update
(departure from ARPO/verl, which stream weights into the running engine: a reload is slow
but works on any vLLM version); ``openai`` is refused at start-up (a server's weights
never follow the trainer).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from etagent.config import build
from etagent.evaluation.evaluate import evaluate
from etagent.pipeline import components
from etagent.pipeline.context import RunContext


class CheckpointSynced:
    """A vLLM backend that serves a checkpoint directory: :meth:`sync_weights` saves the
    trainer's model there (atomically) and makes vLLM reload it. Everything else is the
    wrapped backend's."""

    def __init__(self, backend: Any, ckpt_dir: Path, tokenizer: Any):
        self.backend, self.ckpt_dir, self.tokenizer = backend, Path(ckpt_dir), tokenizer

    @staticmethod
    def save(model: Any, tokenizer: Any, ckpt_dir: Path) -> Path:
        from etagent.train.checkpoint import atomic_dir

        with atomic_dir(ckpt_dir) as tmp:
            model.save_pretrained(str(tmp))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
        return Path(ckpt_dir)

    def sync_weights(self, model: Any) -> None:
        self.backend.sync_weights(self.save(model, self.tokenizer, self.ckpt_dir))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def rl_components(cfg: Any, grammar: Any) -> tuple[Any, Any, Any, Callable[..., Any]]:
    """(schedule, rl hyper-parameters, reward, trainer factory), each instantiated from its ``_target_``;
    the reward counts calls with ``grammar`` (the run's).

    The algorithm is ``rl.algo`` (built inside ``rl``): the trainer only samples, scores,
    updates and checkpoints, so ``rl/algo=rloo`` is the whole change for RLOO.
    """
    from etagent.rl.grpo import GRPOTrainer

    reward = build(cfg.reward, "reward", grammar=grammar)
    schedule = build(cfg.schedule, "schedule")
    rl = build(cfg.rl, "rl")
    return schedule, rl, reward, functools.partial(GRPOTrainer, reward_fn=reward, cfg=rl)


def start_policy(ctx: RunContext, start: str) -> Path:
    """The policy the curriculum starts from, as ``schedule.start`` names it (never a guess).

    ``ase``: the ASE stage's policy (the method: flywheel data -> ASE -> RL). ``seed``: the seed
    agent (``seed/final``; for a pretrained model, which the seed stage leaves as it is, the
    model itself), e.g. ``experiment=plain_grpo``. A missing policy is an error naming the key.
    """
    from etagent.config.validate import ConfigError

    pols = ctx.policies()
    name = "base" if start == "seed" and not ctx.scratch_model and "seed" not in pols else start
    if name not in pols:
        raise ConfigError(f"schedule.start={start}: the run has no `{start}` policy yet ({ctx.run_dir / start / 'final'}; "
                          f"finished: {', '.join(pols) or 'none'}): run the `{start}` stage first (or reuse it with "
                          f"init_from/init_stages), or set schedule.start to a policy the run has")
    return pols[name]


def run(ctx: RunContext) -> dict:
    from etagent.config.validate import ConfigError
    from etagent.rl.curriculum import rl_budget, run_curriculum

    env = components.run_env(ctx)
    kind = env.backend_kind
    if kind == "server":
        raise ConfigError(f"backend={ctx.cfg.backend._target_}: the rl stage trains the policy, but a server's "
                          "weights never follow the trainer; use backend=hf or backend=vllm (or drop `rl` from stages)")
    rdir = ctx.stage_dir("rl")
    train = components.load_split(ctx, "train")
    dev = components.load_split(ctx, "dev")
    ecfg = build(ctx.cfg.eval, "eval")
    sampler = build(ctx.cfg.sampling, "sampling")
    schedule, rl, reward, make_trainer = rl_components(ctx.cfg, env.grammar)
    start = start_policy(ctx, schedule.start)
    # reward.qa_metric grades the RL rollouts (the engine sets traj.score the reward uses)
    grader = env.grader.with_metric(reward.qa_metric)

    def make_backend(model, tok):
        if kind == "vllm":  # vLLM loads a directory, never an in-memory module
            ckpt = CheckpointSynced.save(model, tok, rdir / "vllm_weights")
            return CheckpointSynced(components.make_backend(ctx, ckpt, tok), ckpt, tok)
        return components.make_backend(ctx, model, tok)

    def make_engine(model, tok):
        # RL rollouts: rollout.budget (released RL: 6 calls in all); Pareto sampling passes
        # schedule.sample_budget per call; the reward's answer reader grades the samples
        return components.make_engine(ctx, make_backend(model, tok), grader, answer_extraction=reward.engine_extraction)

    def evaluate_fn(model, tok, examples, name):  # dev evaluation: the eval group's budget and reader
        engine = components.make_engine(ctx, make_backend(model, tok), grader,
                                        budget=ecfg.budget, answer_extraction=ecfg.engine_extraction)
        _, metrics = evaluate(engine, examples, ecfg, seed=int(ctx.cfg.seed))
        return metrics["overall"]

    result = run_curriculum(
        start, train, dev, schedule, rl, reward, sampler, rdir, ctx.tracker,
        evaluate_fn if dev else None, make_engine=make_engine,
        load_fn=lambda p: components.load_policy(ctx, p), make_trainer=make_trainer,
    )
    out: dict[str, Any] = {"stages": len(schedule.stages), "start": schedule.start}
    try:  # the planned compute, equal across the study's groups (tests/test_study_configs.py)
        budget = rl_budget(schedule, rl, len(train))
        out.update(rollouts=budget["rollouts"], updates=budget["updates"])
    except ValueError:  # stages in epochs: their length depends on the selections
        pass
    if isinstance(result, dict):
        out.update({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
    if ctx.cfg.get("export") == "verl":
        from etagent.export.verl import export_from_run

        out["verl_parquet"] = str(export_from_run(ctx.run_dir, ctx.run_dir / "export" / "verl_train.parquet",
                                                  system_prompt=env.tool_prompt))
    return out
