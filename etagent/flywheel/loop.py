"""The self-evolving data flywheel: rounds of sample -> split -> evolve -> verify -> merge.

Round r: sample K trajectories per training question (optionally a rotating subset of
``questions_per_round`` questions), split them into correct / incorrect, let each enabled
strategy propose candidates (enhancement on correct, reflection on incorrect), verify all
candidates with the real tools, keep the best ``keep_per_parent`` accepted per parent and
strategy, merge samples + accepted edits into the de-duplicated pool, persist the round,
optionally fine-tune the policy on the current SFT selection, and go again. Stops at
``max_rounds`` or when a round adds no new eligible correct trajectory.

Persistence: after each round, ``round_<r>.jsonl`` (the trajectories the round added) and
``state.json`` (completed rounds, the table rows) are written atomically; a killed run
re-loads finished rounds and continues with the next one. Final outputs: ``pool.jsonl``,
``sft.jsonl`` (the selection), ``rounds.{json,md,png}``.

Compounding: each round's parents are its fresh samples *and* the edits the previous
round accepted (the official code re-selects from its buffer), so a self-corrected
trajectory can be enhanced next round and an enhanced one refined further
(``pool_parents`` in the round table).

SFT selection does not reward lucky guesses: unedited samples carry ``meta['grounded']``
(:func:`etagent.flywheel.pool.answer_grounded`) and ungrounded ones are not selected; the
round table reports the share of selected no-tool answers on questions whose plan needs a
tool without (``sft_lucky_before``) and with (``sft_lucky``) that check -- plans are read
for this measurement only, never by the evolver.

Departures from the official flywheel (method-spec §3): evolution is per round over all
samples instead of up to 5 sequential attempts per question; every kept edit is verified;
``flywheel=none`` means "keep correct samples only" (rejection sampling), the baseline
that isolates what the four operations add.
"""

from __future__ import annotations

import dataclasses
import random
import time
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from etagent.behaviour import label_behaviour
from etagent.flywheel.evolvers import Evolver, PolicyEvolver
from etagent.flywheel.pool import SAMPLE, Pool, answer_grounded
from etagent.flywheel.report import behaviour_rates, write_round_report
from etagent.flywheel.strategies import CORRECT, STRATEGIES, EvolveContext, build_strategies
from etagent.flywheel.verify import Verifier
from etagent.records import Example, Trajectory, read_jsonl, write_jsonl
from etagent.utils.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

ALL_STRATEGIES = tuple(STRATEGIES)  # modify_redundancy, global_refine, self_correct, hint_injection


@dataclass
class FlywheelConfig:
    strategies: list[str] = field(default_factory=lambda: list(ALL_STRATEGIES))
    samples_per_question: int = 4  # K
    temperature: float = 1.0  # sampling and continuation temperature
    max_rounds: int = 2  # official: up to 5 evolve attempts (run.sh uses 3)
    extra_calls: int = 4  # per-kind call budget added for continuations (official ADDITIONAL_*_TIMES)
    continuations: int = 1  # policy continuations per reflection prefix
    keep_per_parent: int = 1  # accepted edits kept per (parent, strategy), best first
    finetune_between_rounds: bool = False
    max_per_question: int = 4  # SFT selection cap per question
    questions_per_round: int | None = 128  # None = all training questions every round
    include_unedited_correct: bool = True  # RFT-style: correct samples are SFT data too
    min_correct: float = 0.8  # QA F1 needed to count as correct (official flywheel: F1 > 0.8); math is 0/1
    require_same_results: bool = True  # reject an edit whose re-executed results differ
    allow_failed_calls: bool = False  # reject an edit whose re-executed calls fail
    keep_hint_in_data: bool = True  # official: the hint text is part of the training data
    stop_when_no_gain: bool = True
    seed: int = 0
    evolver: Any = None  # an Evolver overriding the `evolver` group (oracle upper bound only)

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"flywheel.strategies: unknown {unknown} (known: {sorted(STRATEGIES)})")
        for k in ("samples_per_question", "max_rounds", "continuations", "keep_per_parent"):
            if getattr(self, k) < 1:
                raise ValueError(f"flywheel.{k} must be >= 1, got {getattr(self, k)}")
        self.strategies = list(self.strategies)


def coerce_config(cfg: Any) -> FlywheelConfig:
    """A FlywheelConfig, or a ``flywheel`` config node built from its ``_target_``."""
    if isinstance(cfg, FlywheelConfig):
        return cfg
    from etagent.config import build

    built = build(cfg, "flywheel")
    if not isinstance(built, FlywheelConfig):
        raise TypeError(f"flywheel config: expected a FlywheelConfig or a node with its _target_, got {type(built).__name__}")
    return built


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def _pick_questions(examples: list[Example], k: int | None, seed: int, round_: int) -> list[Example]:
    if not k or k >= len(examples):
        return list(examples)
    return random.Random(seed * 1000 + round_).sample(list(examples), k)


