"""The tool-integrated-reasoning tag grammar. The one module that knows how tags combine.

A response (what follows the prompt) is a sequence of

* free text and ``<think>..</think>`` blocks (the model's reasoning),
* tool calls ``<T>..</T>`` (one tag per configured tool: ``<python>``, ``<search>`` in the
  default config), each followed by an environment-injected ``<result>\\n..\\n</result>`` block,
* exactly one final ``<answer>..\\boxed{X}..</answer>``, after which only whitespace
  may follow.

The tool tags are not constants here: each tool class owns a :class:`ToolSpec` (its tag,
the system-prompt clause describing it, its query normaliser, its hints) and a
:class:`Grammar` is built from the configured tools' specs (``ToolSet.grammar``,
``etagent.tools.config_grammar``; a run has one, :class:`etagent.runenv.RunEnv`); it derives
the tags, the stop strings, the tokenizer's atomic tag tokens and the system prompt. There is
no default grammar: whatever parses, stops on, counts or writes tags is handed the run's
grammar. The module-level functions here are the tool-independent ones (tag strings,
``\\boxed{}`` extraction, answer and call formatting, format rule sets).

Everything else in etagent (sampler stop strings, tool dispatch, loss masks, reward
format penalty, behaviour analysis, verl export and agent loop) asks a ``Grammar`` instead of
repeating tag strings. Parsing never raises: malformed model output is reported as a list of
:class:`FormatError` so callers can count and penalise it.

Departure from the official code: the official SFT trains on tool-result tokens; we
mask ``<result>`` blocks (tags included, since the environment writes them) in every
stage, and the model-token length excludes them (cf. OpenRLHF PR 1252).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

THINK, RESULT, ANSWER = "think", "result", "answer"
TEXT = "text"
#: tags every grammar has; tool tags come from the tools (:class:`ToolSpec`)
RESERVED_TAGS: tuple[str, ...] = (THINK, RESULT, ANSWER, TEXT)
_TAG_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def open_tag(kind: str) -> str:
    return f"<{kind}>"


def close_tag(kind: str) -> str:
    return f"</{kind}>"


ANSWER_STOP_STRING: str = close_tag(ANSWER)

_ANY_TAG_RE = re.compile(r"</?([A-Za-z_][A-Za-z0-9_\-]*)>")

_SYSTEM_HEAD = (
    "You are a helpful assistant that solves problems by reasoning step by step and "
    "using tools when they help. Think inside <think> </think>."
)
_SYSTEM_TAIL = (
    "The tool output will be returned inside <result> "
    "</result>. Use a tool only when it is needed, and avoid repeating calls. Give the "
    "final answer inside <answer> </answer>, with the answer in \\boxed{}, e.g. "
    "<answer>The answer is \\boxed{42}</answer>."
)


def collapse_whitespace(query: str) -> str:
    """The default canonical query: whitespace runs collapsed to one space."""
    return " ".join(str(query).split())


@dataclass(frozen=True, eq=False)
class ToolSpec:
    """What the grammar and the analyses need to know about one tool; owned by the tool class
    (``spec`` class attribute) so that adding a tool touches only its class and its YAML node.

    * ``name``: the tag the model writes (``<name>query</name>``) and the ``ToolSet`` key;
    * ``prompt``: the system-prompt clause, lower-case, mentioning ``<name> </name>``
      (clauses of all tools are joined with ``"; "`` into one sentence);
    * ``normalise_query``: the tool's canonical query key: two calls with the same key are the
      same call (behaviour labels count the second as redundant);
    * ``case_sensitive``: whether the flywheel's edit-dedup key keeps case
      (:func:`etagent.flywheel.textops.edit_dedup_key`);
    * ``hints``: fault kind (``insufficient``, ``aborted``) -> hint text the flywheel's
      template evolver injects when a continuation most likely needs this tool;
    * ``domains``: answer domains (``math``, ``qa``) whose faulty trajectories most likely need
      this tool (picks the hint when the fault names no tool).
    """

    name: str
    prompt: str
    normalise_query: Callable[[str], str] = collapse_whitespace
    case_sensitive: bool = True
    hints: Mapping[str, str] = field(default_factory=dict)
    domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _TAG_NAME_RE.fullmatch(self.name or "") or self.name in RESERVED_TAGS:
            raise ValueError(f"tool name {self.name!r} must match {_TAG_NAME_RE.pattern} and not be one of "
                             f"{RESERVED_TAGS}")
        if f"{open_tag(self.name)} {close_tag(self.name)}" not in self.prompt:
            raise ValueError(f"tool {self.name!r}: its prompt must show the call as "
                             f"'{open_tag(self.name)} {close_tag(self.name)}', got {self.prompt!r}")


def generic_spec(name: str) -> ToolSpec:
    """A spec for a tool object that declares none (test doubles, third-party objects)."""
    return ToolSpec(name, f"to call {name}, write its input inside {open_tag(name)} {close_tag(name)}")


def compose_system_prompt(tools: Sequence[ToolSpec]) -> str:
    """The system prompt for a tool set: the fixed head, one sentence made of the tools'
    clauses (``"To a; b."``), the fixed tail."""
    clauses = "; ".join(t.prompt for t in tools)
    tool_sentence = f" {clauses[:1].upper()}{clauses[1:]}." if clauses else ""
    return f"{_SYSTEM_HEAD}{tool_sentence} {_SYSTEM_TAIL}"


@dataclass(frozen=True)
class Segment:
    """A span of a response. ``kind`` is ``text``, ``think``, ``result``, ``answer`` or a tool tag.

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
    errors: list[FormatError]
    #: the tool tags of the grammar that parsed it
    tool_tags: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.errors

    def calls(self) -> list[Segment]:
        """Tool calls with both tags (the official ``count_valid_tags`` rule): an unclosed
        opener or a stray closer is not a call."""
        return [s for s in self.segments if s.kind in self.tool_tags and s.closed]

    def call_counts(self) -> dict[str, int]:
        counts = {t: 0 for t in self.tool_tags}
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


