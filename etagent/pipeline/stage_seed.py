"""Stage `seed`: the seed agent, i.e. the policy before any calibration.

Embedded default: SFT of the freshly initialised tiny model on the flawed teacher's
trajectories (tool results and prompt masked), so the seed shows the four ineffective
behaviours at the teacher's rates. With a pretrained instruct model this stage is a
no-op: the model itself is the seed, as in the paper.
"""

from __future__ import annotations

from etagent.pipeline import components
from etagent.pipeline.context import RunContext
from etagent.train.summary import sft_budget_summary
from etagent.utils.io import read_jsonl_dicts


def run(ctx: RunContext) -> dict:
    if not ctx.scratch_model:
        return {"seed": "pretrained", "path": str(ctx.cfg.model.path)}
    from etagent.models.factory import load_policy
    from etagent.models.prompting import build_prompt_ids
    from etagent.train.sequences import from_text
    from etagent.train.sft import train_sft

    env = components.run_env(ctx)
    wdir, sdir = ctx.world_dir, ctx.stage_dir("seed")
    # a scratch model is built in float32 (model.dtype is the dtype of loading a trained policy)
    model, tok = load_policy(wdir / "model_init", dtype="float32", device=env.device)
    examples = {e.id: e for e in components.load_split(ctx, "train")}
    seqs = []
    for row in read_jsonl_dicts(wdir / "teacher.jsonl"):
        ex = examples[row["example_id"]]
        seqs.append(from_text(tok, build_prompt_ids(tok, ex.question, env.system_prompt), row["response_text"],
                              grammar=env.grammar))
    if not seqs:  # task=jsonl without task.trajectories_path: nothing to imitate, the seed is the base model
        import shutil

        shutil.copytree(wdir / "model_init", sdir / "final", dirs_exist_ok=True)
        return {"sequences": 0, "seed": "base model (no trajectories to imitate)"}
    cfg = components.sft_config(ctx, "seed")
    train_sft(model, tok, seqs, cfg, sdir, tracker=ctx.tracker, stage="seed", resume=True)
    return {"sequences": len(seqs), **sft_budget_summary(sdir / "final", "seed")}
