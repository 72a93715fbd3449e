"""Answer extraction and correctness grading (pure functions, never raise on model output).

* Math: the final answer is the last ``\\boxed{}`` of the last ``<answer>`` block; it is
  judged equivalent to a gold answer with math-verify (fractions, decimals, LaTeX forms,
  tuples, intervals, matrices, ``\\text{}`` units).
* QA: SQuAD-style normalisation, exact match and token F1, best over the gold aliases.

Departures from the paper / official code:

* The paper judges math with an LLM (Qwen2.5-72B); we use math-verify here (an LLM judge is
  a separate, optional component). The official RL reward normalises QA answers by
  deleting all spaces (exact match in disguise) while evaluation uses F1: etagent uses
  this one module everywhere, with the metric named in config (``f1`` default, ``em``).
* QA F1 keeps the HotpotQA / FlashRAG rule that a yes/no/noanswer prediction scores 0
  against a different gold (otherwise "no" would partially match "no way").
* A gold that SQuAD normalisation leaves without tokens (a letter choice ``(A)`` or ``A``:
  the article rule deletes "a") is graded by exact match after a lighter normalisation
  (lower case, punctuation and spaces only), for F1 and EM alike; the SQuAD/official code
  scores every prediction 0 (F1) or everything that normalises to "" 1 (EM) there.

Thread safety: math-verify bounds each parse/compare with ``signal.alarm``, which only
works in the main thread. Off the main thread we call it without a time limit (and guard
against pathological inputs by length); see :func:`math_equal`. In the main thread an
outer ``ITIMER_REAL`` timer (e.g. pytest-timeout, a stage watchdog) would be cancelled by
math-verify's ``alarm(0)``; we re-arm it afterwards.
"""

from __future__ import annotations

import collections
import logging
import re
import signal
import string
import threading
import time
import types
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from etagent import protocol
from etagent.records import MATH, Example

MATH_METRIC, F1, EM = "math", "f1", "em"
#: math-verify per-call limit (seconds) when running in the main thread.
MATH_TIMEOUT_S = 5
#: Longer predictions are only compared as strings: sympy can hang on huge expressions
#: and off the main thread there is no alarm to stop it.
MAX_MATH_CHARS = 1000

# math-verify logs a warning whenever a timeout is disabled; we disable it on purpose.
logging.getLogger("math_verify").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- extraction


def extract_answer(text: str | None, grammar: protocol.Grammar, require_boxed: bool = True) -> str | None:
    """The final answer of a response.

    The last ``\\boxed{}`` of the last ``<answer>`` block; else the last ``\\boxed{}`` in
    the model's prose (text, think and answer blocks; a model that forgot the answer
    tags). Tool calls and results are skipped: code may print a ``\\boxed{}`` too. With
    ``require_boxed=False`` an answer block without ``\\boxed{}`` yields its stripped text.
    """
    if not text:
        return None
    parsed = grammar.parse(text)
    answers = parsed.answer_segments()
    if answers:
        boxed = protocol.extract_boxed(answers[-1].content)
        if boxed is not None:
            return boxed
    prose_kinds = (protocol.TEXT, protocol.THINK, protocol.ANSWER)
    outside = "\n".join(s.content for s in parsed.segments if s.kind in prose_kinds)
    boxed = protocol.extract_boxed(outside)
    if boxed is not None:
        return boxed
    if not require_boxed and answers and answers[-1].content.strip():
        return answers[-1].content.strip()
    return None


def block_answer(text: str | None, grammar: protocol.Grammar) -> str | None:
    """The answer that earns correctness credit: the last ``\\boxed{}`` of the last *closed*
    ``<answer>`` block, else None (as the official reward: no answer block, no credit; a
    ``\\boxed{}`` in ``<think>`` or plain text earns nothing). ``grammar``: the run's (an
    ``<answer>`` inside a tool call is the call's content, not an answer)."""
    if not text:
        return None
    answers = [s for s in grammar.parse(text).answer_segments() if s.closed]
    return protocol.extract_boxed(answers[-1].content) if answers else None


