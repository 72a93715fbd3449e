"""One flywheel round as five steps, each with one job: sample -> split -> propose -> verify -> merge.

Every step reads and writes the round's :class:`Round` record and the run-wide
:class:`Flywheel` (engine, verifier, pool, ...); :func:`etagent.flywheel.loop.run_flywheel`
runs them in :data:`ROUND_STEPS` order, then records and persists the round. The order is
the order of every sampling call, so it fixes the RNG consumption: a new step goes where
its inputs exist, and a new strategy is a :class:`etagent.flywheel.strategies.Strategy`
(the ``propose`` step runs all configured ones).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from etagent.behaviour import label_behaviour
from etagent.flywheel.pool import SAMPLE, Pool, answer_grounded
from etagent.flywheel.strategies import CORRECT, INCORRECT, EvolveContext, Strategy
from etagent.flywheel.verify import Candidate, Verdict, Verifier
from etagent.records import Example, Trajectory


@dataclass
class Flywheel:
    """What stays the same across rounds."""

    engine: Any  # RolloutEngine
    examples: list[Example]
    cfg: Any  # FlywheelConfig
    verifier: Verifier
    evolver: Any
    strategies: list[Strategy]
    grader: Any  # the run's grader at the flywheel's success threshold (labels, pool selection, gain)
    pool: Pool  # built with the engine's grammar

    @property
    def by_id(self) -> dict[str, Example]:
        return self._by_id

    def __post_init__(self) -> None:
        self._by_id = {e.id: e for e in self.examples}

    def succeeded(self, t: Trajectory) -> bool:
        """A well-formed trajectory whose answer counts as correct (the verifier's rule)."""
        return not t.format_errors and self.verifier.is_correct(self._by_id[t.example_id], t.score)


@dataclass
class Round:
    """One round's data, filled in step by step."""

    r: int
    ctx: EvolveContext
    questions: list[Example] = field(default_factory=list)
    samples: list[Trajectory] = field(default_factory=list)
    split: dict[str, list[tuple[Example, Trajectory]]] = field(default_factory=dict)
    frontier: list[Trajectory] = field(default_factory=list)  # last round's accepted edits, parents again
    candidates: list[Candidate] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    added: list[Trajectory] = field(default_factory=list)
    stats: dict[str, Counter] = field(default_factory=dict)  # strategy -> proposed/accepted/rejected/added
    rejected_by: dict[str, Counter] = field(default_factory=dict)  # strategy -> rejection reason -> count


def pick_questions(examples: list[Example], k: int | None, seed: int, round_: int) -> list[Example]:
    """A rotating subset of ``k`` questions (all when ``k`` is None or covers them)."""
    if not k or k >= len(examples):
        return list(examples)
    return random.Random(seed * 1000 + round_).sample(list(examples), k)


def sample(fw: Flywheel, rnd: Round) -> None:
    """K rollouts per picked question, labelled (behaviour, provenance, grounding)."""
    cfg, by_id, verifier = fw.cfg, fw.by_id, fw.verifier
    rnd.questions = pick_questions(fw.examples, cfg.questions_per_round, cfg.seed, rnd.r)
    if hasattr(fw.engine, "progress_desc"):
        fw.engine.progress_desc = f"flywheel round {rnd.r}/{cfg.max_rounds}"
    samples = fw.engine.rollout(rnd.questions, cfg.samples_per_question,
                                rnd.ctx.sampling_params(cfg.temperature, cfg.samples_per_question),
                                group_prefix=f"fw{rnd.r}-")
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for s in samples:
        groups[s.example_id].append(s)
    for s in samples:
        s.meta["rollout_strategy"] = s.meta.get("strategy")  # the engine's (standard|branching)
        s.meta.update(round=rnd.r, strategy=SAMPLE, parent_id=None)
        if not s.behaviour:
            s.behaviour = dict(label_behaviour(s, by_id[s.example_id], groups[s.example_id], grader=fw.grader,
                                               grammar=fw.engine.grammar))
        ex = by_id[s.example_id]
        s.meta["grounded"] = answer_grounded(s, ex.question, groups[s.example_id],
                                             lambda t, ex=ex: verifier.is_correct(ex, t.score))
    rnd.samples = samples


def split(fw: Flywheel, rnd: Round) -> None:
    """Correct / incorrect parents: the samples, plus last round's accepted edits (correct by
    verification), so an edit can be edited further (the official flywheel re-selects from its buffer)."""
    by_id = fw.by_id
    rnd.split = {CORRECT: [], INCORRECT: []}
    for s in rnd.samples:
        rnd.split[CORRECT if fw.succeeded(s) else INCORRECT].append((by_id[s.example_id], s))
    rnd.frontier = [t for t in fw.pool.trajectories
                    if t.meta.get("round") == rnd.r - 1 and t.meta.get("strategy") != SAMPLE
                    and t.example_id in by_id and fw.succeeded(t)]
    rnd.split[CORRECT].extend((by_id[t.example_id], t) for t in rnd.frontier)


def propose(fw: Flywheel, rnd: Round) -> None:
    """Each configured strategy proposes candidate edits of its target side."""
    rnd.stats = {st.name: Counter() for st in fw.strategies}
    rnd.rejected_by = {st.name: Counter() for st in fw.strategies}
    for st in fw.strategies:
        c = st.propose(rnd.split[st.target], rnd.ctx)
        rnd.stats[st.name]["proposed"] += len(c)
        rnd.candidates.extend(c)


def verify(fw: Flywheel, rnd: Round) -> None:
    """Every candidate re-executed with the real tools and re-graded."""
    rnd.verdicts = fw.verifier.verify(rnd.candidates)
    for v in rnd.verdicts:
        name = v.candidate.strategy
        if v.ok:
            rnd.stats[name]["accepted"] += 1
        else:
            rnd.stats[name]["rejected"] += 1
            rnd.rejected_by[name][v.reason] += 1


def merge(fw: Flywheel, rnd: Round) -> None:
    """Samples, then the best ``keep_per_parent`` accepted edits per (parent, strategy), into
    the de-duplicated pool; ``rnd.added`` is what the pool did not hold yet."""
    rnd.added = [s for s in rnd.samples if fw.pool.add(s)]
    accepted: dict[str, list[Verdict]] = defaultdict(list)
    for v in rnd.verdicts:
        if v.ok:
            accepted[v.candidate.key].append(v)
    for key in accepted:
        for v in sorted(accepted[key], key=lambda v: v.candidate.rank)[: fw.cfg.keep_per_parent]:
            if fw.pool.add(v.traj):
                rnd.added.append(v.traj)
                rnd.stats[v.candidate.strategy]["added"] += 1


Step = Callable[[Flywheel, Round], None]
#: One round, in order (the order of the engine's sampling calls: keep it).
ROUND_STEPS: tuple[Step, ...] = (sample, split, propose, verify, merge)
