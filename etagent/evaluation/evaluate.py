"""Evaluate a policy on a set of examples: rollouts -> trajectories -> metrics tables.

``evaluate(engine, examples, cfg)`` samples ``n_samples`` responses per example (greedy
when ``temperature`` is 0), grades them, labels behaviours and returns the overall and
per-domain metrics (definitions in :mod:`etagent.evaluation.metrics`); with several
benchmarks (``Example.source``, e.g. ``experiment=paper_eval``) also one row per benchmark
and their unweighted macro average (``by_benchmark``), as the paper's main table. The `eval`
pipeline stage calls it for every policy of a run; ``python -m etagent
stages=[eval,report] resume=<run>`` re-evaluates an existing run.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from etagent.backends.base import SamplingParams
from etagent.evaluation import EvalConfig
from etagent.evaluation.metrics import compute_metrics, macro_average, metrics_table_markdown
from etagent.records import Example, Trajectory, write_jsonl
from etagent.utils.io import atomic_write_json, atomic_write_text


def sampling_params(cfg: EvalConfig, max_new_tokens: int, seed: int = 0) -> SamplingParams:
    return SamplingParams(n=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          repetition_penalty=cfg.repetition_penalty, max_new_tokens=max_new_tokens, seed=seed)


def evaluate(
    engine: Any,
    examples: Sequence[Example],
    cfg: EvalConfig,
    *,
    batch_size: int = 64,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    concise_fn: Callable[[Trajectory, Example], bool] | None = None,
) -> tuple[list[Trajectory], dict[str, Any]]:
    # the engine's grader and grammar (the run's) decide success and calls in the metrics too:
    # one notion of "correct" and of "a call"
    score = {"grader": engine.grader, "grammar": engine.grammar}
    examples = list(examples)[: cfg.max_examples] if cfg.max_examples else list(examples)
    params = sampling_params(cfg, getattr(engine, "max_turn_tokens", 256), seed)
    trajs: list[Trajectory] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        trajs.extend(engine.rollout(chunk, cfg.n_samples, params, group_prefix="eval:"))
        if progress is not None:
            progress(len(chunk))
    by_id = {e.id: e for e in examples}
    if concise_fn is not None:  # overall and per-domain tables share one (costly) verdict per trajectory
        verdicts: dict[str, bool] = {}
        judge_fn = concise_fn

        def concise_fn(t: Trajectory, ex: Example) -> bool:
            if t.id not in verdicts:
                verdicts[t.id] = bool(judge_fn(t, ex))
            return verdicts[t.id]

    metrics: dict[str, Any] = {"overall": compute_metrics(trajs, by_id, concise_fn=concise_fn, **score), "by_domain": {}}
    per_domain: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        per_domain[by_id[t.example_id].domain].append(t)
    for dom, ts in sorted(per_domain.items()):
        metrics["by_domain"][dom] = compute_metrics(ts, by_id, concise_fn=concise_fn, **score)
    per_bench: dict[str, list[Trajectory]] = defaultdict(list)  # Example.source = the benchmark
    for t in trajs:
        per_bench[by_id[t.example_id].source].append(t)
    if len(per_bench) > 1:  # the paper's table: one row per benchmark and their macro average
        benches = {b: compute_metrics(ts, by_id, concise_fn=concise_fn, **score) for b, ts in per_bench.items()}
        metrics["by_benchmark"] = {**benches, f"macro avg ({len(benches)})": macro_average(benches)}
    metrics["n_examples"] = len(examples)
    return trajs, metrics


def write_eval(out_dir: Path, policy: str, trajs: Sequence[Trajectory], metrics: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "trajectories.jsonl", trajs)
    atomic_write_json(out_dir / "metrics.json", {"policy": policy, **metrics})
    rows = {"overall": metrics["overall"], **{d: m for d, m in metrics["by_domain"].items()},
            **metrics.get("by_benchmark", {})}
    atomic_write_text(out_dir / "metrics.md", f"# {policy}\n\n" + metrics_table_markdown(rows) + "\n")
