"""Stage `flywheel`: the self-evolving data flywheel (paper Part I) on the training split.

The current policy (the seed agent) samples K trajectories per training question; correct
ones are enhanced (modify redundancy, global refinement), incorrect ones reflected on
(self-correction, hint injection); every edit is verified with the real tools before it
joins the pool. Rounds are persisted, so a killed run resumes at its last finished round.
Which operations run is the `flywheel` group (`none | enhance_only | reflect_only | full`);
who rewrites is the `evolver` group (the policy itself by default; `llm` for real models).

Rounds compound: each round's parents include the edits the previous round accepted. With
``flywheel.finetune_between_rounds=true`` the policy is fine-tuned (the `train` group with
the `ase_sft` overrides) on the round's SFT selection before the next round samples, as the
paper's "repeat for several rounds" with an improving policy; each round's policy is saved
under ``flywheel/finetune_round_<r>/final`` (reused on resume). Needs a backend that can
take new weights (hf in-process, vllm reloads the directory); a server backend is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from etagent.config import build
from etagent.pipeline import components
from etagent.pipeline.context import RunContext

log = logging.getLogger(__name__)


def make_finetuner(ctx: RunContext, fdir: Path, backend: Any, start_policy: Path):
    """``finetune_fn(selection, round)`` for :func:`run_flywheel`: SFT the current policy on the
    selection, save it (atomically, by train_sft), and hand the new weights to ``backend``."""
    from etagent.flywheel.ase import run_ase

    env = components.run_env(ctx)
    current = {"policy": Path(start_policy)}

    def finetune(selection: list, round_: int) -> None:
        out = fdir / f"finetune_round_{round_}"
        final = out / "final"
        if not (final / "config.json").exists():
            if not selection:
                log.warning("flywheel: round %d selected no SFT data; the policy is not fine-tuned", round_)
                return
            run_ase(current["policy"], selection, components.sft_config(ctx, "ase"), out, tracker=ctx.tracker,
                    grammar=env.grammar, dtype=env.dtype, device=env.device)
        current["policy"] = final
        if env.backend_kind == "hf":
            model, _ = components.load_policy(ctx, final)
            backend.sync_weights(model)
        else:
            backend.sync_weights(final)  # vllm: reload from the directory

    return finetune


def run(ctx: RunContext) -> dict:
    from etagent.flywheel.loop import run_flywheel

    fdir = ctx.stage_dir("flywheel")
    train = components.load_split(ctx, "train")
    if not train:
        raise ValueError("flywheel: the task has no training split (benchmarks are test-only)")
    policy = ctx.latest_policy()
    env = components.run_env(ctx)
    # the evolver is built here, with the run's grammar: `flywheel.evolver` (the oracle upper
    # bound) overrides the `evolver` group
    fcfg = build(ctx.cfg.flywheel, "flywheel", evolver=None)
    node = ctx.cfg.flywheel.evolver if ctx.cfg.flywheel.get("evolver") is not None else ctx.cfg.get("evolver")
    if node is None:
        from etagent.config.validate import ConfigError

        raise ConfigError("evolver: null, and flywheel.evolver is null: the flywheel needs an evolver (evolver=policy)")
    evolver = build(node, "evolver", grammar=env.grammar)
    finetune = bool(fcfg.finetune_between_rounds)
    if finetune and not env.follows_weights:
        from etagent.config.validate import ConfigError

        raise ConfigError("flywheel.finetune_between_rounds=true needs backend=hf or backend=vllm "
                          "(a server's weights cannot follow the fine-tuning)")
    backend, _ = components.policy_backend(ctx, policy)
    engine = components.make_engine(ctx, backend, env.grader, budget=fcfg.budget)  # released: per_kind_then_answer
    finetune_fn = make_finetuner(ctx, fdir, backend, policy) if finetune else None
    pool = run_flywheel(engine, train, fcfg, fdir, tracker=ctx.tracker, evolver=evolver, finetune_fn=finetune_fn)
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
