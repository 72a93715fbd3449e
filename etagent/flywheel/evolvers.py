"""Evolver roles: who locates faults, writes hints/corrections and rewrites trajectories.

* :class:`PolicyEvolver` (default, ``evolver=policy``): the policy itself plus model-free
  rules. ``locate`` = :func:`fault.locate_fault` (trajectory and tool results only, no
  plan); the correction is a generic reflection step (``reflection``) after which the
  policy writes the corrected step itself; hints come from templates in ``conf/evolver/policy.yaml``
  keyed by fault type and tool; ``refine`` re-samples the policy at low temperature and
  proposes the samples that are correct and *shorter* than the shortest correct original
  (fewer calls, then fewer model-written characters). Interpretation (ours): the paper's
  global refinement is an M3 rewrite; without a stronger model, the policy's own
  low-temperature samples are the rewrite candidates, and only shorter verified ones count.
* :class:`LLMEvolver` (``evolver=llm``): the paper's prompted operations with any
  :class:`GenerationBackend` (default: the policy's own backend; point ``backend`` at an
  ``openai`` node for a stronger M3). Prompts live in ``conf/evolver/llm.yaml``: whole
  rewrite, step-level refine (replace step k, policy continues), fault location (step k),
  hint writing and step correction. Unparseable replies fall back to the model-free rules.
  As released (``flywheel/src/prompts.py``, ``flywheel/src/sample_processor.py``): no prompt
  shows the gold answer (a template using ``{gold}`` is refused), and the whole-trajectory
  rewrite changes only the reasoning: a rewrite whose tool calls, results or answer differ
  from the original's, in order, is rejected (released ``refine_trajectory_whole_level`` has
  the evolver write the thinking between the original, verbatim actions).
* :class:`OracleEvolver` (``flywheel=oracle_upper_bound`` only): uses the synthetic world's
  minimal plan (``example.plan``) — the refine is the minimal-plan trajectory, the hint
  names the next planned call, the correction *is* that call. An upper bound for the
  ablation table, never a default: it leaks the solution into the training data.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from etagent import protocol
from etagent.flywheel.fault import Fault, locate_fault, tool_for_fault
from etagent.flywheel.textops import cost, normalise_response, split_steps
from etagent.flywheel.verify import Candidate
from etagent.records import Example, Trajectory

Item = tuple[Example, Trajectory]
#: how a hint is written into the trajectory (model text inside a think block)
DEFAULT_HINT_FORMAT = protocol.open_tag(protocol.THINK) + "{hint}" + protocol.close_tag(protocol.THINK)

#: the generic hint templates (keyed by fault type); tool-specific ones come from the tools' specs
GENERIC_HINTS: dict[str, str] = {
    "unfinished": "I should finish and give the answer.",
    "format": "I should follow the format.",
    "erroneous": "Let me check the result again.",
    "default": "Let me check the result again.",
}


def default_hints(grammar: protocol.Grammar) -> dict[str, str]:
    """The templates when ``evolver.hints`` is null: "<fault>.<tool>" from each of the grammar's
    tools' ``ToolSpec.hints``, then :data:`GENERIC_HINTS`."""
    return {**{f"{fault}.{t.name}": t.hints[fault] for fault in ("insufficient", "aborted")
               for t in grammar.tools if fault in t.hints}, **GENERIC_HINTS}


class Evolver:
    """Base: model-free fault location; no corrections; template hints; no refine.

    ``grammar``: the run's (fault location, step splitting, costs, the tools hints name).
    """

    name = "base"

    def __init__(self, hints: Mapping[str, str] | None = None, hint_format: str = DEFAULT_HINT_FORMAT, *,
                 grammar: protocol.Grammar):
        self.grammar = grammar
        self.hint_templates = dict(default_hints(grammar) if hints is None else hints)
        if "{hint}" not in hint_format:
            raise ValueError(f"evolver.hint_format must contain '{{hint}}', got {hint_format!r}")
        self.hint_format = hint_format

    def _cost(self, text: str) -> tuple[int, int]:
        return cost(text, self.grammar)

    def locate(self, items: list[Item]) -> list[Fault]:
        return [locate_fault(t, ex, self.grammar) for ex, t in items]

    def corrections(self, items: list[Item], faults: list[Fault]) -> list[str]:
        return ["" for _ in items]

    def template_hint(self, example: Example, traj: Trajectory, fault: Fault) -> str:
        tool = tool_for_fault(example, fault, traj, self.grammar)
        for key in (f"{fault.kind}.{tool}", fault.kind, "default"):
            if key in self.hint_templates:
                return self.hint_templates[key]
        return ""

    def hints(self, items: list[Item], faults: list[Fault]) -> list[str]:
        out = []
        for (ex, t), f in zip(items, faults):
            h = self.template_hint(ex, t, f)
            out.append(self.hint_format.format(hint=h) if h else "")
        return out

    def refine(self, items: list[Item], ctx: Any) -> list[Candidate]:
        return []


