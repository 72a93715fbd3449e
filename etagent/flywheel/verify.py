"""Verification gate: no edited trajectory enters the pool unchecked.

For each candidate response text (an edit, a rewrite or a continuation):

1. grammar: the run's :meth:`etagent.protocol.Grammar.validate` (a missing ``<result>`` after a
   call is tolerated on input, since LLM rewrites may omit them; results are re-inserted);
2. tools: every remaining call is re-executed with the real :class:`ToolSet`; its
   ``<result>`` block is replaced by the fresh one; a failed call rejects the candidate
   (``allow_failed_calls``; a reflection on an aborted call may keep that call, which the
   hint or reflection step reacts to: ``Candidate.kept_failures``), and so does a fresh result that differs from the one the
   text was conditioned on (``require_same_results``: the later reasoning would no longer
   follow from what the tool says);
3. answer: re-extracted and re-graded by the flywheel's grader; math must be correct, QA needs
   F1 >= its threshold (``flywheel.min_correct``);
4. grounding (edits that delete content only): answer tokens that came from the parent's
   tool results must still come from a remaining result.

Accepted candidates become new :class:`Trajectory` records, re-encoded with
:meth:`Grammar.encode_response` (result tokens masked) and carrying provenance in
``meta`` (round, strategy, parent_id). Rejections are returned with a reason so the loop
can count them per strategy. Departure from the official flywheel, which keeps data
without any verification (method-spec §3, known defects).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

from etagent import grading, protocol
from etagent.flywheel.textops import call_steps, salient_tokens
from etagent.records import OK, Example, ToolCall, Trajectory

ACCEPTED, FORMAT, TOOL_FAILED, RESULT_CHANGED, INCORRECT, UNGROUNDED = (
    "ok", "format", "tool_failed", "result_changed", "incorrect", "ungrounded")
REASONS = (ACCEPTED, FORMAT, TOOL_FAILED, RESULT_CHANGED, INCORRECT, UNGROUNDED)


@dataclass
class Candidate:
    """A proposed pool entry before verification."""

    example: Example
    parent: Trajectory
    text: str
    strategy: str
    rank: tuple = ()  # lower = preferred among candidates sharing ``key``
    check_grounding: bool = False  # True for edits that only delete parts of the parent
    meta: dict[str, Any] = field(default_factory=dict)  # extra provenance (round, evolver, fault ...)
    key: str = ""  # sibling group; default parent id + strategy
    # the first ``kept_failures`` calls may fail: a reflection on an aborted call keeps the
    # failed call and its result before the hint / reflection step (that is what it reacts to)
    kept_failures: int = 0

    def __post_init__(self) -> None:
        if not self.key:
            self.key = f"{self.parent.id}|{self.strategy}"


@dataclass
class Verdict:
    candidate: Candidate
    reason: str  # one of REASONS
    traj: Trajectory | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == ACCEPTED


def _norm(s: str) -> str:
    return " ".join(s.split())


def traj_id(example_id: str, strategy: str, round_: Any, text: str) -> str:
    digest = hashlib.sha1(f"{example_id}\n{text}".encode("utf-8")).hexdigest()[:10]
    return f"{example_id}-r{round_}-{strategy}-{digest}"


class Verifier:
    """Re-execute, re-grade, format-check; build accepted trajectories.

    ``grader``: the flywheel's (the run's grader with the ``min_correct`` threshold): it grades
    the answer and decides whether it is correct. ``grammar``: the run's (parse, validate, encode).
    """

    def __init__(
        self,
        toolset: Any,
        tokenizer: Any,
        grader: grading.Grader,
        grammar: protocol.Grammar,
        *,
        require_same_results: bool = True,
        allow_failed_calls: bool = False,
        max_result_chars: int | None = None,
        result_sep: str = "",
        label_fn: Callable[..., dict] | None = None,
    ):
        self.toolset = toolset
        self.tokenizer = tokenizer
        self.grader = grader
        self.grammar = grammar
        self.require_same_results = require_same_results
        self.allow_failed_calls = allow_failed_calls
        self.max_result_chars = max_result_chars
        self.result_sep = result_sep  # what the engine puts between a call and its result
        self.label_fn = label_fn

    # ------------------------------------------------------------------ helpers
    def is_correct(self, example: Example, score: float) -> bool:
        return self.grader.is_success(example.domain, score)

    def _output(self, res: Any) -> str:
        out = res.output or ""
        if self.max_result_chars:
            from etagent.tools.base import truncate_text

            out, _ = truncate_text(out, self.max_result_chars)
        return out

    def complete_prefix(self, prefix: str) -> str:
        """Append the fresh result to a prefix that ends with a closed, unanswered call
        (used when an evolver writes a new step that ends in a call)."""
        call = self.grammar.last_call(prefix)
        if call is None:
            return prefix
        (res,) = self.toolset.execute([(call.kind, call.content)])
        return prefix + self.result_sep + self.grammar.format_result(self._output(res))

    # ------------------------------------------------------------------ main
    def verify(self, candidates: list[Candidate]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(candidates)
        parsed_all: list[Any] = []
        calls: list[tuple[str, str]] = []
        spans: list[tuple[int, int]] = []
        for i, cand in enumerate(candidates):
            parsed = self.grammar.parse(cand.text)
            errs = [e for e in parsed.errors if e.code != "call_without_result"]
            parsed_all.append(parsed)
            if errs:
                verdicts[i] = Verdict(cand, FORMAT, detail="; ".join(str(e) for e in errs[:3]))
                spans.append((len(calls), len(calls)))
                continue
            start = len(calls)
            calls.extend((s.kind, s.content) for s in parsed.segments if s.kind in self.grammar.tool_tags)
            spans.append((start, len(calls)))
        results = self.toolset.execute(calls) if calls else []
        for i, cand in enumerate(candidates):
            if verdicts[i] is None:
                a, b = spans[i]
                verdicts[i] = self._check(cand, parsed_all[i], results[a:b])
        return verdicts  # type: ignore[return-value]

    def _check(self, cand: Candidate, parsed: protocol.ParsedResponse, results: list[Any]) -> Verdict:
        segs = parsed.segments
        steps = call_steps(segs, self.grammar)
        by_call = {st.call: st for st in steps}
        skip = {st.result for st in steps if st.result is not None}
        pieces: list[str] = []
        tool_calls: list[ToolCall] = []
        changed = failed = 0
        k = 0
        for i, s in enumerate(segs):
            if i in skip:
                continue
            pieces.append(s.render())
            if i in by_call:
                res = results[k]
                k += 1
                out = self._output(res)
                st = by_call[i]
                if st.result is not None:
                    old = segs[st.result].content
                    between = "".join(x.render() for x in segs[i + 1 : st.result])
                    pieces.append(between)
                    if _norm(old) != _norm(self.grammar.escape_tool_output(out.strip())):
                        changed += 1
                else:
                    pieces.append(self.result_sep)
                pieces.append(self.grammar.format_result(out))
                # the blank text between call and result was already emitted
                if st.result is not None:
                    skip.update(range(i + 1, st.result))
                tool_calls.append(ToolCall(s.kind, s.content, out, res.status, float(res.wall_s)))
                failed += res.status != OK and len(tool_calls) > cand.kept_failures
        text = "".join(pieces)
        errs = self.grammar.validate(text)
        if errs:
            return Verdict(cand, FORMAT, detail="; ".join(str(e) for e in errs[:3]))
        if failed and not self.allow_failed_calls:
            return Verdict(cand, TOOL_FAILED, detail=f"{failed} call(s) failed on re-execution")
        if changed and self.require_same_results:
            return Verdict(cand, RESULT_CHANGED, detail=f"{changed} result(s) differ on re-execution")
        answer = grading.block_answer(text, self.grammar)  # the same answer-block-only credit as the rollout engine
        score = float(self.grader(cand.example, answer))
        if not self.is_correct(cand.example, score):
            return Verdict(cand, INCORRECT, detail=f"answer {answer!r} scores {score:.2f}")
        if cand.check_grounding:
            missing = self._ungrounded(cand, answer, tool_calls)
            if missing:
                return Verdict(cand, UNGROUNDED, detail=f"answer tokens {sorted(missing)} lost their tool result")
        return Verdict(cand, ACCEPTED, traj=self._build(cand, text, tool_calls, answer, score))

    @staticmethod
    def _ungrounded(cand: Candidate, answer: str | None, calls: list[ToolCall]) -> set[str]:
        ans = salient_tokens(answer or "") - salient_tokens(cand.example.question)
        parent_results = set().union(*(salient_tokens(c.result) for c in cand.parent.tool_calls)) if cand.parent.tool_calls else set()
        fresh = set().union(*(salient_tokens(c.result) for c in calls)) if calls else set()
        return (ans & parent_results) - fresh

    def _build(self, cand: Candidate, text: str, calls: list[ToolCall], answer: str | None, score: float) -> Trajectory:
        parent = cand.parent
        ids, mask = self.grammar.encode_response(self.tokenizer, text) if self.tokenizer is not None else ([], [])
        meta = {
            "round": cand.meta.get("round"),
            "strategy": cand.strategy,
            "parent_id": parent.id,
            **{k: v for k, v in cand.meta.items() if k != "round"},
        }
        traj = Trajectory(
            id=traj_id(parent.example_id, cand.strategy, meta["round"], text),
            example_id=parent.example_id,
            group_id=parent.group_id,
            response_text=text,
            prompt_ids=list(parent.prompt_ids),
            response_ids=ids,
            response_mask=mask,
            logprobs=None,
            tool_calls=calls,
            answer=answer,
            score=score,
            finish_reason="answer",
            format_errors=[],
            meta=meta,
        )
        if self.label_fn is not None:
            try:
                traj.behaviour = dict(self.label_fn(traj, cand.example))
            except Exception as exc:  # noqa: BLE001 - labels are diagnostics, never block data
                traj.behaviour = {"label_error": str(exc)}
        return traj
