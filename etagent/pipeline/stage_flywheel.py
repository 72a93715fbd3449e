"""Stage `flywheel`: the self-evolving data flywheel (paper Part I) on the training split.

The current policy (the seed agent) samples K trajectories per training question; correct
ones are enhanced (modify redundancy, global refinement), incorrect ones reflected on
(self-correction, hint injection); every edit is verified with the real tools before it
joins the pool. Rounds are persisted, so a killed run resumes at its last finished round.
Which operations run is the `flywheel` group (`none | enhance_only | reflect_only | full`);
who rewrites is the `evolver` group (the policy itself by default; `llm` for real models).
"""

from __future__ import annotations

from etagent.config import build
from etagent.pipeline import components
from etagent.pipeline.context import RunContext


def run(ctx: RunContext) -> dict:
    from etagent.flywheel.loop import run_flywheel

    fdir = ctx.stage_dir("flywheel")
    train = components.load_split(ctx, "train")
    if not train:
        raise ValueError("flywheel: the task has no training split (benchmarks are test-only)")
    policy = ctx.latest_policy()
    fcfg = build(ctx.cfg.flywheel, "flywheel")
    evolver = build(ctx.cfg.evolver, "evolver") if ctx.cfg.get("evolver") is not None else None
    with components.make_toolset(ctx) as toolset:
        backend, _ = components.policy_backend(ctx, policy)
        engine = components.make_engine(ctx, backend, toolset)
        pool = run_flywheel(engine, train, fcfg, fdir, tracker=ctx.tracker, evolver=evolver)
    summary = {"pool": len(pool)} if hasattr(pool, "__len__") else {}
    try:
        from etagent.utils.io import read_json

        rounds = read_json(fdir / "rounds.json")
        rows = rounds if isinstance(rounds, list) else rounds.get("rows", [])
        if rows:
            last = rows[-1]
            summary.update({k: v for k, v in last.items() if isinstance(v, (int, float))})
            summary["rounds"] = len(rows)
    except (FileNotFoundError, ValueError):
        pass
    return summary