def _group_by_example(items: list[Item]) -> list[tuple[Example, list[Trajectory]]]:
    groups: dict[str, tuple[Example, list[Trajectory]]] = {}
    for ex, t in items:
        groups.setdefault(ex.id, (ex, []))[1].append(t)
    return list(groups.values())


DEFAULT_REFLECTION = "Wait, that step may be wrong. Let me look at it again and redo it."


class PolicyEvolver(Evolver):
    name = "policy"

    def __init__(self, refine_samples: int = 2, refine_temperature: float = 0.3,
                 hints: Mapping[str, str] | None = None, hint_format: str = DEFAULT_HINT_FORMAT,
                 reflection: str = DEFAULT_REFLECTION, *, grammar: protocol.Grammar):
        super().__init__(hints, hint_format, grammar=grammar)
        self.refine_samples = refine_samples
        self.refine_temperature = refine_temperature
        self.reflection = reflection

    def corrections(self, items: list[Item], faults: list[Fault]) -> list[str]:
        """Self-correction: a reflection step at the cut (written in the hint format, generic:
        it says *that* the step is questioned, not *what* to do -- that is a hint); the
        policy then writes the corrected step itself. Empty ``reflection``, or a cut before any
        step (nothing to reflect on yet): plain re-generation."""
        step = self.hint_format.format(hint=self.reflection) if self.reflection else ""
        return [step if t.response_text[: f.pos].strip() else "" for (_, t), f in zip(items, faults)]

    def refine(self, items: list[Item], ctx: Any) -> list[Candidate]:
        groups = _group_by_example(items)
        if not groups or self.refine_samples < 1:
            return []
        n = self.refine_samples
        exs = [ex for ex, _ in groups]
        outs = ctx.engine.rollout(exs, n, ctx.sampling_params(self.refine_temperature, n),
                                  group_prefix=f"fw{ctx.round}-refine-")
        if len(outs) != len(exs) * n:
            raise RuntimeError(f"engine.rollout returned {len(outs)} trajectories for {len(exs)} examples x n={n}")
        cands: list[Candidate] = []
        for i, (ex, trajs) in enumerate(groups):
            best = min(trajs, key=lambda t: self._cost(t.response_text))
            best_cost = self._cost(best.response_text)
            seen = set()
            for s in outs[i * n : (i + 1) * n]:
                c = self._cost(s.response_text)
                key = normalise_response(s.response_text, self.grammar)
                if c >= best_cost or key in seen or not ctx.verifier.is_correct(ex, s.score):
                    ctx.stats["global_refine/not_shorter_or_wrong"] += 1
                    continue
                seen.add(key)
                cands.append(Candidate(ex, best, s.response_text, "global_refine", rank=c,
                                       meta={"round": ctx.round, "evolver": self.name, "level": "whole"}))
        return cands


# --------------------------------------------------------------------------- LLM evolver

_STEP_RE = re.compile(r"STEP\s*[:#]?\s*(\d+)", re.I)


def _between(text: str, begin: str, end: str) -> str | None:
    i = text.find(begin)
    if i < 0:
        return None
    j = text.find(end, i + len(begin))
    return (text[i + len(begin) : j] if j >= 0 else text[i + len(begin) :]).strip("\n")


def _numbered(steps: list[str]) -> str:
    return "\n".join(f"[Step {k}]\n{s.strip()}" for k, s in enumerate(steps, 1))


#: the fields each LLM-evolver prompt may use: never the gold answer (no released evolver prompt shows it)
PROMPT_FIELDS: dict[str, frozenset[str]] = {
    "refine_whole": frozenset({"question", "trajectory", "begin", "end"}),
    "refine_step": frozenset({"question", "steps", "begin", "end"}),
    "locate_fault": frozenset({"question", "steps", "begin", "end"}),
    "write_hint": frozenset({"question", "prefix", "fault", "begin", "end"}),
    "correct_step": frozenset({"question", "prefix", "fault", "rest", "begin", "end"}),
}


def actions(text: str, grammar: protocol.Grammar) -> list[tuple[str, str]]:
    """The tool calls, their results and the answer of a response, in order: what a rewrite of the
    reasoning must leave as it is."""
    keep = set(grammar.tool_tags) | {protocol.RESULT, protocol.ANSWER}
    return [(s.kind, s.content.strip()) for s in grammar.parse(text).segments if s.kind in keep]


