"""Text-level helpers shared by the flywheel strategies: steps, salient tokens, costs.

A *step* is the reasoning that precedes one tool call, the call, and its ``<result>``;
the final step is the reasoning before ``<answer>`` plus the answer. All functions are
pure and work on response text through the run's :class:`etagent.protocol.Grammar` (passed
in: a configured tool's calls are calls here too), so they apply to sampled, teacher-written
and LLM-rewritten text alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from etagent import protocol
from etagent.protocol import RESULT, TEXT, THINK, Segment

from etagent.salient import STOPWORDS, salient_tokens  # noqa: F401 - the one shared notion


def is_blank(seg: Segment) -> bool:
    return seg.kind == TEXT and not seg.content.strip()


def model_text(segments: list[Segment]) -> str:
    """Everything the model wrote (tool results excluded), as one string."""
    return " ".join(s.content for s in segments if s.kind != RESULT)


def edit_dedup_key(kind: str, query: str, grammar: protocol.Grammar) -> str:
    """The flywheel's call identity when it removes repeated calls from a trajectory
    (``remove_redundant``): whitespace collapsed; case folded for tools whose spec says
    ``case_sensitive=False`` (search).

    Deliberately stricter than the tool's canonical query key (``ToolSpec.normalise_query``,
    used by the behaviour labels): it keeps punctuation and python's inner spaces, so the
    flywheel removes only near-verbatim repeats; switching it to the canonical key would change
    which edits the flywheel makes (and its numbers).
    """
    q = " ".join(query.split())
    spec = grammar.spec(kind)
    return q if spec is None or spec.case_sensitive else q.lower()


_TAG_SPACE_RES: dict[tuple[str, ...], re.Pattern] = {}


def normalise_response(text: str, grammar: protocol.Grammar) -> str:
    """Pool de-duplication key: whitespace runs collapsed, whitespace around the grammar's tags dropped."""
    pattern = _TAG_SPACE_RES.get(grammar.tags)
    if pattern is None:
        pattern = _TAG_SPACE_RES[grammar.tags] = re.compile(r"\s*(</?(?:" + "|".join(grammar.tags) + r")>)\s*")
    return pattern.sub(r"\1", " ".join((text or "").split()))


def cost(text: str, grammar: protocol.Grammar) -> tuple[int, int]:
    """(tool calls, characters the model wrote) — smaller is more efficient."""
    parsed = grammar.parse(text)
    return parsed.num_calls, len(model_text(parsed.segments).strip())


@dataclass
class CallStep:
    """Indices into a segment list for one tool call."""

    call: int  # the <python>/<search> segment
    result: int | None  # its <result> segment (None when missing)
    reasoning: int | None  # think/text segment directly before the call (None when absent)


def call_steps(segments: list[Segment], grammar: protocol.Grammar) -> list[CallStep]:
    steps: list[CallStep] = []
    for i, s in enumerate(segments):
        if s.kind not in grammar.tool_tags:
            continue
        j = i + 1
        while j < len(segments) and is_blank(segments[j]):
            j += 1
        result = j if j < len(segments) and segments[j].kind == RESULT else None
        k = i - 1
        while k >= 0 and is_blank(segments[k]):
            k -= 1
        reasoning = k if k >= 0 and segments[k].kind in (THINK, TEXT) else None
        steps.append(CallStep(i, result, reasoning))
    return steps


def split_steps(text: str, grammar: protocol.Grammar) -> list[str]:
    """Cut a response into steps at the start of each step's reasoning (text kept verbatim).

    ``"".join(split_steps(t, g)) == t``; used to number steps for an LLM evolver.
    """
    segments = grammar.parse(text).segments
    cuts = [0]
    for st in call_steps(segments, grammar):
        start = segments[st.reasoning].start if st.reasoning is not None else segments[st.call].start
        end = segments[st.result].end if st.result is not None else segments[st.call].end
        if start > cuts[-1]:
            cuts.append(start)
        cuts.append(end)
    cuts = sorted(set(c for c in cuts if 0 <= c <= len(text)))
    pieces = [text[a:b] for a, b in zip(cuts, cuts[1:] + [len(text)])]
    # merge pieces that are pure whitespace into their predecessor
    merged: list[str] = []
    for p in pieces:
        if merged and not p.strip():
            merged[-1] += p
        elif p:
            merged.append(p)
    return merged
