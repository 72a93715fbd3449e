"""Scripted flawed teacher: writes full protocol responses for synthetic training questions.

It stands in for an instruct model before calibration: the tiny model is SFT'd on these
texts to become the seed agent. Each trajectory follows the example's minimal plan and
then gets flaws injected at configurable rates (per domain):

* ``redundant``: one or two unneeded calls: a verbatim repeat, a "verification" call
  (swapped operands / re-search of an entity already found), or a call on a question
  whose plan is empty;
* ``insufficient``: a needed call is skipped (2-hop: usually the second hop) and a wrong
  answer is guessed; only for questions with a non-empty plan;
* ``aborted``: a malformed call (python syntax/name error, empty search query) comes
  before the call it was meant to be, followed by a corrected retry (an empty search is
  the only protocol error, ``empty_call``, a teacher text can contain);
* ``erroneous``: every needed result is present but the written answer is wrong
  (one digit off, or a wrong entity).

Reading before answering (``restate_evidence``, on by default): after the result of a needed
search the teacher restates, in a ``<think>``, the sentence of the result it relies on (the
one naming the step's expected entity or value), e.g. ``<think>Zorvan Kell was born in Tavel
in 1950.</think>``. Answering then copies from a sentence the model itself just wrote, a
short induction-style copy, instead of picking one fact out of a multi-passage result
(measured in experiments/results/seed_agent/NOTES.md). A wrong (erroneous or insufficient)
trajectory restates nothing it could contradict.

``insufficient`` and ``erroneous`` exclude each other (u < ins -> insufficient, else
u < ins + err -> erroneous). Every tool result in a text is produced by executing the
call through a real ``ToolSet``; nothing is invented. Randomness is keyed by
(seed, example id, sample index), so a text never depends on the order of examples.

Departure from the paper: the paper's seed agent is Qwen2.5-7B-Instruct, whose flaws
are natural; here they are injected on purpose so the flywheel has something to fix.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

from etagent import protocol
from etagent.records import MATH, QA, Example, PlanStep

FLAWS: tuple[str, ...] = ("redundant", "insufficient", "aborted", "erroneous")
NEEDED, REDUNDANT, ABORTED = "needed", "redundant", "aborted"
ANSWER_PREFIX = "The answer is "
_CHUNK = 512  # calls per ToolSet.execute batch


@dataclass(frozen=True)
class FlawRates:
    """Per-trajectory probabilities of each flaw (among trajectories where it can occur)."""

    redundant: float = 0.0
    insufficient: float = 0.0
    aborted: float = 0.0
    erroneous: float = 0.0
    #: in a redundant trajectory, chance of each further redundant call (at most 3 in all)
    redundant_extra: float = 0.3

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"FlawRates.{k} must be in [0, 1], got {v}")
        if self.redundant_extra >= 1.0:
            raise ValueError("FlawRates.redundant_extra must be < 1")
        if self.insufficient + self.erroneous > 1.0:
            raise ValueError("FlawRates: insufficient + erroneous must be <= 1 (they exclude each other)")


#: Defaults tuned so the train split shows the paper's picture (see docs in conf/seed_agent).
DEFAULT_RATES: dict[str, FlawRates] = {
    MATH: FlawRates(redundant=0.18, insufficient=0.25, aborted=0.10, erroneous=0.07, redundant_extra=0.3),
    QA: FlawRates(redundant=0.75, insufficient=0.15, aborted=0.10, erroneous=0.07, redundant_extra=0.45),
}


@dataclass
class _Call:
    kind: str
    query: str
    role: str  # needed | redundant | aborted
    think: str  # written right before the call
    after: str = ""  # written right after its result (e.g. "That failed...")


@dataclass
class _Script:
    calls: list[_Call] = field(default_factory=list)
    answer: str = ""
    flaws: set[str] = field(default_factory=set)
    missing: int = 0  # plan calls never made
    opening: str = ""  # the thought of a response that makes no call


# --------------------------------------------------------------------------- wrong answers


def _change_digit(rng: random.Random, s: str) -> str:
    """One digit different (a leading digit never becomes 0)."""
    i = rng.randrange(len(s))
    choices = [d for d in "0123456789" if d != s[i] and not (i == 0 and d == "0" and len(s) > 1)]
    return s[:i] + rng.choice(choices) + s[i + 1 :]


def _guess_number(rng: random.Random, gold: str) -> str:
    """A plausible head-computed guess: right length, last 1-3 digits wrong."""
    k = min(len(gold), rng.randint(1, 3))
    for _ in range(20):
        tail = "".join(rng.choice("0123456789") for _ in range(k))
        guess = gold[:-k] + tail
        if guess != gold and not (len(guess) > 1 and guess[0] == "0"):
            return guess
    return _change_digit(rng, gold)


def _is_int(s: str) -> bool:
    return bool(re.fullmatch(r"-?\d+", s))


def _wrong_answer(rng: random.Random, ex: Example, guess: bool, bridge: str | None = None) -> str:
    gold = ex.answer
    bad = {a.strip().lower() for a in ex.answers}
    cands: list[str] = []
    if bridge is not None and rng.random() < 0.5:
        cands.append(bridge)  # the intermediate entity: a typical 2-hop slip
    if _is_int(gold):
        cands.append(_guess_number(rng, gold) if guess else _change_digit(rng, gold))
    else:
        cands += list(ex.meta.get("distractors") or [])
    for c in cands:
        if c.strip().lower() not in bad:
            return c
    return gold + " Jr" if not _is_int(gold) else str(int(gold) + 1)  # last resort, still wrong


# --------------------------------------------------------------------------- call variants


def _malformed(rng: random.Random, kind: str, query: str) -> str:
    if kind == "python":
        forms = [query[:-1], query.replace("print(", "prnt(", 1), query + ")"]
        return rng.choice([f for f in forms if f != query])
    # An empty query: the only search the tools report as failed (a misspelt name just gets
    # "No results found." with status ok, which behaviour labelling counts as redundant, not
    # aborted). It is the one deliberate grammar error (empty_call) a teacher text may hold.
    return ""


def _verify_query(rng: random.Random, step: PlanStep) -> str:
    """A different call that only re-derives what ``step`` already gave."""
    m = re.fullmatch(r"print\((\d+)([*+])(\d+)\)", step.query)
    if m:
        return f"print({m.group(3)}{m.group(2)}{m.group(1)})"
    return f"x = {step.query[6:-1]}\nprint(x)" if step.query.startswith("print(") else step.query


def _unneeded_call(ex: Example) -> tuple[str, str]:
    """A call on a question the model should answer directly."""
    if ex.domain == MATH:
        m = re.search(r"(\d+)\D+?(\d+)", ex.question)
        op = ex.meta.get("op")
        if op in ("mul", "add") and m:
            return "python", f"print({m.group(1)}{'*' if op == 'mul' else '+'}{m.group(2)})"
        return "python", f"print({ex.answer})"
    entities = ex.meta.get("entities") or [ex.answer]
    return "search", str(entities[0])


# --------------------------------------------------------------------------- scripting


def _script(ex: Example, rates: FlawRates, rng: random.Random) -> _Script:
    plan = list(ex.plan or [])
    sc = _Script()
    u = rng.random()
    insufficient = bool(plan) and u < rates.insufficient
    # u in [ins, ins + err) -> erroneous; with an empty plan insufficiency cannot happen
    erroneous = (not insufficient) and u < (rates.insufficient if plan else 0.0) + rates.erroneous
    keep = len(plan)
    if insufficient:
        keep = 1 if len(plan) > 1 and rng.random() < 0.75 else 0
        sc.flaws.add("insufficient")
        sc.missing = len(plan) - keep
    # needed calls, with a short plan-following thought before each
    for i, step in enumerate(plan[:keep]):
        if step.tool == "python":
            think = "I will compute this with Python."
        elif i == 0:
            think = f"I need to search for {step.query}."
        else:
            think = f"Now I search for {step.query}."
        sc.calls.append(_Call(step.tool, step.query, NEEDED, think))
    if not plan or keep == 0:
        sc.opening = "I know this." if not plan else "I can answer this without a tool."
    # redundant calls
    if rng.random() < rates.redundant and (not plan or keep > 0):
        sc.flaws.add("redundant")
        n_extra = 1
        while n_extra < 3 and rng.random() < rates.redundant_extra:
            n_extra += 1
        for _ in range(n_extra):
            _add_redundant(ex, plan, keep, sc, rng)
    # aborted call: a malformed try right before one of the calls, then the real one
    if sc.calls and rng.random() < rates.aborted:
        sc.flaws.add("aborted")
        needed = [i for i, c in enumerate(sc.calls) if c.role == NEEDED] or list(range(len(sc.calls)))
        j = rng.choice(needed)
        target = sc.calls[j]
        bad = _Call(target.kind, _malformed(rng, target.kind, target.query), ABORTED, target.think,
                    after="That failed. Let me fix it.")
        target.think = ""
        sc.calls.insert(j, bad)
    # the answer
    if insufficient:
        bridge = plan[0].expect if keep == 1 else None
        sc.answer = _wrong_answer(rng, ex, guess=True, bridge=bridge)
    elif erroneous:
        sc.flaws.add("erroneous")
        bridge = plan[0].expect if len(plan) > 1 else None
        sc.answer = _wrong_answer(rng, ex, guess=False, bridge=bridge)
    else:
        sc.answer = ex.answer
    return sc


def _add_redundant(ex: Example, plan: Sequence[PlanStep], keep: int, sc: _Script, rng: random.Random) -> None:
    done = list(plan[:keep])
    if not done:  # empty plan: any call is unneeded; put it first
        kind, query = _unneeded_call(ex)
        if any(c.role == REDUNDANT and c.query == query for c in sc.calls):
            sc.calls.append(_Call(kind, query, REDUNDANT, "Let me check again."))
        else:
            sc.calls.insert(0, _Call(kind, query, REDUNDANT, "Let me check with a tool."))
        return
    step = rng.choice(list(done))
    # insert right after the needed call it duplicates (or at the end)
    pos = max(i for i, c in enumerate(sc.calls) if c.role == NEEDED and c.query == step.query) + 1
    form = rng.random()
    # searching what a step found is only redundant if that is no plan query (2-hop bridge)
    found_ok = step.tool == "search" and all(step.expect != p.query for p in plan)
    if form < 0.5 or (step.tool == "search" and not found_ok):
        call = _Call(step.tool, step.query, REDUNDANT, "Let me check again.")
    elif step.tool == "python":
        call = _Call("python", _verify_query(rng, step), REDUNDANT, "Let me verify.")
    else:  # search the entity just found (the result already named it)
        call = _Call("search", step.expect, REDUNDANT, f"Let me also search for {step.expect}.")
        pos = len(sc.calls)
    sc.calls.insert(pos, call)


# --------------------------------------------------------------------------- rendering


_SENTENCE_END = re.compile(r"(?<=\.)\s+|\n+")


def evidence_sentence(result: str, expect: str) -> str | None:
    """The first sentence of a tool result that names ``expect`` (whole word), or None."""
    pattern = re.compile(rf"(?<!\w){re.escape(expect)}(?!\w)")
    for sent in _SENTENCE_END.split(result or ""):
        sent = sent.strip()
        if sent and pattern.search(sent):
            return sent
    return None


def _restate_evidence(ex: Example, sc: _Script, results: Mapping[tuple[str, str], Any]) -> None:
    """Give each needed search whose result names its plan step's value a restating thought."""
    if "erroneous" in sc.flaws or "insufficient" in sc.flaws:
        return
    expects = {(p.tool, p.query): p.expect for p in ex.plan or []}
    for c in sc.calls:
        if c.role == NEEDED and c.kind == "search" and not c.after:
            sent = evidence_sentence(results[(c.kind, c.query)].output, expects.get((c.kind, c.query), ""))
            if sent:
                c.after = sent


