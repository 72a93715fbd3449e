"""The self-evolving data flywheel: rounds of sample -> split -> evolve -> verify -> merge.

Round r: sample K trajectories per training question (optionally a rotating subset of
``questions_per_round`` questions), split them into correct / incorrect, let each enabled
strategy propose candidates (enhancement on correct, reflection on incorrect), verify all
candidates with the real tools, keep the best ``keep_per_parent`` accepted per parent and
strategy, merge samples + accepted edits into the de-duplicated pool, persist the round,
optionally fine-tune the policy on the current SFT selection, and go again. Stops at
``max_rounds`` or when a round adds no new eligible correct trajectory. The round's steps
are :data:`etagent.flywheel.steps.ROUND_STEPS`; this module runs them, records the round
table row, persists and resumes.

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
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from etagent.behaviour import label_behaviour
from etagent.flywheel.evolvers import Evolver
from etagent.flywheel.pool import SAMPLE, Pool
from etagent.flywheel.report import behaviour_rates, write_round_report
from etagent.flywheel.steps import ROUND_STEPS, Flywheel, Round
from etagent.flywheel.strategies import STRATEGIES, EvolveContext, build_strategies
from etagent.flywheel.verify import Verifier
from etagent.records import Example, Trajectory, read_jsonl, write_jsonl
from etagent.utils.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

ALL_STRATEGIES = tuple(STRATEGIES)  # modify_redundancy, global_refine, self_correct, hint_injection


@dataclass(kw_only=True)
class FlywheelConfig:
    """The ``flywheel`` config group. ``min_correct`` has no code default: it is the run's QA success
    threshold unless set apart on purpose (``conf/flywheel/full.yaml``: ``${grading.qa_threshold}``;
    the official flywheel keeps F1 > 0.8)."""

    min_correct: float  # QA score needed to count as correct; math is 0/1
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
    require_same_results: bool = True  # reject an edit whose re-executed results differ
    allow_failed_calls: bool = False  # reject an edit whose re-executed calls fail
    keep_hint_in_data: bool = True  # official: the hint text is part of the training data
    stop_when_no_gain: bool = True
    seed: int = 0
    evolver: Any = None  # an evolver node overriding the `evolver` group (oracle upper bound only; the stage builds it)
    # tool budget of the flywheel's rollouts (read by the flywheel stage): the released flywheel allows
    # 6 per kind (+ extra_calls), then one last generation (flywheel/src/sample_processor.py)
    budget: Literal["total", "per_kind", "per_kind_then_answer"] = "per_kind_then_answer"
    # hint_injection's hint: generated (the evolver's: templates or LLM-written) | official (one of the
    # released fixed strings of the question's domain, official_hints[domain], chosen by a seeded draw)
    hints: Literal["generated", "official"] = "generated"
    official_hints: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"flywheel.strategies: unknown {unknown} (known: {sorted(STRATEGIES)})")
        for k in ("samples_per_question", "max_rounds", "continuations", "keep_per_parent"):
            if getattr(self, k) < 1:
                raise ValueError(f"flywheel.{k} must be >= 1, got {getattr(self, k)}")
        self.strategies = list(self.strategies)
        if self.hints not in ("generated", "official"):
            raise ValueError(f"flywheel.hints must be 'generated' or 'official', got {self.hints!r}")
        self.official_hints = {str(k): [str(h) for h in v] for k, v in dict(self.official_hints or {}).items()}
        if self.hints == "official" and not any(self.official_hints.values()):
            raise ValueError("flywheel.hints=official needs flywheel.official_hints: {domain: [hint, ...]}")


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def flywheel_grader(engine: Any, cfg: FlywheelConfig):
    """The engine's grader (the run's) with the flywheel's success threshold (``min_correct``)."""
    return engine.grader.with_threshold(cfg.min_correct)


