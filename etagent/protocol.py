"""The tool-integrated-reasoning tag grammar. The one module that knows the tags.

A response (what follows the prompt) is a sequence of

* free text and ``<think>..</think>`` blocks (the model's reasoning),
* tool calls ``<python>..</python>`` / ``<search>..</search>``, each followed by an
  environment-injected ``<result>\\n..\\n</result>`` block,
* exactly one final ``<answer>..\\boxed{X}..</answer>``, after which only whitespace
  may follow.

Everything else in etagent (sampler stop strings, tool dispatch, loss masks, reward
format penalty, behaviour analysis, verl export) asks this module instead of
repeating tag strings. Parsing never raises: malformed model output is reported as
a list of :class:`FormatError` so callers can count and penalise it.

Departure from the official code: the official SFT trains on tool-result tokens; we
mask ``<result>`` blocks (tags included, since the environment writes them) in every
stage, and the model-token length excludes them (cf. OpenRLHF PR 1252).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

THINK, PYTHON, SEARCH, RESULT, ANSWER = "think", "python", "search", "result", "answer"
TEXT = "text"
TAGS: tuple[str, ...] = (THINK, PYTHON, SEARCH, RESULT, ANSWER)
TOOL_TAGS: tuple[str, ...] = (PYTHON, SEARCH)


def open_tag(kind: str) -> str:
    return f"<{kind}>"


def close_tag(kind: str) -> str:
    return f"</{kind}>"


#: Generation stops after any of these (the tool-call closers and the answer closer).
CALL_STOP_STRINGS: tuple[str, ...] = tuple(close_tag(t) for t in TOOL_TAGS)
ANSWER_STOP_STRING: str = close_tag(ANSWER)
STOP_STRINGS: tuple[str, ...] = CALL_STOP_STRINGS + (ANSWER_STOP_STRING,)
#: Strings a tokenizer should treat as atomic tokens (tiny tokenizer adds them).
TAG_TOKENS: tuple[str, ...] = tuple(s for t in TAGS for s in (open_tag(t), close_tag(t)))

_TAG_RE = re.compile(r"<(/?)(" + "|".join(TAGS) + r")>")
_ANY_TAG_RE = re.compile(r"</?([A-Za-z_][A-Za-z0-9_\-]*)>")

SYSTEM_PROMPT = (
    "You are a helpful assistant that solves problems by reasoning step by step and "
    "using tools when they help. Think inside <think> </think>. To run Python code, "
    "write it inside <python> </python>; to search for information, write a query "
    "inside <search> </search>. The tool output will be returned inside <result> "
    "</result>. Use a tool only when it is needed, and avoid repeating calls. Give the "
    "final answer inside <answer> </answer>, with the answer in \\boxed{}, e.g. "
    "<answer>The answer is \\boxed{42}</answer>."
)


@dataclass(frozen=True)
class Segment:
    """A span of a response. ``kind`` is ``text`` or one of :data:`TAGS`.

    ``content`` is the text between the tags (or the raw text for ``text``);
    ``closed`` is False for a block whose closing tag never came.
    """

    kind: str
    content: str
    start: int
    end: int
    closed: bool = True

    def render(self) -> str:
        if self.kind == TEXT:
            return self.content
        return open_tag(self.kind) + self.content + (close_tag(self.kind) if self.closed else "")


@dataclass(frozen=True)
class FormatError:
    code: str  # machine-readable: unclosed, nested, unmatched_close, unknown_tag, ...
    message: str
    position: int = -1

    def __str__(self) -> str:  # pragma: no cover - trivial
        return f"{self.code}@{self.position}: {self.message}"


@dataclass
class ParsedResponse:
    segments: list[Segment]
    errors: list[FormatError] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors

    def calls(self) -> list[Segment]:
        """Tool calls with both tags (the official ``count_valid_tags`` rule): an unclosed
        opener or a stray closer is not a call."""
        return [s for s in self.segments if s.kind in TOOL_TAGS and s.closed]

    def call_counts(self) -> dict[str, int]:
        counts = {t: 0 for t in TOOL_TAGS}
        for s in self.calls():
            counts[s.kind] += 1
        return counts

    @property
    def num_calls(self) -> int:
        return len(self.calls())

    def answer_segments(self) -> list[Segment]:
        return [s for s in self.segments if s.kind == ANSWER]

    def answer(self) -> str | None:
        """Content of the last ``\\boxed{}`` in the last answer block (None if absent)."""
        answers = self.answer_segments()
        if not answers:
            return None
        return extract_boxed(answers[-1].content)

    def render(self) -> str:
        return render(self.segments)


def parse(text: str) -> ParsedResponse:
    """Split ``text`` into ordered segments and collect every grammar violation.

    Inside an open block only its own closing tag ends it; any other protocol tag met
    there is reported as ``nested`` and kept as content, so the span structure stays
    well defined for garbage input.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    segments: list[Segment] = []
    errors: list[FormatError] = []
    pos = 0
    open_kind: str | None = None
    open_start = 0
    content_start = 0
    for m in _TAG_RE.finditer(text):
        is_close, kind = m.group(1) == "/", m.group(2)
        if open_kind is None:
            if is_close:
                errors.append(FormatError("unmatched_close", f"{m.group(0)} without an opening tag", m.start()))
                continue  # keep as part of the surrounding text
            if m.start() > pos:
                segments.append(Segment(TEXT, text[pos : m.start()], pos, m.start()))
            open_kind, open_start, content_start = kind, m.start(), m.end()
        else:
            if is_close and kind == open_kind:
                segments.append(Segment(kind, text[content_start : m.start()], open_start, m.end()))
                open_kind = None
                pos = m.end()
            else:
                errors.append(
                    FormatError("nested", f"{m.group(0)} inside an open <{open_kind}> block", m.start())
                )
    if open_kind is not None:
        segments.append(Segment(open_kind, text[content_start:], open_start, len(text), closed=False))
        errors.append(FormatError("unclosed", f"<{open_kind}> is never closed", open_start))
    elif pos < len(text):
        segments.append(Segment(TEXT, text[pos:], pos, len(text)))
    # Leading/trailing pieces of text that contained stray closers must still be
    # covered; rebuild text segments for any gap left by skipped unmatched closers.
    segments = _fill_gaps(text, segments)
    errors.extend(_grammar_errors(segments))
    errors.sort(key=lambda e: e.position)
    return ParsedResponse(segments, errors)


