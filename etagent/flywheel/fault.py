"""Locate the first faulty step of an incorrect trajectory (model-free).

Returns a :class:`Fault`: the character offset where the response is cut (the policy
continues from ``text[:pos]``) and a fault type that selects the hint template.

Rules, first match wins:

1. ``aborted``: the first tool call that failed (error, timeout, invalid, over budget);
   cut right after that call's result, so a hint or a reflection step follows what the
   failed code actually returned (never placed before the code ran).
2. ``format``: the first grammar violation before the answer (unknown tag, nested tag,
   orphan result ...); cut at the start of the segment that holds it.
3. ``unfinished``: no ``<answer>`` (token or call budget ran out); cut after the last
   complete step so the continuation (which gets the extra call budget) can finish.
4. ``insufficient``: a wrong answer given without any successful tool call (the paper:
   most wrong trajectories are fixed by more tool interaction); cut before the reasoning
   that leads to ``<answer>``. No oracle: only the trajectory and its tool results are
   read, never ``example.plan`` nor plan-derived behaviour labels (those belong to
   measurement and to ``flywheel=oracle_upper_bound``).
5. ``erroneous``: otherwise the reasoning is wrong; cut before the final reasoning and
   answer (the paper's M3 judge would point at a step; the LLM evolver can do that).

Departure from the paper: the official flywheel asks a 72B judge for the faulty step;
this locator is the default (no oracle, no extra model); ``LLMEvolver.locate`` is the
paper's variant.
"""

from __future__ import annotations

from dataclasses import dataclass

from etagent import protocol
from etagent.flywheel.textops import call_steps, is_blank
from etagent.protocol import ANSWER, RESULT, TEXT, THINK
from etagent.records import Example, Trajectory

ABORTED, FORMAT, UNFINISHED, INSUFFICIENT, ERRONEOUS = "aborted", "format", "unfinished", "insufficient", "erroneous"
FAULT_TYPES = (ABORTED, FORMAT, UNFINISHED, INSUFFICIENT, ERRONEOUS)


@dataclass(frozen=True)
class Fault:
    pos: int  # cut offset in response_text: the policy continues from text[:pos]
    kind: str  # one of FAULT_TYPES
    step: int  # index of the faulty call step (0-based), len(calls) for the final step

    def prefix(self, text: str) -> str:
        return text[: self.pos]


def _successful_calls(traj: Trajectory) -> int:
    return sum(1 for c in traj.tool_calls if not c.failed)


def locate_fault(traj: Trajectory, example: Example, grammar: protocol.Grammar) -> Fault:
    """The first faulty step of ``traj`` (module docstring), its text parsed with the run's ``grammar``."""
    text = traj.response_text
    parsed = grammar.parse(text)
    segs = parsed.segments
    steps = call_steps(segs, grammar)

    # 1. first failed call: tool_calls are recorded in call order, one per call segment
    for i, call in enumerate(traj.tool_calls):
        if call.failed and i < len(steps):
            st = steps[i]
            end = segs[st.result].end if st.result is not None else segs[st.call].end
            return Fault(end, ABORTED, i)
    if traj.tool_calls and len(traj.tool_calls) > len(steps) and any(c.failed for c in traj.tool_calls):
        return Fault(len(text), ABORTED, len(steps))  # call records without text: cut at the end

    answers = [i for i, s in enumerate(segs) if s.kind == ANSWER]
    first_answer = answers[0] if answers else None
    answer_start = segs[first_answer].start if first_answer is not None else len(text)

    # 2. first grammar violation before the answer
    for err in parsed.errors:
        if 0 <= err.position < answer_start and err.code != "answer_missing":
            seg_i = next((k for k, s in enumerate(segs) if s.start <= err.position < max(s.end, s.start + 1)), None)
            pos = segs[seg_i].start if seg_i is not None else err.position
            return Fault(pos, FORMAT, sum(1 for st in steps if segs[st.call].start < pos))

    # 3. no answer: keep every complete step
    if first_answer is None:
        pos = 0
        for st in steps:
            if st.result is not None and segs[st.result].kind == RESULT:
                pos = segs[st.result].end
        return Fault(pos, UNFINISHED, len(steps))

    # cut point for 4/5: before the reasoning that leads to the answer
    k = first_answer - 1
    while k >= 0 and is_blank(segs[k]):
        k -= 1
    cut = segs[k].start if k >= 0 and segs[k].kind in (THINK, TEXT) else answer_start
    insufficient = _successful_calls(traj) == 0
    return Fault(cut, INSUFFICIENT if insufficient else ERRONEOUS, len(steps))


def tool_for_fault(example: Example, fault: Fault, traj: Trajectory, grammar: protocol.Grammar) -> str | None:
    """The tool a continuation most likely needs (picks the hint template): the failed
    call's kind, else the first tool whose spec lists the example's domain (math: python,
    qa: search). The plan's next tool is deliberately not used, so hints carry no oracle
    knowledge beyond the domain."""
    if fault.kind == ABORTED and fault.step < len(traj.tool_calls):
        kind = traj.tool_calls[fault.step].kind
        if kind in grammar.tool_tags:
            return kind
    return next((t.name for t in grammar.tools if example.domain in t.domains), None)