# --------------------------------------------------------------------------- the released readers
#
# Written from the released functions' behaviour (asilverlight/ET-Agent), not copied: the evaluation
# reads an answer with ``extract_answer`` (``flywheel/src/utils.py``; ``evaluation/src/sample_processor.py``
# imports the same-named function from its own ``utils``) and its evaluator falls back to the output's
# last five lines when that is empty (``evaluation/src/evaluator.py`` ``evaluate_sample``); the RL
# reward (``ARPO/verl_arpo_entropy/verl/utils/reward_score/efficiency.py``) needs an answer block and
# then takes, for math, the last ``\boxed`` anywhere in the response.

#: Answer readers (the rollout engine's ``answer_extraction``): ``strict`` (etagent), the released
#: evaluation's and the released RL reward's.
ANSWER_EXTRACTIONS: tuple[str, ...] = ("strict", "official_eval", "official_reward")


def _balanced_boxed(text: str, idx: int) -> tuple[str, bool]:
    """``text[idx:]`` up to the brace that closes the first ``{`` after ``idx`` (and whether one did)."""
    depth = 0
    for j in range(idx, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[idx : j + 1], True
    return text[idx:], False


def _unwrap(boxed: str) -> str:
    """``\\boxed{x}`` -> ``x``, then ``\\text{x}`` -> ``x`` (the released unwrapping); else unchanged."""
    if boxed.startswith("\\boxed{") and boxed.endswith("}"):
        boxed = boxed[len("\\boxed{") : -1]
        if boxed.startswith("\\text{") and boxed.endswith("}"):
            boxed = boxed[len("\\text{") : -1]
    return boxed


def _eval_last_boxed(text: str) -> str:
    """The released evaluation's last ``\\boxed`` (else ``\\fbox``) span: to its closing brace, or to
    the end of the text when none closes; ``""`` when there is none."""
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
    return "" if idx < 0 else _balanced_boxed(text, idx)[0]


def official_extract_answer(text: str | None) -> str:
    """The released evaluation's ``extract_answer``: the boxed answer inside the last
    ``<answer>..</answer>``; an answer block without a (non-empty) ``\\boxed{}`` gives its raw text;
    no answer block (or an empty one) gives the last ``\\boxed{}`` anywhere; ``""`` if none."""
    text = text or ""
    inner = None
    end = text.rfind("</answer>")
    if end >= 0:
        start = text.rfind("<answer>", 0, end)
        if start >= 0:
            inner = text[start + len("<answer>") : end]
    if inner:  # a whitespace-only block counts as an answer (released truthiness)
        boxed = _unwrap(_eval_last_boxed(inner.strip()))
        return boxed if boxed else inner
    return _unwrap(_eval_last_boxed(text.strip()))


def official_eval_answer(text: str | None) -> str | None:
    """What the released evaluator grades: :func:`official_extract_answer`, else the output's last
    five lines (blank lines squeezed once, as ``output.replace("\\n\\n", "\\n")``); None if empty."""
    pred = official_extract_answer(text)
    if not pred and text:
        pred = "\n".join(text.replace("\n\n", "\n").strip().split("\n")[-5:])
    return pred or None


def _reward_last_boxed(text: str) -> str | None:
    """The released reward's ``last_boxed_only_string`` (``reward_score/math.py``): a ``\\boxed `` with a
    space anywhere wins (its text up to a ``$``); else the last ``\\boxed`` / ``\\fbox`` with balanced
    braces; None when there is none or its braces never close."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
    if idx < 0:
        return None
    span, closed = _balanced_boxed(text, idx)
    return span if closed else None


_FIRST_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def official_reward_answer(text: str | None, domain: str | None) -> str | None:
    """The released RL reward's answer: None without a closed ``<answer>`` block (no credit); then
    for math the last ``\\boxed`` anywhere in the response (even outside the block), for QA the last
    ``\\boxed`` of the first answer block (``compute_score_math`` / ``compute_score_deep_research``)."""
    m = _FIRST_ANSWER_RE.search((text or "").strip())
    if m is None:
        return None
    span = _reward_last_boxed(text if domain == MATH else m.group(1))
    if span is None:
        return None
    return span[len("\\boxed{") : -1] if span.startswith("\\boxed") and span.endswith("}") else span


def extract_for(text: str | None, rule: str, domain: str | None, grammar: protocol.Grammar) -> str | None:
    """The answer of a response under ``rule`` (:data:`ANSWER_EXTRACTIONS`); ``grammar``: the run's
    (the strict reader parses the answer block with it; the released readers match literal tags)."""
    if rule == "strict":
        return block_answer(text, grammar)
    if rule == "official_eval":
        return official_eval_answer(text)
    if rule == "official_reward":
        return official_reward_answer(text, domain)
    raise ValueError(f"answer extraction must be one of {ANSWER_EXTRACTIONS}, got {rule!r}")


# --------------------------------------------------------------------------- math

_INT_RE = re.compile(r"[+-]?\d+")
_WS_RE = re.compile(r"\s+")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=8192)
def _parse_math(expr: str, timeout: int | None) -> tuple:
    """math-verify parse of a bare answer, trying ``\\boxed{}``, ``$..$`` and raw wrappings.

    Gold answers come without delimiters; ``\\boxed{}`` parses most of them but e.g.
    ``50\\%`` only parses inside ``$..$``. Returns the first result holding a sympy
    object, else the first non-empty (string fallback) result.
    """
    from math_verify import parse  # lazy: importing sympy costs ~1 s
    from sympy import Basic
    from sympy.matrices import MatrixBase

    fallback: list = []
    for wrap in ("\\boxed{%s}", "$%s$", "%s"):
        res = parse(wrap % expr, parsing_timeout=timeout)
        if any(isinstance(x, (Basic, MatrixBase)) for x in res):
            return tuple(res)
        fallback = fallback or res
    return tuple(fallback)


@contextmanager
def _keep_outer_timer() -> Iterator[None]:
    """Re-arm a caller's ``ITIMER_REAL`` timer that math-verify's alarm would cancel."""
    remaining, interval = signal.getitimer(signal.ITIMER_REAL)
    start = time.monotonic()
    try:
        yield
    finally:
        if remaining > 0:
            left = remaining - (time.monotonic() - start)
            # an expired outer deadline fires (almost) at once, with its own handler restored
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), interval)


def _plain(s: str) -> str:
    return _WS_RE.sub("", s)


_MID_PERCENT_RE = re.compile(r"(?<!\\)%\s*\S")


def math_equal(pred: str | None, gold: str | None) -> bool:
    """Whether ``pred`` is mathematically equivalent to ``gold`` (bare answers, no ``$``).

    Never raises: any failure (unparseable input, sympy error, timeout) counts as not
    equal. Works from worker threads (math-verify's alarm-based timeout is switched off
    there, and over-long predictions are compared as strings only).
    """
    try:
        if pred is None or gold is None:
            return False
        pred, gold = str(pred).strip(), str(gold).strip()
        if not pred or not gold:
            return False
        if _plain(pred) == _plain(gold):
            return True  # fast path: identical up to whitespace
        if _INT_RE.fullmatch(pred) and _INT_RE.fullmatch(gold):
            return int(pred) == int(gold)  # fast path: "025" == "25", "7" != "8"
        if len(pred) > MAX_MATH_CHARS or len(gold) > MAX_MATH_CHARS:
            return False
        if _MID_PERCENT_RE.search(pred) and not _MID_PERCENT_RE.search(gold):
            # LaTeX reads an unescaped "%" as a comment start, so "8050%1780" would parse as
            # 8050; a "%" with more after it is an unevaluated expression, not a value.
            return False
        if not _in_main_thread():
            return _verify(gold, pred, None)
        with _keep_outer_timer():
            return _verify(gold, pred, MATH_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - grading never fails on model output
        return False
    except BaseException as exc:
        # math-verify's TimeoutException is a BaseException; anything else (Ctrl-C, an
        # outer watchdog's exception) must propagate
        if type(exc).__module__.startswith("math_verify"):
            return False
        raise


def _verify(gold: str, pred: str, timeout: int | None) -> bool:
    from math_verify import verify

    gold_parsed, pred_parsed = _parse_math(gold, timeout), _parse_math(pred, timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout))


# --------------------------------------------------------------------------- QA

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: Any) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, squeeze spaces."""
    s = "" if s is None else str(s)
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def _as_list(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [g for g in golds if g is not None]


def _light(s: Any) -> str:
    """Lower case, punctuation dropped, spaces squeezed; articles kept."""
    s = "" if s is None else str(s).lower()
    return " ".join("".join(ch for ch in s if ch not in _PUNCT).split())


def _tokenless(gold: str) -> bool:
    """A gold that SQuAD normalisation empties (a letter choice ``(A)``, ``A``, ``the``)."""
    return not normalize_answer(gold) and bool(_light(gold))


def _em_one(pred: str, gold: str) -> bool:
    if _tokenless(gold):  # exact match after a lighter normalisation ("(A)" == "a", != "the")
        return _light(pred) == _light(gold)
    return normalize_answer(pred) == normalize_answer(gold)


def qa_em(pred: str | None, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold alias."""
    if pred is None:
        return 0.0
    return float(any(_em_one(pred, g) for g in _as_list(golds)))


def _f1(pred: str, gold: str) -> float:
    if _tokenless(gold):  # no tokens to overlap: exact match after normalisation
        return float(_em_one(pred, gold))
    p, g = normalize_answer(pred), normalize_answer(gold)
    # HotpotQA/FlashRAG rule: yes/no/noanswer must match exactly
    if (p in ("yes", "no", "noanswer") or g in ("yes", "no", "noanswer")) and p != g:
        return 0.0
    p_toks, g_toks = p.split(), g.split()
    common = collections.Counter(p_toks) & collections.Counter(g_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p_toks), same / len(g_toks)
    return 2 * precision * recall / (precision + recall)


def qa_f1(pred: str | None, golds: str | Sequence[str]) -> float:
    """Token F1 of the prediction, best over gold aliases (0.0 for no prediction)."""
    if pred is None:
        return 0.0
    return max((_f1(pred, g) for g in _as_list(golds)), default=0.0)


def math_score(pred: str, golds: Sequence[str]) -> float:
    """1.0 if ``pred`` is mathematically equivalent to any gold, else 0.0."""
    return float(any(math_equal(pred, g) for g in golds))


# --------------------------------------------------------------------------- domains

#: The built-in metrics: name -> ``fn(answer, golds) -> score in [0, 1]`` (never called with
#: answer None). A domain rule may bring more (``DomainRule.metric_fns``).
METRIC_FNS: Mapping[str, Callable[[str, Sequence[str]], float]] = types.MappingProxyType(
    {MATH_METRIC: math_score, F1: qa_f1, EM: qa_em})
METRICS: tuple[str, ...] = tuple(METRIC_FNS)


def _resolve_fn(name: str, fn: Any, where: str) -> Callable[[str, Sequence[str]], float]:
    if isinstance(fn, str):  # a dotted path from config ("mypkg.grading.exact_code")
        from hydra.utils import get_method

        try:
            fn = get_method(fn)
        except Exception as exc:  # noqa: BLE001 - re-raised naming the key
            raise ValueError(f"{where}.metric_fns.{name}: cannot import {fn!r}: {exc}") from None
    if not callable(fn):
        raise ValueError(f"{where}.metric_fns.{name}: not a function: {fn!r}")
    return fn


class DomainRule:
    """How one answer domain is graded and what counts as a success: a node of the task's
    ``domains`` config (``conf/task/domains/builtin.yaml``: ``math``, ``qa``), so a new domain is
    its metric function (the grading rule) plus one config node.

    ``metrics``: the metrics that may grade it, the first being the domain's own (an example's
    ``meta['metric']`` or the grader's ``qa_metric`` may pick another of them). ``metric_fns``:
    metrics this domain brings beyond the built-in ones (:data:`METRIC_FNS`), name -> function or
    its dotted path. ``binary``: scores are 0/1, so success is 1 and failure 0 whatever the
    threshold (math); otherwise a score succeeds when >= the grader's threshold and fails below it
    (QA F1/EM). A plain class, not a dataclass: Hydra would turn a dataclass argument into a config.
    """

    __slots__ = ("name", "metrics", "binary", "fns")

    def __init__(self, name: str, metrics: Sequence[str], binary: bool,
                 metric_fns: Mapping[str, Any] | None = None) -> None:
        where = f"domain {name!r}"
        if not isinstance(name, str) or not name:
            raise ValueError(f"grading: a domain needs a non-empty name, got {name!r}")
        extra = {str(k): _resolve_fn(str(k), v, where) for k, v in dict(metric_fns or {}).items()}
        self.name, self.metrics, self.binary = name, tuple(str(m) for m in metrics), bool(binary)
        self.fns: dict[str, Callable[[str, Sequence[str]], float]] = {**METRIC_FNS, **extra}
        missing = [m for m in self.metrics if m not in self.fns]
        if not self.metrics or missing:
            raise ValueError(f"grading: {where} needs known metrics (built-in: {list(METRIC_FNS)}, or its "
                             f"metric_fns), missing {missing or 'all'}")

    def __repr__(self) -> str:
        return f"DomainRule({self.name!r}, metrics={self.metrics}, binary={self.binary})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DomainRule) and (self.name, self.metrics, self.binary, self.fns) == (
            other.name, other.metrics, other.binary, other.fns)

    def __hash__(self) -> int:
        return hash((self.name, self.metrics, self.binary))

    @property
    def metric(self) -> str:
        """The domain's own metric (the first of ``metrics``)."""
        return self.metrics[0]

    def success(self, score: float, threshold: float) -> bool:
        return score >= 1.0 if self.binary else score >= threshold

    def failure(self, score: float, threshold: float) -> bool:
        return score == 0.0 if self.binary else score < threshold


#: Scores without a domain (pooled trajectories): the threshold rule, exact for 0/1 math scores too.
_UNTYPED = DomainRule("<any>", (MATH_METRIC,), binary=False)


def domain_rules(domains: Any, where: str = "task.domains") -> dict[str, DomainRule]:
    """``{name: DomainRule}`` from a built ``domains`` config (a mapping name -> rule); each rule's
    name must be its key."""
    if not isinstance(domains, Mapping) or not domains:
        raise ValueError(f"{where}: expected a non-empty mapping of domain name -> DomainRule, got {domains!r}")
    out: dict[str, DomainRule] = {}
    for key, rule in domains.items():
        if not isinstance(rule, DomainRule):
            raise ValueError(f"{where}.{key}: expected a DomainRule node (_target_: etagent.grading.DomainRule), "
                             f"got {type(rule).__name__}")
        if rule.name != key:
            raise ValueError(f"{where}.{key}: the rule is named {rule.name!r}; name it after its key")
        out[str(key)] = rule
    return out


def check_domain(domain: Any, domains: Mapping[str, Any], where: str) -> str:
    """``domain`` if it is one of ``domains`` (the task's), else a ValueError naming ``where``."""
    if domain not in domains:
        raise ValueError(f"{where}: domain must be one of {sorted(domains)} (the task's `domains`), got {domain!r}")
    return str(domain)


def grade(example: Example, answer: str | None, metric: str) -> float:
    """Correctness of an extracted answer under a built-in ``metric`` (math 0/1, QA F1 or EM).
    Which metric grades an example is the :class:`Grader`'s decision; this is the bare function."""
    if metric not in METRIC_FNS:
        raise ValueError(f"unknown grading metric {metric!r} for example {example.id!r}; expected one of {METRICS}")
    return 0.0 if answer is None else METRIC_FNS[metric](answer, example.answers)


# --------------------------------------------------------------------------- policy


class Grader:
    """The one success policy of a run: the task's domain rules, a metric and a threshold. Built
    once from config (:class:`etagent.runenv.RunEnv`: ``task.domains``, ``grading`` and the
    stage's ``qa_metric``) and handed to rollout, reward, Pareto filter/sampler, flywheel,
    behaviour labels and metrics, so they all agree on what "correct" means; a stage with its own
    threshold (the flywheel's ``min_correct``, ``sampling.qa_threshold``) uses :meth:`with_threshold`.

    ``domains``: name -> :class:`DomainRule` (an example of another domain is an error).
    ``qa_metric`` (f1 | em) grades the domains whose rule lists it (QA); None keeps each example's
    task metric (``meta['metric']``, else its domain's own). ``qa_threshold``: a non-binary score
    counts as a success when >= it (math needs 1). Calling the policy with ``(example, answer)``
    grades an extracted answer (the rollout engine's grader). ``math_judge`` (``judge=llm`` in the
    eval stage) decides math equivalence instead of math-verify.
    A plain class, not a dataclass: Hydra would turn a dataclass argument into a config.
    """

    __slots__ = ("domains", "qa_metric", "qa_threshold", "math_judge")

    def __init__(self, domains: Mapping[str, DomainRule], qa_metric: str | None, qa_threshold: float,
                 math_judge: Any = None) -> None:
        self.domains: dict[str, DomainRule] = domain_rules(domains, "grader domains")
        if qa_metric is not None and qa_metric not in (F1, EM):
            raise ValueError(f"grading: qa_metric must be {F1!r} or {EM!r}, got {qa_metric!r}")
        t = float(qa_threshold)
        if not 0.0 < t <= 1.0:
            raise ValueError(f"grading: qa_threshold must be in (0, 1], got {qa_threshold!r}")
        self.qa_metric, self.qa_threshold = qa_metric, t
        # an LLM judge (etagent.judge.LLMJudge) for math equivalence, as the paper; None = math-verify
        self.math_judge = math_judge

    def __repr__(self) -> str:
        return f"Grader(domains={list(self.domains)}, qa_metric={self.qa_metric!r}, qa_threshold={self.qa_threshold})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grader) and (self.domains, self.qa_metric, self.qa_threshold) == (
            other.domains, other.qa_metric, other.qa_threshold)

    def __hash__(self) -> int:
        return hash((tuple(self.domains), self.qa_metric, self.qa_threshold))

    def rule(self, domain: str | None) -> DomainRule:
        """The rule of ``domain`` (None: the threshold rule); a domain the task lacks raises."""
        if domain is None:
            return _UNTYPED
        try:
            return self.domains[domain]
        except KeyError:
            raise ValueError(f"grading: unknown domain {domain!r}; the task's domains are {sorted(self.domains)}") from None

    def metric(self, example: Example) -> str:
        """The metric grading ``example``: ``qa_metric`` for the domains it applies to (f1/em: QA),
        else the example's task metric (``meta['metric']``), else its domain's own."""
        rule = self.rule(example.domain)
        m = self.qa_metric if self.qa_metric in rule.metrics else (example.meta.get("metric") or rule.metric)
        if m not in rule.fns:
            raise ValueError(f"unknown grading metric {m!r} for example {example.id!r} (domain {example.domain!r}); "
                             f"expected one of {tuple(rule.fns)}")
        return m

    def grade(self, example: Example, answer: str | None) -> float:
        metric = self.metric(example)
        if self.math_judge is not None and metric == MATH_METRIC:
            return float(self.math_judge.grade(example, answer, metric))
        return 0.0 if answer is None else float(self.rule(example.domain).fns[metric](answer, example.answers))

    def with_judge(self, judge: Any) -> "Grader":
        """The same policy with math equivalence decided by ``judge``."""
        return Grader(self.domains, self.qa_metric, self.qa_threshold, judge)

    def with_threshold(self, qa_threshold: float) -> "Grader":
        """The same policy with another success threshold (e.g. the flywheel's ``min_correct``)."""
        return Grader(self.domains, self.qa_metric, qa_threshold, self.math_judge)

    def with_metric(self, qa_metric: str | None) -> "Grader":
        """The same policy grading QA with ``qa_metric`` (a stage's own: ``reward.qa_metric``, ``eval.qa_metric``)."""
        return Grader(self.domains, qa_metric, self.qa_threshold, self.math_judge)

    __call__ = grade

    def grade_text(self, example: Example, text: str | None, grammar: protocol.Grammar) -> tuple[str | None, float]:
        """(credited answer, correctness) of a whole response: answer-block-only credit."""
        answer = block_answer(text, grammar)
        return answer, self.grade(example, answer)

    def is_success(self, domain: str | None, score: float) -> bool:
        """Whether ``score`` is a success in ``domain`` (None: a score without domain, threshold rule)."""
        return self.rule(domain).success(float(score), self.qa_threshold)

    def succeeded(self, traj: Any, example: Example) -> bool:
        """The success flag of a graded trajectory (its ``score`` under this policy)."""
        return self.is_success(example.domain, traj.score)

    def is_failure(self, domain: str | None, score: float) -> bool:
        """Whether ``score`` is a definite failure (math: 0; QA: below the threshold)."""
        return self.rule(domain).failure(float(score), self.qa_threshold)

    def mixed(self, scores: Iterable[float], domain: str | None) -> bool:
        """Whether a group of scores both succeeds and fails (the Pareto filter's informative question)."""
        vals = [float(v) for v in scores]
        return any(self.is_success(domain, v) for v in vals) and any(self.is_failure(domain, v) for v in vals)