def build_verifier(engine: Any, cfg: FlywheelConfig) -> Verifier:
    """Verifier wired to the engine's tools, tokenizer, grammar and grader (at the flywheel's threshold)."""
    from functools import partial

    grader = flywheel_grader(engine, cfg)
    return Verifier(
        engine.toolset, engine.backend.tokenizer, grader, engine.grammar,
        require_same_results=cfg.require_same_results, allow_failed_calls=cfg.allow_failed_calls,
        max_result_chars=getattr(engine, "max_result_chars", None), result_sep=getattr(engine, "result_sep", ""),
        label_fn=partial(label_behaviour, grader=grader, grammar=engine.grammar),
    )


def lucky_share(trajs: list[Trajectory], by_id: dict[str, Example]) -> float | None:
    """Measurement only (reads plans): share of trajectories that answer without any
    successful call a question whose plan needs a tool (None without such plans)."""
    known = [t for t in trajs if by_id.get(t.example_id) is not None and by_id[t.example_id].plan is not None]
    if not known:
        return None
    lucky = [t for t in known if by_id[t.example_id].plan and not any(not c.failed for c in t.tool_calls)]
    return round(len(lucky) / len(known), 4)


def run_flywheel(engine: Any, examples: list[Example], cfg: FlywheelConfig, out_dir: str | Path, *,
                 evolver: Evolver, tracker: Any = None, finetune_fn: Callable[[list[Trajectory], int], Any] | None = None,
                 verifier: Verifier | None = None) -> Pool:
    """Run the flywheel; returns the pool (also written to ``out_dir/pool.jsonl``).

    The run's grammar and grader come with ``engine`` (the one that samples): the verifier,
    strategies, fault typing, pool and labels use them, the grader at ``cfg.min_correct``.
    ``evolver``: built with the same grammar (``evolver`` group, or ``flywheel.evolver``).
    ``finetune_fn(sft_trajectories, round)`` fine-tunes the engine's policy in place (and
    syncs its backend); it must persist its own checkpoint, since on resume the loop calls
    it again for the last finished round so the engine holds the right policy.
    """
    if not isinstance(cfg, FlywheelConfig):
        raise TypeError(f"run_flywheel: cfg must be a built FlywheelConfig (build the `flywheel` node), "
                        f"got {type(cfg).__name__}")
    if evolver.grammar != engine.grammar:
        raise ValueError(f"run_flywheel: the evolver's grammar {evolver.grammar} is not the engine's {engine.grammar}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(evolver, "bind"):
        evolver.bind(engine.backend)
    fw = Flywheel(engine, list(examples), cfg, verifier or build_verifier(engine, cfg), evolver,
                  build_strategies(cfg.strategies), flywheel_grader(engine, cfg), Pool(engine.grammar))
    finetune = finetune_fn if finetune_fn and cfg.finetune_between_rounds else None
    rows, start, stopped, finetuned_after = _resume(fw, out, finetune)

    for r in range(start, cfg.max_rounds + 1):
        if stopped:
            break
        t0 = time.time()
        rnd = Round(r, EvolveContext(engine, fw.verifier, evolver, engine.grammar, round=r, extra_calls=cfg.extra_calls,
                                     continuations=cfg.continuations, temperature=cfg.temperature,
                                     keep_hint_in_data=cfg.keep_hint_in_data, seed=cfg.seed,
                                     official_hints=cfg.official_hints if cfg.hints == "official" else None))
        for step in ROUND_STEPS:
            step(fw, rnd)
        write_jsonl(out / f"round_{r}.jsonl", rnd.added)
        gain = sum(1 for t in rnd.added if fw.grader.is_success(None, t.score) and not t.format_errors
                   and (cfg.include_unedited_correct or t.meta["strategy"] != SAMPLE))
        sel = _select(fw)
        row = _round_row(fw, rnd, gain, sel, t0)
        rows.append(row)
        log.info("flywheel round %d: %d samples (%.0f%% correct), %d edits accepted / %d rejected, "
                 "pool %d, %.0fs", r, len(rnd.samples), 100 * (row["sample_correct"] or 0), row["accepted"],
                 row["rejected"], len(fw.pool), row["wall_s"])
        if gain == 0 and cfg.stop_when_no_gain:
            stopped = f"round {r} added no new correct trajectory"
        state = {"completed_rounds": r, "rounds": rows, "stopped": stopped, "finetuned_after": finetuned_after}
        atomic_write_json(out / "state.json", state)
        if tracker is not None:
            tracker.log({k: v for k, v in row.items() if not isinstance(v, dict)}, step=r, stage="flywheel")
        if not stopped and finetune and r < cfg.max_rounds:
            finetune(sel, r)
            finetuned_after = r
            atomic_write_json(out / "state.json", {**state, "finetuned_after": r})

    fw.pool.save(out / "pool.jsonl")
    write_jsonl(out / "sft.jsonl", _select(fw))
    write_round_report(rows, out)
    return fw.pool


def _resume(fw: Flywheel, out: Path, finetune: Callable | None) -> tuple[list[dict], int, str | None, int]:
    """Reload finished rounds into ``fw.pool``; -> (table rows, next round, stop reason, finetuned_after)."""
    state_path = out / "state.json"
    if not state_path.exists():
        return [], 1, None, 0
    cfg, state = fw.cfg, read_json(state_path)
    done = int(state["completed_rounds"])
    for r in range(1, done + 1):
        for t in read_jsonl(out / f"round_{r}.jsonl", Trajectory):
            fw.pool.add(t)
    rows, stopped = list(state["rounds"]), state.get("stopped")
    finetuned_after = int(state.get("finetuned_after", 0))
    if not stopped and finetune and 0 < done < cfg.max_rounds:
        # re-run (or reload, if finetune_fn finds its checkpoint) so the engine holds the round-`done` policy
        finetune(_select(fw), done)
        finetuned_after = done
        atomic_write_json(state_path, {**state, "finetuned_after": done})
    return rows, done + 1, stopped, finetuned_after


def _round_row(fw: Flywheel, rnd: Round, gain: int, sel: list[Trajectory], t0: float) -> dict[str, Any]:
    """The round's line of ``rounds.json`` (and the tracker's)."""
    cfg, by_id, pool, samples, stats = fw.cfg, fw.by_id, fw.pool, rnd.samples, rnd.stats
    trajs = pool.trajectories
    grammar = fw.engine.grammar
    return {
        "round": rnd.r, "questions": len(rnd.questions), "samples": len(samples), "pool_parents": len(rnd.frontier),
        "sample_correct": _mean([float(fw.verifier.is_correct(by_id[s.example_id], s.score)) for s in samples]),
        "sample_mean_calls": _mean([s.n_calls(grammar) for s in samples]),
        **behaviour_rates(samples, "sample_"),
        "accepted": sum(s["accepted"] for s in stats.values()),
        "rejected": sum(s["rejected"] for s in stats.values()),
        "added": len(rnd.added), "new_correct": gain,
        "pool_size": len(pool),
        "pool_correct": _mean([float(fw.grader.is_success(None, t.score)) for t in trajs]),
        "pool_mean_calls": _mean([t.n_calls(grammar) for t in trajs]),
        **behaviour_rates(trajs, "pool_"),
        "sft_size": len(sel), "sft_mean_calls": _mean([t.n_calls(grammar) for t in sel]),
        # no-tool answers to tool-needing questions in the SFT data, without / with grounding
        "sft_lucky_before": lucky_share(_select(fw, require_grounded=False), by_id),
        "sft_lucky": lucky_share(sel, by_id),
        "wall_s": round(time.time() - t0, 2),
        "strategies": {k: {**dict(v), "rejected_by": dict(rnd.rejected_by[k])} for k, v in stats.items()},
        "stats": dict(rnd.ctx.stats),
    }


def _select(fw: Flywheel, require_grounded: bool = True) -> list[Trajectory]:
    """The pool trajectories that become SFT data (see Pool.select)."""
    cfg = fw.cfg
    return fw.pool.select(cfg.max_per_question, fw.grader, cfg.include_unedited_correct, require_grounded)
