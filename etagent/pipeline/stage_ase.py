"""Stage `ase`: action-space exploration fine-tuning (paper Part II-a).

SFT of the seed policy on the flywheel pool's selected trajectories (tool results
masked), full or LoRA (`train.lora.enabled`), with the `train` group plus `ase_sft`
overrides. Departure from the official LLaMA-Factory run: results are masked and the
prompt layout is the same as in RL and evaluation.
"""

from __future__ import annotations

from etagent.pipeline import components
from etagent.pipeline.context import RunContext
from etagent.train.summary import sft_budget_summary
from etagent.utils.io import read_json


def run(ctx: RunContext) -> dict:
    from etagent.flywheel.ase import run_ase

    fdir, adir = ctx.run_dir / "flywheel", ctx.stage_dir("ase")
    data = fdir / "sft.jsonl"
    if not data.exists():
        raise FileNotFoundError(f"{data} missing: run the `flywheel` stage first")
    seed_policy = ctx.policies().get("seed") or ctx.latest_policy()
    env = components.run_env(ctx)
    if not any(True for line in open(data) if line.strip()):
        # Nothing correct to learn from (e.g. a very weak seed): ASE keeps the seed policy
        # rather than failing the run; the report shows the empty pool.
        import shutil

        if (adir / "final").exists():
            shutil.rmtree(adir / "final")
        shutil.copytree(seed_policy, adir / "final")
        return {"trajectories": 0, "note": "empty flywheel pool: ASE policy = seed policy"}
    # sft.jsonl is the flywheel's selection already (flywheel.max_per_question, min_correct, ...)
    run_ase(seed_policy, str(data), components.sft_config(ctx, "ase"), adir, tracker=ctx.tracker,
            grammar=env.grammar, dtype=env.dtype, device=env.device)
    info = read_json(adir / "ase_data.json") if (adir / "ase_data.json").exists() else {}
    out = {k: v for k, v in info.items() if isinstance(v, (int, float))}
    return {**out, **sft_budget_summary(adir / "final", "ase")}
