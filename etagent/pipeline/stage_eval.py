"""Stage `eval`: every policy of the run on the test split, five dimensions + behaviour rates.

Policies are evaluated in pipeline order (seed, ase, rl_stage_1, ...; ``base`` for a
pretrained model). Each policy's result is written on its own and skipped on resume,
so an interrupted evaluation continues with the next policy.

Grading is the run's :class:`etagent.grading.Grader` with ``eval.qa_metric``; calls are the
run's grammar's.
``judge=llm``: math equivalence is decided by the LLM judge (the paper's Qwen2.5-72B role; a
separate model: ``judge.backend`` must be set, the policy never judges itself) and, with
``eval.concise_judge=true``, conciseness too (``conciseness_judge``; the rule-based
``conciseness`` stays); judge statistics land in ``metrics.json['judge']``. Departure: the
default (``judge=none``) grades math with math-verify, not an LLM. The rollouts use
``eval.budget`` and read answers with ``eval.answer_extraction`` (``experiment=paper_eval``:
the released evaluator's rules).
"""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

from etagent.config import build
from etagent.evaluation.evaluate import evaluate, write_eval
from etagent.judge import build_judge
from etagent.pipeline import components
from etagent.pipeline.context import RunContext
from etagent.utils.io import atomic_write_json, read_json

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> dict:
    ecfg = build(ctx.cfg.eval, "eval")
    examples = components.load_split(ctx, ecfg.split)
    if ecfg.max_examples:
        examples = examples[: ecfg.max_examples]
    edir = ctx.stage_dir("eval")
    grader = components.run_env(ctx).grader.with_metric(ecfg.qa_metric)
    judge_cfg = ctx.cfg.get("judge")
    if ecfg.concise_judge and judge_cfg is None:
        from etagent.config.validate import ConfigError

        raise ConfigError("eval.concise_judge=true needs an LLM judge: add `judge=llm`")
    # the judge is its own model (judge.backend), built once before any rollout: a missing one fails here
    judge = build_judge(judge_cfg) if judge_cfg is not None else None
    policies = ctx.policies()
    overall: dict[str, dict] = {}
    for name, path in policies.items():
        pdir = edir / name
        if (pdir / "metrics.json").exists():
            overall[name] = read_json(pdir / "metrics.json")["overall"]
            continue
        backend, model = components.policy_backend(ctx, path)
        # judge=llm: math equivalence by the judge, and with eval.concise_judge its conciseness
        # verdicts (conciseness_judge); statistics per policy
        if judge is not None:
            judge.stats = {k: 0 for k in judge.stats}
        engine = components.make_engine(ctx, backend, grader.with_judge(judge) if judge else grader,
                                        budget=ecfg.budget, answer_extraction=ecfg.engine_extraction)
        concise_fn = judge.concise_fn if judge is not None and ecfg.concise_judge else None
        with tqdm(total=len(examples), desc=f"eval {name}", unit="q", leave=False) as bar:
            trajs, metrics = evaluate(engine, examples, ecfg, seed=int(ctx.cfg.seed), progress=bar.update,
                                      concise_fn=concise_fn)
        if judge is not None:
            metrics["judge"] = dict(judge.stats)  # items, votes, errors (unparsable/failed votes), shortcuts
        write_eval(pdir, name, trajs, metrics)
        overall[name] = metrics["overall"]
        ctx.tracker.log({k: v for k, v in metrics["overall"].items() if isinstance(v, (int, float))},
                        stage=f"eval/{name}")
        del model, backend, engine  # free the policy before loading the next one
    atomic_write_json(edir / "summary.json", {"policies": list(overall), "overall": overall})
    if overall:  # the results themselves belong in the run's log, not only in files
        from etagent.evaluation.metrics import metrics_table_markdown

        log.info("eval on %s (%d questions):\n%s", ecfg.split, len(examples), metrics_table_markdown(overall).rstrip())
    if not overall:
        return {"policies": 0}
    first, last = list(overall)[0], list(overall)[-1]
    out = {"policies": len(overall), "final": last}
    for key in ("correctness", "efficiency", "mean_calls"):
        out[f"{first}_{key}"] = overall[first].get(key)
        out[f"{last}_{key}"] = overall[last].get(key)
    out["objective"] = overall[last].get("efficiency")
    return out
