"""The four flywheel operations, each a pluggable :class:`Strategy` selected by name.

Enhancement (applies to correct trajectories):

* ``modify_redundancy`` — model-free: drop tool calls that repeat an earlier successful
  call (same kind + normalised query), that failed, or whose result contributes no new
  salient token (:mod:`etagent.salient`) to any later model-written text; also drop the
  reasoning segment directly before a dropped call when none of its own tokens are used
  later ("reasoning that only served it"). For a failed call the reasoning before it is
  kept (its retry needs it) and the follow-up reacting to the failure ("That failed. Let
  me fix it.") goes instead, so the edit reads coherently. Repeats until nothing more can
  be dropped.
* ``global_refine`` — a shorter rewrite of the whole trajectory, delegated to the evolver
  (policy: low-temperature re-sampling, keep shorter verified; llm: prompted rewrite;
  oracle: minimal plan).

Reflection (applies to incorrect trajectories):

* ``self_correct`` — cut at the first faulty step (evolver.locate), optionally insert the
  evolver's corrected step (policy evolver: none), and let the policy continue with
  ``extra_calls`` more calls per kind (official ADDITIONAL_*_TIMES = 4).
* ``hint_injection`` — same cut, insert a short hint, let the policy continue. The hint
  stays in the training text by default (``keep_hint_in_data``), as in the official data
  where the M2-written hint is part of the kept trajectory; set it False to strip the
  hint after the continuation (the trajectory then reads as spontaneous self-correction).

Strategies only *propose* :class:`Candidate` texts; the loop verifies them all
(:mod:`etagent.flywheel.verify`). Departure from the paper: the policy evolver replaces
the 72B M2/M3 models by the policy itself plus model-free edits (no oracle leaks).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from etagent import protocol
from etagent.flywheel.fault import Fault
from etagent.flywheel.textops import (
    call_steps,
    cost,
    edit_dedup_key,
    is_blank,
    normalise_response,
    salient_tokens,
)
from etagent.flywheel.verify import Candidate, Verifier
from etagent.protocol import RESULT, TEXT, THINK
from etagent.records import Example, Trajectory

CORRECT, INCORRECT = "correct", "incorrect"
Item = tuple[Example, Trajectory]


@dataclass
class EvolveContext:
    """What a strategy may use in one round (``grammar``: the run's, the engine's and verifier's)."""

    engine: Any  # RolloutEngine
    verifier: Verifier
    evolver: Any  # evolvers.Evolver
    grammar: protocol.Grammar
    round: int = 1
    extra_calls: int = 4
    continuations: int = 2  # policy samples per reflection prefix
    temperature: float = 1.0
    keep_hint_in_data: bool = True
    seed: int | None = None  # base sampling seed (None: backend randomness)
    # flywheel.hints=official: the released fixed hint strings per answer domain (None: the evolver writes hints)
    official_hints: dict[str, list[str]] | None = None
    stats: Counter = field(default_factory=Counter)  # "<strategy>/<event>" -> count
    _faults: dict[str, Fault] = field(default_factory=dict)
    _n_sampling: int = 0

    def faults(self, items: list[Item]) -> list[Fault]:
        """Faulty steps, located once per trajectory per round (shared by both reflections)."""
        todo = [it for it in items if it[1].id not in self._faults]
        if todo:
            for (_, t), f in zip(todo, self.evolver.locate(todo)):
                self._faults[t.id] = f
        return [self._faults[t.id] for _, t in items]

    def sampling_params(self, temperature: float | None = None, n: int | None = None):
        from etagent.backends.base import SamplingParams

        seed = None
        if self.seed is not None:  # a distinct, reproducible seed per sampling call of the round
            self._n_sampling += 1
            seed = self.seed * 1_000_003 + self.round * 1009 + self._n_sampling
        return SamplingParams(n=n or self.continuations, seed=seed,
                              temperature=self.temperature if temperature is None else temperature)

    def continue_from(self, items: list[Item], prefixes: list[str], group_tag: str,
                      n: int | None = None, temperature: float | None = None) -> list[list[str]]:
        """Policy continuations of each prefix; returns full response texts per item."""
        if not items:
            return []
        n = n or self.continuations
        outs = self.engine.rollout(
            [ex for ex, _ in items], n, self.sampling_params(temperature, n), prefixes=prefixes,
            extra_calls=self.extra_calls, group_prefix=f"fw{self.round}-{group_tag}-",
        )
        if len(outs) != len(items) * n:
            raise RuntimeError(f"engine.rollout returned {len(outs)} trajectories for {len(items)} prefixes x n={n}")
        texts: list[list[str]] = []
        for i, prefix in enumerate(prefixes):
            texts.append([full_text(prefix, o.response_text) for o in outs[i * n : (i + 1) * n]])
        return texts


def full_text(prefix: str, out: str) -> str:
    """The engine may return the continuation with or without the prefix; normalise to full."""
    return out if out.startswith(prefix) else prefix + out


class Strategy:
    name: str = ""
    target: str = CORRECT

    def propose(self, items: list[Item], ctx: EvolveContext) -> list[Candidate]:  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------- enhancement


@dataclass
class Removal:
    call_index: int  # ordinal of the call in the original response
    kind: str
    query: str
    reason: str  # duplicate | failed | unused


def remove_redundant(text: str, question: str, grammar: protocol.Grammar, statuses: list[str] | None = None,
                     remove_failed: bool = True) -> tuple[str, list[Removal]]:
    """Model-free redundancy edit (see module docstring), on ``text`` parsed with the run's
    ``grammar``. Returns (new text, removals)."""
    segs = grammar.parse(text).segments
    call_ord = {}
    for i, s in enumerate(segs):
        if s.kind in grammar.tool_tags:
            call_ord[i] = len(call_ord)
    statuses = list(statuses or [])
    q_tokens = salient_tokens(question)
    removed: set[int] = set()
    removals: list[Removal] = []
    while True:
        live = [i for i in range(len(segs)) if i not in removed]
        view = [segs[i] for i in live]
        victim = None
        seen_ok: set[tuple[str, str]] = set()
        for st in call_steps(view, grammar):
            ci = live[st.call]
            call = segs[ci]
            status = statuses[call_ord[ci]] if call_ord[ci] < len(statuses) else "ok"
            key = (call.kind, edit_dedup_key(call.kind, call.content, grammar))
            end = st.result if st.result is not None else st.call
            before = view[: st.call]
            after = view[end + 1 :]
            later = salient_tokens(" ".join(s.content for s in after if s.kind != RESULT))
            if key in seen_ok:
                victim = (st, "duplicate")
            elif remove_failed and status != "ok":
                victim = (st, "failed")
            elif st.result is not None:
                known = q_tokens | salient_tokens(call.content) | salient_tokens(" ".join(s.content for s in before))
                new = salient_tokens(view[st.result].content) - known
                if not (new & later):
                    victim = (st, "unused")
            if victim:
                break
            if status == "ok" and st.result is not None:
                seen_ok.add(key)
        if victim is None:
            break
        st, reason = victim
        ci = live[st.call]
        drop = {st.call}
        if st.result is not None:
            drop.update(range(st.call + 1, st.result + 1))
            nxt = st.result + 1
            if nxt < len(view) and is_blank(view[nxt]):
                drop.add(nxt)
        end = st.result if st.result is not None else st.call

        def spare(j: int) -> bool:  # never drop the last <think>: the format requires one
            return view[j].kind != THINK or any(s.kind == THINK and k != j and k not in drop for k, s in enumerate(view))

        if reason == "failed":
            # the reasoning before a failed call is what its retry needs: keep it; drop the
            # follow-up that reacts to the failure ("That failed. Let me fix it.") instead
            nxt = end + 1
            while nxt < len(view) and is_blank(view[nxt]):
                nxt += 1
            if nxt < len(view) and view[nxt].kind in (THINK, TEXT) and spare(nxt):
                later = salient_tokens(" ".join(s.content for s in view[nxt + 1 :] if s.kind != RESULT))
                if not ((salient_tokens(view[nxt].content) - q_tokens) & later):
                    drop.update(range(end + 1, nxt + 1))
        elif st.reasoning is not None:
            rs = view[st.reasoning]
            later = salient_tokens(" ".join(s.content for s in view[end + 1 :] if s.kind != RESULT))
            own = salient_tokens(rs.content) - q_tokens - salient_tokens(segs[ci].content)
            if not (own & later) and spare(st.reasoning):
                drop.update(range(st.reasoning, st.call))
        removed.update(live[j] for j in drop)
        removals.append(Removal(call_ord[ci], segs[ci].kind, segs[ci].content, reason))
    new_text = protocol.render(segs[i] for i in range(len(segs)) if i not in removed)
    return new_text, removals


def redundant_step_start(text: str, removal: Removal, grammar: protocol.Grammar) -> int:
    """Where the step of a removed call begins: its reasoning for a duplicate/unused call (that
    reasoning only served it), the call itself for a failed one (the retry keeps the reasoning)."""
    segs = grammar.parse(text).segments
    steps = call_steps(segs, grammar)
    st = steps[removal.call_index]
    if removal.reason != "failed" and st.reasoning is not None:
        return segs[st.reasoning].start
    return segs[st.call].start


class ModifyRedundancy(Strategy):
    """Enhancement on correct trajectories: (a) the rule edit (redundant steps deleted,
    verified with grounding); (b) the paper's mechanics: the trajectory is cut where the
    first redundant step began (the step replaced by nothing leaner than "no call") and the
    policy continues from there with the extra call budget; kept only when shorter."""

    name, target = "modify_redundancy", CORRECT

    def __init__(self, remove_failed: bool = True, continue_after_cut: bool = True):
        self.remove_failed = remove_failed
        self.continue_after_cut = continue_after_cut

    def propose(self, items: list[Item], ctx: EvolveContext) -> list[Candidate]:
        g = ctx.grammar
        out = []
        todo: list[Item] = []
        prefixes: list[str] = []
        for ex, traj in items:
            text, removals = remove_redundant(
                traj.response_text, ex.question, g, [c.status for c in traj.tool_calls], self.remove_failed
            )
            if not removals or normalise_response(text, g) == normalise_response(traj.response_text, g):
                ctx.stats[f"{self.name}/nothing_to_remove"] += 1
                continue
            out.append(Candidate(
                ex, traj, text, self.name, rank=cost(text, g), check_grounding=True,
                meta={"round": ctx.round, "removed": [r.__dict__ for r in removals], "level": "rule"},
            ))
            first = min(removals, key=lambda r: r.call_index)
            todo.append((ex, traj))
            prefixes.append(traj.response_text[: redundant_step_start(traj.response_text, first, g)])
        if self.continue_after_cut and todo and ctx.engine is not None:
            for (ex, traj), prefix, texts in zip(todo, prefixes, ctx.continue_from(todo, prefixes, self.name)):
                seen = set()
                for text in texts:
                    key = normalise_response(text, g)
                    if key in seen or cost(text, g) >= cost(traj.response_text, g):
                        ctx.stats[f"{self.name}/continuation_not_shorter"] += 1
                        continue
                    seen.add(key)
                    out.append(Candidate(ex, traj, text, self.name, rank=cost(text, g),
                                         meta={"round": ctx.round, "level": "continue", "cut": len(prefix)}))
        return out


class GlobalRefine(Strategy):
    name, target = "global_refine", CORRECT

    def propose(self, items: list[Item], ctx: EvolveContext) -> list[Candidate]:
        return ctx.evolver.refine(items, ctx) if items else []


# --------------------------------------------------------------------------- reflection


class _Reflect(Strategy):
    target = INCORRECT

    def insertions(self, items: list[Item], faults: list[Fault], ctx: EvolveContext) -> list[str]:
        raise NotImplementedError

    def propose(self, items: list[Item], ctx: EvolveContext) -> list[Candidate]:
        if not items:
            return []
        faults = ctx.faults(items)
        inserts = self.insertions(items, faults, ctx)
        prefixes = []
        for (_, traj), fault, ins in zip(items, faults, inserts):
            prefix = fault.prefix(traj.response_text) + ins
            prefixes.append(ctx.verifier.complete_prefix(prefix) if ins else prefix)
        conts = ctx.continue_from(items, prefixes, self.name)
        g = ctx.grammar
        out: list[Candidate] = []
        for (ex, traj), fault, ins, prefix, texts in zip(items, faults, inserts, prefixes, conts):
            seen = set()
            for text in texts:
                text = self.finalise(text, traj, fault, ins, prefix, ctx)
                key = normalise_response(text, g)
                if key in seen:
                    continue
                seen.add(key)
                out.append(Candidate(
                    ex, traj, text, self.name, rank=cost(text, g),
                    meta={"round": ctx.round, "fault": fault.kind, "fault_step": fault.step,
                          "inserted": ins, "evolver": getattr(ctx.evolver, "name", "")},
                    kept_failures=g.parse(fault.prefix(traj.response_text)).num_calls,
                ))
        return out

    def finalise(self, text: str, traj: Trajectory, fault: Fault, ins: str, prefix: str, ctx: EvolveContext) -> str:
        return text


class SelfCorrect(_Reflect):
    name = "self_correct"

    def insertions(self, items, faults, ctx):
        return ctx.evolver.corrections(items, faults)


def official_hint(traj: Trajectory, example: Example, hints: dict[str, list[str]], seed: int | None, round_: int) -> str:
    """One of the released fixed hints for the question's domain (``flywheel/src/prompts.py``
    ``Python_Hints`` for math sources, ``Search_Hints`` otherwise, drawn with ``random.choice`` in
    ``flywheel/src/sample_processor.py``), drawn reproducibly per trajectory and round; "" if the
    domain has none."""
    import random

    pool = hints.get(example.domain) or []
    return random.Random(f"{seed}:{round_}:{traj.id}").choice(pool) if pool else ""


class HintInjection(_Reflect):
    name = "hint_injection"

    def insertions(self, items, faults, ctx):
        if ctx.official_hints is None:
            return ctx.evolver.hints(items, faults)
        # the released hint text after the faulty step, written as the evolver writes its hints
        fmt = getattr(ctx.evolver, "hint_format", "{hint}")
        return [fmt.format(hint=h.strip()) if h.strip() else ""
                for h in (official_hint(t, ex, ctx.official_hints, ctx.seed, ctx.round) for ex, t in items)]

    def finalise(self, text, traj, fault, ins, prefix, ctx):
        if ctx.keep_hint_in_data or not ins:
            return text
        cut = fault.pos
        if text[cut : cut + len(ins)] == ins:  # strip the hint, keep what the policy wrote after it
            return text[:cut] + text[cut + len(ins) :]
        return text


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    ModifyRedundancy.name: ModifyRedundancy,
    GlobalRefine.name: GlobalRefine,
    SelfCorrect.name: SelfCorrect,
    HintInjection.name: HintInjection,
}


def build_strategies(names: list[str]) -> list[Strategy]:
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ValueError(f"flywheel.strategies: unknown {unknown} (known: {sorted(STRATEGIES)})")
    return [STRATEGIES[n]() for n in names]
