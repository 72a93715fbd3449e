"""Plain data records that flow between stages: examples in, trajectories out.

Every record serialises to one JSON line and back without loss
(``Trajectory.from_json(t.to_json()) == t``). Stages exchange JSONL files of these.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Iterator

from etagent import protocol

#: the built-in answer domains' names; a run's domains (and their grading rules) are its task's
#: ``domains`` config (etagent.grading.DomainRule), so ``Example.domain`` is checked there
MATH, QA = "math", "qa"


@dataclass
class PlanStep:
    """One step of a minimal tool plan (synthetic tasks only).

    ``tool`` is ``python`` or ``search``; ``query`` is a call that achieves the step;
    ``expect`` is the value the step must surface (a number, or the entity the
    result names) so behaviour analysis can tell whether the needed result was seen.
    """

    tool: str
    query: str
    expect: str


@dataclass
class Example:
    id: str
    question: str
    answers: list[str]  # gold aliases; the first is canonical
    domain: str  # an answer domain of the task (built-in: math | qa)
    source: str  # benchmark or suite name
    split: str = "test"
    plan: list[PlanStep] | None = None  # None = unknown (real benchmarks)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # which domains exist is the task's config (its domain rules): checked where examples are
        # loaded and by the Grader; a record only needs a name
        if not isinstance(self.domain, str) or not self.domain:
            raise ValueError(f"Example {self.id!r}: domain must be a non-empty string, got {self.domain!r}")
        if self.plan is not None:
            self.plan = [p if isinstance(p, PlanStep) else PlanStep(**p) for p in self.plan]

    @property
    def answer(self) -> str:
        return self.answers[0] if self.answers else ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        return cls(**d)

    @classmethod
    def from_json(cls, line: str) -> "Example":
        return cls.from_dict(json.loads(line))


# tool-call statuses: a tool answered (ok, error, timeout), the call was malformed or named no
# configured tool (invalid), or the call budget refused it (budget)
OK, ERROR, TIMEOUT, INVALID, BUDGET = "ok", "error", "timeout", "invalid", "budget"
CALL_STATUSES = (OK, ERROR, TIMEOUT, INVALID, BUDGET)
EXECUTED_STATUSES = (OK, ERROR, TIMEOUT)


@dataclass
class ToolCall:
    kind: str  # python | search | anything the model wrote
    query: str
    result: str
    status: str  # one of CALL_STATUSES
    wall_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status != OK


@dataclass
class Trajectory:
    """One sampled (or edited) response to one example.

    ``response_ids``/``response_mask`` are the exact ids the trainer sees: sampled ids
    (mask 1) plus injected tool-result ids (mask 0). ``response_text`` is for humans
    and for text-level tools; it is never re-encoded for training of sampled data.
    """

    id: str
    example_id: str
    group_id: str
    response_text: str
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    score: float = 0.0  # graded correctness: math 0/1, QA F1 or EM; success is etagent.grading.Grader's call
    finish_reason: str = ""  # answer | budget | max_tokens | error | stop | eos
    format_errors: list[str] = field(default_factory=list)
    behaviour: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # provenance: round, strategy, parent_id

    def __post_init__(self) -> None:
        self.tool_calls = [c if isinstance(c, ToolCall) else ToolCall(**c) for c in self.tool_calls]

    # Tool-call counts: one name per meaning, defined here and nowhere else.
    # * n_calls(grammar): the official count (released ``count_valid_tags``): paired tool tags of the
    #   run's grammar in the text, whatever happened to the call. The reward's k (f_tool), the
    #   metrics' calls per trajectory, the behaviour labels' n_calls, logged call means.
    # * n_executed: calls that actually ran (a tool answered: ok, error, timeout); calls refused by
    #   the budget and invalid ones are not. The Pareto statistics (released data_process.py).
    # * n_ok: calls that ran and succeeded (the behaviour labels' useful-call comparisons).
    def n_calls(self, grammar: "protocol.Grammar") -> int:
        return grammar.parse(self.response_text).num_calls

    @property
    def n_executed(self) -> int:
        return sum(c.status in EXECUTED_STATUSES for c in self.tool_calls)

    @property
    def n_ok(self) -> int:
        return sum(c.status == OK for c in self.tool_calls)

    @property
    def model_tokens(self) -> int:
        return protocol.model_token_length(self.response_mask)

    @property
    def format_ok(self) -> bool:
        return not self.format_errors

    def parsed(self, grammar: "protocol.Grammar") -> protocol.ParsedResponse:
        """The response parsed with ``grammar`` (the run's)."""
        return grammar.parse(self.response_text)

    # serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        if "correct" in d and "score" not in d:  # records written before the rename (correct -> score)
            d = {("score" if k == "correct" else k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Trajectory record has unknown keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, line: str) -> "Trajectory":
        return cls.from_dict(json.loads(line))


def read_jsonl(path, cls) -> Iterator[Any]:
    """Yield records of ``cls`` from a JSONL file; a bad line names file and line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield cls.from_json(line)
            except Exception as exc:  # noqa: BLE001 - re-raised with location
                raise ValueError(f"{path}:{lineno}: cannot read {cls.__name__}: {exc}") from exc


def write_jsonl(path, records: Iterable[Any]) -> int:
    """Write records atomically (temp file + rename). Returns the count written."""
    from etagent.utils.io import atomic_write_text

    lines = [r.to_json() for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