def _fill_gaps(text: str, segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    pos = 0
    for s in segments:
        if s.start > pos:
            out.append(Segment(TEXT, text[pos : s.start], pos, s.start))
        out.append(s)
        pos = s.end
    if pos < len(text):
        out.append(Segment(TEXT, text[pos:], pos, len(text)))
    # merge adjacent text segments
    merged: list[Segment] = []
    for s in out:
        if merged and s.kind == TEXT and merged[-1].kind == TEXT:
            prev = merged.pop()
            merged.append(Segment(TEXT, prev.content + s.content, prev.start, s.end))
        else:
            merged.append(s)
    return merged


#: Format rule sets (``reward.format_rules``). ``official`` is the released
#: ``validate_format``: balanced tags, at least one ``<think>`` pair, exactly one answer
#: block with ``\\boxed{}``, every call followed by its result. ``strict`` (etagent's
#: default) also rejects the codes in :data:`STRICT_ONLY_CODES`: tags outside the protocol
#: (``<code>``: a model that invents tags gets no credit for a valid format) and text after
#: ``</answer>`` (the official check only counts tags, so trailing rambling passes there).
FORMAT_RULES: tuple[str, ...] = ("strict", "official")
STRICT_ONLY_CODES: frozenset[str] = frozenset({"unknown_tag", "text_after_answer"})


def rule_errors(codes: Iterable[str], rules: str = "strict") -> list[str]:
    """The error codes that count as format violations under ``rules`` (strict | official)."""
    if rules not in FORMAT_RULES:
        raise ValueError(f"format rules must be one of {FORMAT_RULES}, got {rules!r}")
    codes = [str(c) for c in codes]
    return codes if rules == "strict" else [c for c in codes if c not in STRICT_ONLY_CODES]


def _grammar_errors(segments: Sequence[Segment]) -> list[FormatError]:
    errors: list[FormatError] = []
    if not any(s.kind == THINK and s.closed for s in segments):
        # official validate_format: at least one balanced <think></think> pair
        errors.append(FormatError("think_missing", "no <think>..</think> block", -1))
    answers = [s for s in segments if s.kind == ANSWER]
    if not answers:
        errors.append(FormatError("answer_missing", "no <answer> block", -1))
    elif len(answers) > 1:
        errors.append(FormatError("answer_repeated", f"{len(answers)} <answer> blocks", answers[1].start))
    if answers:
        first = answers[0]
        if first.closed and extract_boxed(first.content) is None:
            errors.append(FormatError("boxed_missing", "answer has no \\boxed{}", first.start))
        after = [s for s in segments if s.start >= first.end and s is not first]
        if any(s.kind != TEXT or s.content.strip() for s in after):
            errors.append(FormatError("text_after_answer", "content after </answer>", first.end))
    prev_meaningful: Segment | None = None
    for i, s in enumerate(segments):
        if s.kind in TOOL_TAGS and not s.content.strip():
            errors.append(FormatError("empty_call", f"empty <{s.kind}> call", s.start))
        if s.kind == RESULT and (prev_meaningful is None or prev_meaningful.kind not in TOOL_TAGS):
            errors.append(FormatError("orphan_result", "<result> not preceded by a tool call", s.start))
        if s.kind in TOOL_TAGS and s.closed:
            nxt = next((t for t in segments[i + 1 :] if not (t.kind == TEXT and not t.content.strip())), None)
            if nxt is None or nxt.kind != RESULT:
                errors.append(FormatError("call_without_result", f"<{s.kind}> call has no <result>", s.start))
        if s.kind in (TEXT, THINK):
            for m in _ANY_TAG_RE.finditer(s.content):
                if m.group(1) not in TAGS:
                    errors.append(
                        FormatError("unknown_tag", f"unknown tag {m.group(0)}", s.start + m.start())
                    )
        if not (s.kind == TEXT and not s.content.strip()):
            prev_meaningful = s
    return errors


def validate(text: str, rules: str = "strict") -> list[FormatError]:
    """Every format error of ``text`` under ``rules`` (empty list: the grammar is respected)."""
    errors = parse(text).errors
    keep = set(rule_errors([e.code for e in errors], rules))
    return [e for e in errors if e.code in keep]


def is_valid(text: str, rules: str = "strict") -> bool:
    return not validate(text, rules)


def render(segments: Iterable[Segment]) -> str:
    return "".join(s.render() for s in segments)


def count_tool_calls(text: str) -> dict[str, int]:
    return parse(text).call_counts()


def last_call(text: str) -> Segment | None:
    """The trailing closed tool call of a partial response (what the sampler stopped on)."""
    segs = parse(text).segments
    while segs and segs[-1].kind == TEXT and not segs[-1].content.strip():
        segs = segs[:-1]
    if segs and segs[-1].kind in TOOL_TAGS and segs[-1].closed:
        return segs[-1]
    return None


def extract_boxed(text: str | None) -> str | None:
    """Content of the last ``\\boxed{..}`` (or ``\\fbox{..}``) with balanced braces."""
    if not text:
        return None
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = text.find("{", idx)
    if i < 0:
        # "\boxed 5" form
        rest = text[idx:].split(None, 1)
        return rest[1].split("$")[0].strip() if len(rest) > 1 and rest[0] == "\\boxed" else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


_ESCAPE_RE = re.compile(r"<(/?)(" + "|".join(TAGS) + r")>")


def escape_tool_output(body: str) -> str:
    """Neutralise protocol tags inside tool output so it cannot close or open blocks."""
    return _ESCAPE_RE.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}&gt;", body)