class LLMEvolver(Evolver):
    """The paper's prompted evolver; prompts are format strings from config (see yaml)."""

    name = "llm"

    def __init__(self, prompts: Mapping[str, str], backend: Any = None, temperature: float = 0.0,
                 max_new_tokens: int = 1024, whole_level: bool = True, step_level: bool = True,
                 locate_with_llm: bool = True, system_prompt: str | None = None,
                 begin_marker: str = "=== BEGIN ===", end_marker: str = "=== END ===",
                 hints: Mapping[str, str] | None = None, hint_format: str = DEFAULT_HINT_FORMAT, *,
                 grammar: protocol.Grammar):
        super().__init__(hints, hint_format, grammar=grammar)
        missing = [k for k in PROMPT_FIELDS if k not in prompts]
        if missing:
            raise ValueError(f"evolver.prompts is missing {missing} (conf/evolver/llm.yaml)")
        import string

        for key, allowed in PROMPT_FIELDS.items():
            used = {f for _, f, _, _ in string.Formatter().parse(str(prompts[key])) if f}
            if "gold" in used:
                raise ValueError(f"evolver.prompts.{key} uses {{gold}}: the evolver never sees the gold answer "
                                 "(no released evolver prompt does)")
            if used - allowed:
                raise ValueError(f"evolver.prompts.{key}: unknown field(s) {sorted(used - allowed)} "
                                 f"(allowed: {sorted(allowed)})")
        self.prompts = dict(prompts)
        self.backend = backend
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.whole_level = whole_level
        self.step_level = step_level
        self.locate_with_llm = locate_with_llm
        self.system_prompt = system_prompt
        self.begin, self.end = begin_marker, end_marker
        self._ctx_backend: Any = None

    # ---------------------------------------------------------------- chat
    def bind(self, backend: Any) -> None:
        """The policy's backend, used when no evolver backend was configured."""
        self._ctx_backend = backend

    def ask(self, prompts: list[str]) -> list[str]:
        backend = self.backend or self._ctx_backend
        if backend is None:
            raise RuntimeError("LLMEvolver has no backend: configure evolver.backend or bind() the policy's")
        if not prompts:
            return []
        from etagent.backends.base import SamplingParams
        from etagent.models.prompting import build_messages

        tok = backend.tokenizer
        ids = []
        for p in prompts:
            text = tok.apply_chat_template(build_messages(p, self.system_prompt), tokenize=False,
                                           add_generation_prompt=True)
            ids.append(list(tok.encode(text, add_special_tokens=False)))
        params = SamplingParams(n=1, temperature=self.temperature, max_new_tokens=self.max_new_tokens,
                                stop=(), logprobs=False)
        outs = backend.generate(ids, params)
        return [tok.decode(o[0].ids, skip_special_tokens=True) for o in outs]

    def _fmt(self, key: str, **kw: Any) -> str:
        return self.prompts[key].format(begin=self.begin, end=self.end, **kw)

    # ---------------------------------------------------------------- operations
    def locate(self, items: list[Item]) -> list[Fault]:
        base = super().locate(items)
        if not self.locate_with_llm or not items:
            return base
        steps = [split_steps(t.response_text, self.grammar) for _, t in items]
        replies = self.ask([self._fmt("locate_fault", question=ex.question, steps=_numbered(st))
                            for (ex, _), st in zip(items, steps)])
        out = []
        for f, st, reply in zip(base, steps, replies):
            m = _STEP_RE.search(reply)
            k = int(m.group(1)) if m else 0
            if 1 <= k <= len(st):
                out.append(Fault(sum(len(s) for s in st[: k - 1]), f.kind, k - 1))
            else:
                out.append(f)  # unparseable: keep the model-free location
        return out

    def hints(self, items: list[Item], faults: list[Fault]) -> list[str]:
        replies = self.ask([self._fmt("write_hint", question=item[0].question, prefix=f.prefix(item[1].response_text),
                                      fault=f.kind) for item, f in zip(items, faults)])
        fallback = super().hints(items, faults)
        out = []
        for reply, fb in zip(replies, fallback):
            line = next((ln.strip() for ln in reply.splitlines() if ln.strip()), "")
            line = re.sub(r"^HINT\s*:\s*", "", line, flags=re.I)
            line = self.grammar.escape_tool_output(line)  # a hint must not open/close blocks
            out.append(self.hint_format.format(hint=line) if line else fb)
        return out

    def corrections(self, items: list[Item], faults: list[Fault]) -> list[str]:
        replies = self.ask([self._fmt("correct_step", question=ex.question, prefix=f.prefix(t.response_text),
                                      fault=f.kind, rest=t.response_text[f.pos :])
                            for (ex, t), f in zip(items, faults)])
        return [self._step_text(r) for r in replies]

    def _step_text(self, reply: str) -> str:
        """A single replacement step: no answer, no result (results come from real tools)."""
        body = _between(reply, self.begin, self.end)
        if body is None:
            return ""
        segs = [s for s in self.grammar.parse(body).segments if s.kind not in (protocol.RESULT, protocol.ANSWER)]
        # keep up to and including the first call; the policy continues after its result
        kept = []
        for s in segs:
            kept.append(s)
            if s.kind in self.grammar.tool_tags:
                break
        return protocol.render(kept)

    def refine(self, items: list[Item], ctx: Any) -> list[Candidate]:
        cands: list[Candidate] = []
        if self.whole_level and items:
            replies = self.ask([self._fmt("refine_whole", question=ex.question, trajectory=t.response_text)
                                for ex, t in items])
            for (ex, t), reply in zip(items, replies):
                body = _between(reply, self.begin, self.end)
                if body is None or self._cost(body) >= self._cost(t.response_text):
                    ctx.stats["global_refine/not_shorter_or_unparsed"] += 1
                    continue
                if actions(body, self.grammar) != actions(t.response_text, self.grammar):  # only the reasoning may change
                    ctx.stats["global_refine/changed_actions"] += 1
                    continue
                cands.append(Candidate(ex, t, body.strip(), "global_refine", rank=self._cost(body), key=f"{t.id}|global_refine",
                                       meta={"round": ctx.round, "evolver": self.name, "level": "whole"}))
        if self.step_level and items:
            steps = [split_steps(t.response_text, self.grammar) for _, t in items]
            replies = self.ask([self._fmt("refine_step", question=ex.question, steps=_numbered(st))
                                for (ex, _), st in zip(items, steps)])
            todo, prefixes = [], []
            for item, st, reply in zip(items, steps, replies):
                m = _STEP_RE.search(reply)
                k = int(m.group(1)) if m else 0
                new = self._step_text(reply)
                if not (1 <= k <= len(st)) or not new:
                    ctx.stats["global_refine/step_unparsed"] += 1
                    continue
                todo.append(item)
                prefixes.append(ctx.verifier.complete_prefix("".join(st[: k - 1]) + new))
            for (ex, t), texts in zip(todo, ctx.continue_from(todo, prefixes, "refine-step", n=1)):
                for text in texts:
                    if self._cost(text) < self._cost(t.response_text):
                        cands.append(Candidate(ex, t, text, "global_refine", rank=self._cost(text), key=f"{t.id}|global_refine",
                                               meta={"round": ctx.round, "evolver": self.name, "level": "step"}))
        return cands