def _policy(engine: Any, cfg: FlywheelConfig):
    """The engine's grading policy with the flywheel's success threshold (``min_correct``,
    which defaults to ``grading.qa_threshold``)."""
    from etagent import grading

    p = grading.policy_of(getattr(engine, "grader", None))
    return grading.GradingPolicy(p.qa_metric, cfg.min_correct, p.math_judge)


def build_verifier(engine: Any, cfg: FlywheelConfig) -> Verifier:
    """Verifier wired to the engine's tools, tokenizer and grader."""
    from functools import partial

    from etagent import grading

    return Verifier(
        engine.toolset, engine.backend.tokenizer, getattr(engine, "grader", grading.grade),
        min_correct=cfg.min_correct, require_same_results=cfg.require_same_results,
        allow_failed_calls=cfg.allow_failed_calls, max_result_chars=getattr(engine, "max_result_chars", None),
        result_sep=getattr(engine, "result_sep", ""), label_fn=partial(label_behaviour, policy=_policy(engine, cfg)),
    )


def lucky_share(trajs: list[Trajectory], by_id: dict[str, Example]) -> float | None:
    """Measurement only (reads plans): share of trajectories that answer without any
    successful call a question whose plan needs a tool (None without such plans)."""
    known = [t for t in trajs if by_id.get(t.example_id) is not None and by_id[t.example_id].plan is not None]
    if not known:
        return None
    lucky = [t for t in known if by_id[t.example_id].plan and not any(not c.failed for c in t.tool_calls)]
    return round(len(lucky) / len(known), 4)