#: Format rule sets (``reward.format_rules``). ``strict`` (etagent's default) is the grammar of
#: :meth:`Grammar.parse`: balanced, un-nested blocks, at least one ``<think>`` pair, exactly one
#: answer block with ``\\boxed{}``, every call followed by its result, no tag outside the protocol
#: (``<code>``; read outside ``<think>`` only, so ``a<b>`` or ``<br>`` in reasoning is text) and
#: no text after ``</answer>``. ``official`` is exactly the language of the released
#: ``validate_format`` (:func:`official_format_errors`), which only counts and orders tag strings.
FORMAT_RULES: tuple[str, ...] = ("strict", "official")
#: strict codes the released validator has no rule for (it accepts what they flag)
STRICT_ONLY_CODES: frozenset[str] = frozenset({"unknown_tag", "text_after_answer"})


def rule_errors(codes: Iterable[str], rules: str = "strict") -> list[str]:
    """The stored (strict) error codes that count under ``rules``. Only ``strict`` can be judged from
    codes: the released validator reads the text (:func:`official_format_errors`)."""
    if rules not in FORMAT_RULES:
        raise ValueError(f"format rules must be one of {FORMAT_RULES}, got {rules!r}")
    if rules != "strict":
        raise ValueError("format rules 'official' read the response text: use official_format_errors(text, tool_tags)")
    return [str(c) for c in codes]


def official_format_errors(text: str, tool_tags: Sequence[str]) -> list[FormatError]:
    """The released ``validate_format`` (``ARPO/verl_arpo_entropy/verl/utils/reward_score/validate_format.py``,
    same in ``reward_score/math.py``) as a list of at most one error, written from its behaviour and
    generalised from python/search to the grammar's ``tool_tags``. It counts and orders tag strings
    only: ``<think>`` and ``</think>`` equally often and at least once; exactly one ``<answer>`` and one
    ``</answer>``; from each tool opener, the first closer after it, then the first ``<result>`` after
    the opener and the first ``</result>`` after that, in this order; the answer opener before its
    closer with ``\\boxed{`` and a ``}`` between them. So it accepts an empty call, nested
    ``<think>``, an orphan ``<result>``, a ``<think>`` between a call and its result, unknown tags and
    text after the answer."""
    text = text if isinstance(text, str) else ("" if text is None else str(text))
    if text.count("<think>") != text.count("</think>"):
        return [FormatError("think_unpaired", "<think> and </think> counts differ")]
    if text.count("<think>") == 0:
        return [FormatError("think_missing", "no <think>..</think>")]
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return [FormatError("answer_count", "not exactly one <answer> and one </answer>")]
    for tag in tool_tags:
        opener, closer, pos = open_tag(tag), close_tag(tag), 0
        while True:
            start = text.find(opener, pos)
            if start == -1:
                break
            result = text.find("<result>", start)
            end = text.find(closer, start)
            result_end = text.find("</result>", result) if result != -1 else -1
            if -1 in (result, end, result_end):
                return [FormatError("call_incomplete", f"{opener} without its closer or result", start)]
            if not start < end < result < result_end:
                return [FormatError("call_order", f"{opener} call and result out of order", start)]
            pos = result_end
    a0, a1 = text.find("<answer>"), text.find("</answer>")
    if a0 > a1:
        return [FormatError("answer_order", "</answer> before <answer>", a1)]
    inside = text[a0:a1]
    if "\\boxed{" not in inside or "}" not in inside:
        return [FormatError("boxed_missing", "answer has no \\boxed{}", a0)]
    return []


class Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


class Grammar:
    """The tag grammar of one tool set: tags, stop strings, tag tokens, system prompt, parser.

    Built from the tools' :class:`ToolSpec` s in tool-set order (``ToolSet.grammar``,
    ``etagent.tools.config_grammar``). Two grammars with the same tool names in
    the same order parse identically.
    """

    def __init__(self, tools: Sequence[ToolSpec]):
        tools = tuple(tools)
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        self.tools: tuple[ToolSpec, ...] = tools
        self.specs: dict[str, ToolSpec] = {t.name: t for t in tools}
        self.tool_tags: tuple[str, ...] = tuple(names)
        self.tags: tuple[str, ...] = (THINK, *self.tool_tags, RESULT, ANSWER)
        #: generation stops after any of these (the tool-call closers and the answer closer)
        self.call_stop_strings: tuple[str, ...] = tuple(close_tag(t) for t in self.tool_tags)
        self.stop_strings: tuple[str, ...] = self.call_stop_strings + (ANSWER_STOP_STRING,)
        #: strings a tokenizer should treat as atomic tokens
        self.tag_tokens: tuple[str, ...] = tuple(s for t in self.tags for s in (open_tag(t), close_tag(t)))
        #: call closer -> tool kind (``</python>`` -> ``python``)
        self.call_kind: dict[str, str] = {close_tag(t): t for t in self.tool_tags}
        self.system_prompt: str = compose_system_prompt(tools)
        self._tag_re = re.compile(r"<(/?)(" + "|".join(self.tags) + r")>")

    def __repr__(self) -> str:
        return f"Grammar(tools={self.tool_tags})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grammar) and other.tool_tags == self.tool_tags and \
            other.system_prompt == self.system_prompt

    __hash__ = None  # type: ignore[assignment]

    def spec(self, kind: str) -> ToolSpec | None:
        return self.specs.get(kind)

    def canonical_query(self, kind: str, query: str) -> str:
        """The tool's canonical query key (:attr:`ToolSpec.normalise_query`); whitespace
        collapsed for a kind this grammar does not know."""
        spec = self.specs.get(kind)
        return (spec.normalise_query if spec is not None else collapse_whitespace)(query)

    # ------------------------------------------------------------------ parsing
    def parse(self, text: str) -> ParsedResponse:
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
        for m in self._tag_re.finditer(text):
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
        errors.extend(self._grammar_errors(segments))
        errors.sort(key=lambda e: e.position)
        return ParsedResponse(segments, errors, self.tool_tags)

    def _grammar_errors(self, segments: Sequence[Segment]) -> list[FormatError]:
        tool_tags, tags = self.tool_tags, self.tags
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
            if s.kind in tool_tags and not s.content.strip():
                errors.append(FormatError("empty_call", f"empty <{s.kind}> call", s.start))
            if s.kind == RESULT and (prev_meaningful is None or prev_meaningful.kind not in tool_tags):
                errors.append(FormatError("orphan_result", "<result> not preceded by a tool call", s.start))
            if s.kind in tool_tags and s.closed:
                nxt = next((t for t in segments[i + 1 :] if not (t.kind == TEXT and not t.content.strip())), None)
                if nxt is None or nxt.kind != RESULT:
                    errors.append(FormatError("call_without_result", f"<{s.kind}> call has no <result>", s.start))
            if s.kind == TEXT:  # reasoning inside <think> may write a<b> or <br>: text, not tags
                for m in _ANY_TAG_RE.finditer(s.content):
                    if m.group(1) not in tags:
                        errors.append(
                            FormatError("unknown_tag", f"unknown tag {m.group(0)}", s.start + m.start())
                        )
            if not (s.kind == TEXT and not s.content.strip()):
                prev_meaningful = s
        return errors

    def validate(self, text: str, rules: str = "strict") -> list[FormatError]:
        """Every format error of ``text`` under ``rules`` (empty list: the grammar is respected)."""
        if rules not in FORMAT_RULES:
            raise ValueError(f"format rules must be one of {FORMAT_RULES}, got {rules!r}")
        if rules == "official":
            return official_format_errors(text, self.tool_tags)
        return self.parse(text).errors

    def is_valid(self, text: str, rules: str = "strict") -> bool:
        return not self.validate(text, rules)

    def count_tool_calls(self, text: str) -> dict[str, int]:
        return self.parse(text).call_counts()

    def last_call(self, text: str) -> Segment | None:
        """The trailing closed tool call of a partial response (what the sampler stopped on)."""
        segs = self.parse(text).segments
        while segs and segs[-1].kind == TEXT and not segs[-1].content.strip():
            segs = segs[:-1]
        if segs and segs[-1].kind in self.tool_tags and segs[-1].closed:
            return segs[-1]
        return None

    # ------------------------------------------------------------------ writing
    def escape_tool_output(self, body: str) -> str:
        """Neutralise protocol tags inside tool output so it cannot close or open blocks."""
        return self._tag_re.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}&gt;", body)

    def format_result(self, body: str) -> str:
        """The block the environment appends after a tool call."""
        return f"{open_tag(RESULT)}\n{self.escape_tool_output(body.strip())}\n{close_tag(RESULT)}"

    def format_tool_turn(self, kind: str, query: str, body: str) -> str:
        """A call and its result exactly as a rollout produces them: the sampler stops at the
        call's closer and the environment appends :meth:`format_result` right after it.

        The one text format of a tool turn: teacher data, flywheel edits, rollouts and the verl
        agent loop all write it this way, so training text and inference-time sequences agree
        token for token (``tests/test_format_parity.py``).
        """
        return format_call(kind, query) + self.format_result(body)

    # ------------------------------------------------------------------ tokens
    def split_for_mask(self, text: str) -> list[tuple[str, int]]:
        """Split a response into (piece, mask) pieces: result blocks get mask 0.

        Splitting happens at tag boundaries so that, with tags as atomic tokens,
        encoding piecewise equals what a sampler produces (sampled ids + injected ids).
        """
        pieces: list[tuple[str, int]] = []
        pos = 0
        for s in self.parse(text).segments:
            if s.kind == RESULT:
                if s.start > pos:
                    pieces.append((text[pos : s.start], 1))
                pieces.append((text[s.start : s.end], 0))
                pos = s.end
        if pos < len(text):
            pieces.append((text[pos:], 1))
        return pieces

    def encode_response(self, tokenizer: Encoder, text: str) -> tuple[list[int], list[int]]:
        """Token ids and loss mask (1 model token, 0 injected result) for a response text.

        Used for teacher-written and flywheel-edited trajectories; sampled trajectories
        keep the ids they were sampled with and never go through this.
        """
        ids: list[int] = []
        mask: list[int] = []
        for piece, m in self.split_for_mask(text):
            piece_ids = list(tokenizer.encode(piece, add_special_tokens=False))
            ids.extend(piece_ids)
            mask.extend([m] * len(piece_ids))
        return ids, mask

    def parse_ids(self, ids: Sequence[int], tokenizer: Any) -> ParsedResponse:
        """Parse a response given as token ids (decoded keeping tag tokens)."""
        return self.parse(tokenizer.decode(list(ids), skip_special_tokens=False))


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


# --------------------------------------------------------------------------- tool-independent helpers


def render(segments: Iterable[Segment]) -> str:
    return "".join(s.render() for s in segments)


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


def format_answer(answer: str, prefix: str = "") -> str:
    return f"{open_tag(ANSWER)}{prefix}\\boxed{{{answer}}}{close_tag(ANSWER)}"


def format_call(kind: str, query: str) -> str:
    return f"{open_tag(kind)}{query}{close_tag(kind)}"


def model_token_length(mask: Sequence[int]) -> int:
    """Tokens the model generated (tool results excluded) given a response mask."""
    return int(sum(1 for m in mask if m))
