"""Plain data records that flow between stages: examples in, trajectories out.

Every record serialises to one JSON line and back without loss
(``Trajectory.from_json(t.to_json()) == t``). Stages exchange JSONL files of these.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Iterator

from etagent import protocol

MATH, QA = "math", "qa"
DOMAINS = (MATH, QA)  # the built-in answer domains; etagent.grading.register_domain adds more


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
    domain: str  # math | qa
    source: str  # benchmark or suite name
    split: str = "test"
    plan: list[PlanStep] | None = None  # None = unknown (real benchmarks)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from etagent.grading import DOMAIN_RULES  # the grader owns the domains (built-ins: DOMAINS)

        if self.domain not in DOMAIN_RULES:
            raise ValueError(f"Example {self.id!r}: domain must be one of {tuple(DOMAIN_RULES)}, got {self.domain!r}")
        if self.plan is not None:
            self.plan = [p if isinstance(p, PlanStep) else PlanStep(**p) for p in self.plan]

    @property
    def answer(self) -> str:
        return self.answers[0] if self.answers else ""

    @property
    def plan_calls(self) -> int | None:
        return None if self.plan is None else len(self.plan)

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


# tool-call statuses
OK, ERROR, TIMEOUT, INVALID, BUDGET = "ok", "error", "timeout", "invalid", "budget"
CALL_STATUSES = (OK, ERROR, TIMEOUT, INVALID, BUDGET)


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

    # derived quantities -------------------------------------------------------
    @property
    def num_calls(self) -> int:
        return len(self.tool_calls)

    @property
    def num_failed_calls(self) -> int:
        return sum(c.failed for c in self.tool_calls)

    @property
    def model_tokens(self) -> int:
        return protocol.model_token_length(self.response_mask)

    @property
    def format_ok(self) -> bool:
        return not self.format_errors

    def parsed(self, grammar: "protocol.Grammar | None" = None) -> protocol.ParsedResponse:
        """The response parsed with ``grammar`` (the run's tool set's; default: python + search)."""
        return (grammar or protocol.default_grammar()).parse(self.response_text)

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