def format_result(body: str) -> str:
    """The block the environment appends after a tool call."""
    return f"{open_tag(RESULT)}\n{escape_tool_output(body.strip())}\n{close_tag(RESULT)}"


def format_answer(answer: str, prefix: str = "") -> str:
    return f"{open_tag(ANSWER)}{prefix}\\boxed{{{answer}}}{close_tag(ANSWER)}"


def format_call(kind: str, query: str) -> str:
    return f"{open_tag(kind)}{query}{close_tag(kind)}"


def format_tool_turn(kind: str, query: str, body: str) -> str:
    """A call and its result exactly as a rollout produces them: the sampler stops at the
    call's closer and the environment appends :func:`format_result` right after it.

    The one text format of a tool turn: teacher data, flywheel edits, rollouts and the verl
    export all write it this way, so training text and inference-time sequences agree token
    for token (``tests/test_format_parity.py``).
    """
    return format_call(kind, query) + format_result(body)


# --------------------------------------------------------------------------- tokens


class Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def split_for_mask(text: str) -> list[tuple[str, int]]:
    """Split a response into (piece, mask) pieces: result blocks get mask 0.

    Splitting happens at tag boundaries so that, with tags as atomic tokens,
    encoding piecewise equals what a sampler produces (sampled ids + injected ids).
    """
    pieces: list[tuple[str, int]] = []
    pos = 0
    for s in parse(text).segments:
        if s.kind == RESULT:
            if s.start > pos:
                pieces.append((text[pos : s.start], 1))
            pieces.append((text[s.start : s.end], 0))
            pos = s.end
    if pos < len(text):
        pieces.append((text[pos:], 1))
    return pieces


def encode_response(tokenizer: Encoder, text: str) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 model token, 0 injected result) for a response text.

    Used for teacher-written and flywheel-edited trajectories; sampled trajectories
    keep the ids they were sampled with and never go through this.
    """
    ids: list[int] = []
    mask: list[int] = []
    for piece, m in split_for_mask(text):
        piece_ids = list(tokenizer.encode(piece, add_special_tokens=False))
        ids.extend(piece_ids)
        mask.extend([m] * len(piece_ids))
    return ids, mask


def model_token_length(mask: Sequence[int]) -> int:
    """Tokens the model generated (tool results excluded) given a response mask."""
    return int(sum(1 for m in mask if m))


def parse_ids(ids: Sequence[int], tokenizer) -> ParsedResponse:
    """Parse a response given as token ids (decoded keeping tag tokens)."""
    return parse(tokenizer.decode(list(ids), skip_special_tokens=False))
