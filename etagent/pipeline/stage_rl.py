"""Stage `rl`: iterative group-wise Pareto sampling + curriculum GRPO (paper Part II-b/c).

Each stage of the `schedule` group re-samples K rollouts per training question with the
current policy, selects questions with the `sampling` group (NSGA-II Pareto by default),
trains GRPO with the `reward` group's reward, checkpoints and evaluates on dev. Stage
markers and GRPO checkpoints make a killed run resume where it stopped.
"""

from __future__ import annotations

from etagent.config import build
from etagent.evaluation.evaluate import evaluate
from etagent.pipeline import components
from etagent.pipeline.context import RunContext


def run(ctx: RunContext) -> dict:
    from etagent.rl.curriculum import run_curriculum

    rdir = ctx.stage_dir("rl")
    train = components.load_split(ctx, "train")
    dev = components.load_split(ctx, "dev")
    start = ctx.policies().get("ase") or ctx.latest_policy()
    ecfg = build(ctx.cfg.eval, "eval")
    sampler = build(ctx.cfg.sampling, "sampling")
    # reward.qa_metric grades the RL rollouts (the engine sets traj.correct the reward uses)
    policy = components.grading_policy(ctx, build(ctx.cfg.reward, "reward").qa_metric)
    with components.make_toolset(ctx) as toolset:

        def make_engine(model, tok):
            return components.make_engine(ctx, components.make_backend(ctx, model, tok), toolset, policy)

        def evaluate_fn(model, tok, examples, name):
            engine = make_engine(model, tok)
            _, metrics = evaluate(engine, examples, ecfg, seed=int(ctx.cfg.seed))
            return metrics["overall"]

        result = run_curriculum(
            start, train, dev, ctx.cfg.schedule, ctx.cfg.rl, ctx.cfg.reward, sampler, rdir, ctx.tracker,
            evaluate_fn if dev else None, make_engine=make_engine,
            load_fn=lambda p: components.load_policy(ctx, p),
        )
    out = {"stages": len(ctx.cfg.schedule.stages)}
    if isinstance(result, dict):
        out.update({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
    if ctx.cfg.get("export") == "verl":
        from etagent.export.verl import export_from_run

        out["verl_parquet"] = str(export_from_run(ctx.run_dir, ctx.run_dir / "export" / "verl_train.parquet"))
    return out