def run_flywheel(engine: Any, examples: list[Example], cfg: Any, out_dir: str | Path, tracker: Any = None,
                 finetune_fn: Callable[[list[Trajectory], int], Any] | None = None,
                 evolver: Evolver | None = None, verifier: Verifier | None = None) -> Pool:
    """Run the flywheel; returns the pool (also written to ``out_dir/pool.jsonl``).

    ``finetune_fn(sft_trajectories, round)`` fine-tunes the engine's policy in place (and
    syncs its backend); it must persist its own checkpoint, since on resume the loop calls
    it again for the last finished round so the engine holds the right policy.
    """
    cfg = coerce_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evolver = cfg.evolver or evolver or PolicyEvolver()
    if hasattr(evolver, "bind"):
        evolver.bind(engine.backend)
    verifier = verifier or build_verifier(engine, cfg)
    strategies = build_strategies(cfg.strategies)
    by_id = {e.id: e for e in examples}
    policy = _policy(engine, cfg)

    pool, rows, start, stopped, finetuned_after = Pool(), [], 1, None, 0
    state_path = out / "state.json"
    if state_path.exists():
        state = read_json(state_path)
        done = int(state["completed_rounds"])
        for r in range(1, done + 1):
            for t in read_jsonl(out / f"round_{r}.jsonl", Trajectory):
                pool.add(t)
        rows, start, stopped = list(state["rounds"]), done + 1, state.get("stopped")
        finetuned_after = int(state.get("finetuned_after", 0))
        if not stopped and finetune_fn and cfg.finetune_between_rounds and 0 < done < cfg.max_rounds:
            # re-run (or reload, if finetune_fn finds its checkpoint) so the engine holds the round-`done` policy
            finetune_fn(_select(pool, cfg), done)
            finetuned_after = done
            atomic_write_json(state_path, {**state, "finetuned_after": done})

    for r in range(start, cfg.max_rounds + 1):
        if stopped:
            break
        t0 = time.time()
        qs = _pick_questions(examples, cfg.questions_per_round, cfg.seed, r)
        if hasattr(engine, "progress_desc"):
            engine.progress_desc = f"flywheel round {r}/{cfg.max_rounds}"
        ctx = EvolveContext(engine, verifier, evolver, round=r, extra_calls=cfg.extra_calls,
                            continuations=cfg.continuations, temperature=cfg.temperature,
                            keep_hint_in_data=cfg.keep_hint_in_data, seed=cfg.seed)
        samples = engine.rollout(qs, cfg.samples_per_question,
                                 ctx.sampling_params(cfg.temperature, cfg.samples_per_question), group_prefix=f"fw{r}-")
        groups: dict[str, list[Trajectory]] = defaultdict(list)
        for s in samples:
            groups[s.example_id].append(s)
        for s in samples:
            s.meta["rollout_strategy"] = s.meta.get("strategy")  # the engine's (standard|branching)
            s.meta.update(round=r, strategy=SAMPLE, parent_id=None)
            if not s.behaviour:
                s.behaviour = dict(label_behaviour(s, by_id[s.example_id], groups[s.example_id], policy=policy))
            ex = by_id[s.example_id]
            s.meta["grounded"] = answer_grounded(s, ex.question, groups[s.example_id],
                                                 lambda t, ex=ex: verifier.is_correct(ex, t.correct))
        split = {CORRECT: [], "incorrect": []}
        for s in samples:
            ok = not s.format_errors and verifier.is_correct(by_id[s.example_id], s.correct)
            split[CORRECT if ok else "incorrect"].append((by_id[s.example_id], s))
        # compounding: the edits the previous round accepted are parents again (the official
        # flywheel re-selects from its buffer), so an edit can be edited further
        frontier = [t for t in pool.trajectories if t.meta.get("round") == r - 1 and t.meta.get("strategy") != SAMPLE
                    and t.example_id in by_id and not t.format_errors
                    and verifier.is_correct(by_id[t.example_id], t.correct)]
        split[CORRECT].extend((by_id[t.example_id], t) for t in frontier)

        added: list[Trajectory] = [s for s in samples if pool.add(s)]
        stats: dict[str, Counter] = {st.name: Counter() for st in strategies}
        rejected_by: dict[str, Counter] = {st.name: Counter() for st in strategies}
        cands = []
        for st in strategies:
            c = st.propose(split[st.target], ctx)
            stats[st.name]["proposed"] += len(c)
            cands.extend(c)
        verdicts = verifier.verify(cands)
        accepted: dict[str, list] = defaultdict(list)
        for v in verdicts:
            name = v.candidate.strategy
            if v.ok:
                stats[name]["accepted"] += 1
                accepted[v.candidate.key].append(v)
            else:
                stats[name]["rejected"] += 1
                rejected_by[name][v.reason] += 1
        for key in accepted:
            for v in sorted(accepted[key], key=lambda v: v.candidate.rank)[: cfg.keep_per_parent]:
                if pool.add(v.traj):
                    added.append(v.traj)
                    stats[v.candidate.strategy]["added"] += 1

        write_jsonl(out / f"round_{r}.jsonl", added)
        gain = sum(1 for t in added if t.correct >= cfg.min_correct and not t.format_errors
                   and (cfg.include_unedited_correct or t.meta["strategy"] != SAMPLE))
        sel = _select(pool, cfg)
        trajs = pool.trajectories
        row = {
            "round": r, "questions": len(qs), "samples": len(samples), "pool_parents": len(frontier),
            "sample_correct": _mean([float(verifier.is_correct(by_id[s.example_id], s.correct)) for s in samples]),
            "sample_mean_calls": _mean([s.num_calls for s in samples]),
            **behaviour_rates(samples, "sample_"),
            "accepted": sum(s["accepted"] for s in stats.values()),
            "rejected": sum(s["rejected"] for s in stats.values()),
            "added": len(added), "new_correct": gain,
            "pool_size": len(pool),
            "pool_correct": _mean([float(t.correct >= cfg.min_correct) for t in trajs]),
            "pool_mean_calls": _mean([t.num_calls for t in trajs]),
            **behaviour_rates(trajs, "pool_"),
            "sft_size": len(sel), "sft_mean_calls": _mean([t.num_calls for t in sel]),
            # no-tool answers to tool-needing questions in the SFT data, without / with grounding
            "sft_lucky_before": lucky_share(_select(pool, cfg, require_grounded=False), by_id),
            "sft_lucky": lucky_share(sel, by_id),
            "wall_s": round(time.time() - t0, 2),
            "strategies": {k: {**dict(v), "rejected_by": dict(rejected_by[k])} for k, v in stats.items()},
            "stats": dict(ctx.stats),
        }
        rows.append(row)
        log.info("flywheel round %d: %d samples (%.0f%% correct), %d edits accepted / %d rejected, "
                 "pool %d, %.0fs", r, len(samples), 100 * (row["sample_correct"] or 0), row["accepted"],
                 row["rejected"], len(pool), row["wall_s"])
        if gain == 0 and cfg.stop_when_no_gain:
            stopped = f"round {r} added no new correct trajectory"
        state = {"completed_rounds": r, "rounds": rows, "stopped": stopped, "finetuned_after": finetuned_after}
        atomic_write_json(state_path, state)
        if tracker is not None:
            tracker.log({k: v for k, v in row.items() if not isinstance(v, dict)}, step=r, stage="flywheel")
        if not stopped and finetune_fn and cfg.finetune_between_rounds and r < cfg.max_rounds:
            finetune_fn(sel, r)
            finetuned_after = r
            atomic_write_json(state_path, {**state, "finetuned_after": r})

    pool.save(out / "pool.jsonl")
    write_jsonl(out / "sft.jsonl", _select(pool, cfg))
    write_round_report(rows, out)
    return pool


def _select(pool: Pool, cfg: FlywheelConfig, require_grounded: bool = True) -> list[Trajectory]:
    return pool.select(cfg.max_per_question, cfg.min_correct, cfg.include_unedited_correct, require_grounded)


def select_sft(pool: Pool, cfg: Any) -> list[Trajectory]:
    """The pool trajectories that become SFT data under ``cfg`` (see Pool.select)."""
    return _select(pool, coerce_config(cfg))