def _render(sc: _Script, results: Mapping[tuple[str, str], Any], grammar: Any) -> str:
    parts: list[str] = []
    if sc.opening and not sc.calls:  # a call brings its own thought
        parts.append(f"<think>{sc.opening}</think>")
    for c in sc.calls:
        if c.think:
            parts.append(f"<think>{c.think}</think>")
        parts.append(grammar.format_tool_turn(c.kind, c.query, results[(c.kind, c.query)].output))
        if c.after:
            parts.append(f"<think>{c.after}</think>")
    parts.append(protocol.format_answer(sc.answer, prefix=ANSWER_PREFIX))
    return "\n".join(parts)


def _execute(toolset: Any, calls: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Run each distinct call once (tool results are deterministic for these calls)."""
    unique = list(dict.fromkeys(calls))
    out: dict[tuple[str, str], Any] = {}
    for i in range(0, len(unique), _CHUNK):
        chunk = unique[i : i + _CHUNK]
        for call, res in zip(chunk, toolset.execute(chunk)):
            out[call] = res
    return out


def _as_rates(rates: FlawRates | Mapping[str, Any] | None) -> dict[str, FlawRates]:
    if rates is None:
        return dict(DEFAULT_RATES)
    if isinstance(rates, FlawRates):
        return {MATH: rates, QA: rates}
    out: dict[str, FlawRates] = {}
    for domain, r in rates.items():
        if domain not in (MATH, QA):
            raise ValueError(f"teacher rates: unknown domain {domain!r} (expected math, qa)")
        if isinstance(r, FlawRates):
            out[domain] = r
        else:
            known = [f.name for f in fields(FlawRates)]
            unknown = set(r) - set(known)
            if unknown:
                raise ValueError(f"teacher rates.{domain}: unknown keys {sorted(unknown)} (known: {known})")
            out[domain] = FlawRates(**{str(k): float(v) for k, v in r.items()})
    for domain in (MATH, QA):
        out.setdefault(domain, DEFAULT_RATES[domain])
    return out


def write_teacher_trajectories(
    examples: Sequence[Example],
    toolset: Any,
    rates: FlawRates | Mapping[str, Any] | None = None,
    seed: int = 0,
    samples_per_example: int = 1,
    restate_evidence: bool = True,
) -> list[dict]:
    """One dict per (example, sample): ``{id, example_id, response_text, flaws, answer,
    correct, calls, missing_calls, plan_ok, domain, type}``.

    ``correct`` is by construction (no insufficient/erroneous flaw); ``calls`` lists
    ``{kind, query, role, status}`` with role needed|redundant|aborted; ``plan_ok`` is
    False if a needed call's result did not show the plan's expected value (a tool or
    world bug: the text then answers without evidence).
    """
    by_domain = _as_rates(rates)
    scripts: list[tuple[Example, int, _Script]] = []
    for ex in examples:
        if ex.plan is None:
            raise ValueError(f"teacher: example {ex.id} has no plan (only synthetic tasks carry plans)")
        for k in range(samples_per_example):
            rng = random.Random(f"teacher:{seed}:{ex.id}:{k}")
            scripts.append((ex, k, _script(ex, by_domain[ex.domain], rng)))
    results = _execute(toolset, [(c.kind, c.query) for _, _, sc in scripts for c in sc.calls])
    out: list[dict] = []
    for ex, k, sc in scripts:
        if restate_evidence:
            _restate_evidence(ex, sc, results)
        out.append(teacher_row(ex, k, sc, results, toolset.grammar))
    return out


def teacher_row(ex: Example, k: int, sc: "_Script", results: Mapping[tuple[str, str], Any], grammar: Any) -> dict:
    """The teacher-trajectory row of sample ``k`` of ``ex`` (schema: :func:`write_teacher_trajectories`),
    its text rendered with ``grammar`` (the tool set's own)."""
    expects = {(p.tool, p.query): p.expect for p in ex.plan or []}
    return {
        "id": f"teacher-{ex.id}-{k}",
        "example_id": ex.id,
        "response_text": _render(sc, results, grammar),
        "flaws": [f for f in FLAWS if f in sc.flaws],
        "answer": sc.answer,
        "correct": not (sc.flaws & {"insufficient", "erroneous"}),
        "calls": [{"kind": c.kind, "query": c.query, "role": c.role,
                   "status": results[(c.kind, c.query)].status} for c in sc.calls],
        "missing_calls": sc.missing,
        # a needed call's result must show the plan's value (else a tool or world bug)
        "plan_ok": all(expects[(c.kind, c.query)] in results[(c.kind, c.query)].output
                       for c in sc.calls if c.role == NEEDED),
        "domain": ex.domain,
        "type": ex.meta.get("type"),
    }


def summarize(trajectories: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-domain (and ``all``) shares, by construction: redundant/aborted share of calls,
    flaw rates per trajectory, wrong share, and the share of wrong trajectories one more
    tool call would fix (insufficient with exactly one plan call missing)."""
    groups: dict[str, list[Mapping[str, Any]]] = {"all": list(trajectories)}
    for t in trajectories:
        groups.setdefault(t["domain"], []).append(t)
    out: dict[str, dict[str, float]] = {}
    for name, ts in groups.items():
        calls = [c for t in ts for c in t["calls"]]
        wrong = [t for t in ts if not t["correct"]]
        n = max(len(ts), 1)
        out[name] = {
            "trajectories": len(ts),
            "calls_per_traj": len(calls) / n,
            "redundant_call_share": sum(c["role"] == REDUNDANT for c in calls) / max(len(calls), 1),
            "aborted_call_share": sum(c["role"] == ABORTED for c in calls) / max(len(calls), 1),
            **{f"{f}_rate": sum(f in t["flaws"] for t in ts) / n for f in FLAWS},
            "wrong_rate": len(wrong) / n,
            "fixable_by_one_call": sum(t["missing_calls"] == 1 for t in wrong) / max(len(wrong), 1),
            "plan_ok_rate": sum(bool(t["plan_ok"]) for t in ts) / n,
        }
    return out


class FlawedTeacher:
    """Config wrapper (``conf/seed_agent/flawed_teacher.yaml``) around :func:`write_teacher_trajectories`."""

    def __init__(self, rates: Mapping[str, Any] | None = None, samples_per_example: int = 1, seed: int = 0,
                 restate_evidence: bool = True) -> None:
        if samples_per_example < 1:
            raise ValueError(f"seed_agent.samples_per_example must be >= 1, got {samples_per_example}")
        self.rates = _as_rates(rates)
        self.samples_per_example = int(samples_per_example)
        self.seed = int(seed)
        self.restate_evidence = bool(restate_evidence)

    def write(self, examples: Sequence[Example], toolset: Any) -> list[dict]:
        return write_teacher_trajectories(examples, toolset, self.rates, self.seed, self.samples_per_example,
                                          self.restate_evidence)