# --------------------------------------------------------------------------- oracle (upper bound)


class OracleEvolver(Evolver):
    """Synthetic-world upper bound: reads ``example.plan``. Never the default."""

    name = "oracle_upper_bound"

    def _next_step(self, ex: Example, t: Trajectory, f: Fault):
        if not ex.plan:
            return None
        done = sum(1 for c in t.tool_calls[: f.step] if not c.failed)
        return ex.plan[min(done, len(ex.plan) - 1)]

    def hints(self, items: list[Item], faults: list[Fault]) -> list[str]:
        out = []
        for (ex, t), f in zip(items, faults):
            step = self._next_step(ex, t, f)
            if step is None:
                out.append(super().hints([(ex, t)], [f])[0])
            else:
                out.append(self.hint_format.format(hint=f"I need to use {step.tool}: {step.query}"))
        return out

    def corrections(self, items: list[Item], faults: list[Fault]) -> list[str]:
        out = []
        for (ex, t), f in zip(items, faults):
            step = self._next_step(ex, t, f)
            out.append(protocol.format_call(step.tool, step.query) if step is not None else "")
        return out

    def refine(self, items: list[Item], ctx: Any) -> list[Candidate]:
        cands = []
        for ex, trajs in _group_by_example(items):
            if not ex.plan:
                continue
            text = ("<think>Follow the plan.</think>" + "".join(protocol.format_call(p.tool, p.query) for p in ex.plan)
                    + protocol.format_answer(ex.answer))
            best = min(trajs, key=lambda t: self._cost(t.response_text))
            if self._cost(text) < self._cost(best.response_text):
                cands.append(Candidate(ex, best, text, "global_refine", rank=self._cost(text),
                                       meta={"round": ctx.round, "evolver": self.name, "level": "plan"}))
        return cands
