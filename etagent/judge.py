"""LLM judge through any generation backend: math answer equivalence and conciseness.

The paper judges math correctness and conciseness with a separate, stronger model
(Qwen2.5-72B-Instruct). :class:`LLMJudge` does both with any
:class:`~etagent.backends.base.GenerationBackend` (``hf``, ``vllm``, ``openai``), which must be
the judge's own (``judge.backend``; the evaluated policy never judges itself): the prompt
templates, the verdict pattern and the yes/no words come from config (``conf/judge/llm.yaml``),
never from this file. The rules are the released ones:

* **Math equivalence** (released ``evaluation/src/evaluator.py`` with its ``llm_evaluator_sds``
  ``LLMEvaluator``, whose file is not in the searchable index; the rule as its Tool-Star-family
  copies and the issue state it): an answer is accepted if string equivalence already holds
  (``shortcut_math``; etagent's string check is math-verify, the released one a normalised
  string match) or a judge reply says correct. ``math_votes`` replies are asked (released
  evaluation: 1) and any positive one accepts (the released flywheel judge, too, accepts on the
  first of up to 4 replies that says correct: ``flywheel/src/src_sample_process.py``).
* **Conciseness** (released ``radar/run.py`` ``evaluate_redundancy`` with ``radar/prompts.py``):
  the prompt shows the question, the **gold answer** and the trajectory and asks whether the
  trajectory contains a redundant or ineffective tool call; ``n_votes`` replies (released: 10,
  ``radar/args.py --round``). The released rule is ``0 if yes > no else 1`` for the flag
  "no redundancy", i.e. a trajectory is **concise unless the votes saying "redundant" (yes)
  outnumber those saying "not redundant" (no)**: a tie, unparsable replies and failed calls all
  leave it concise.
* A vote whose reply has no parsable verdict, or that the backend failed to produce, is counted
  in ``stats['errors']`` and is neither yes nor no.
* :meth:`grade` has the signature of :func:`etagent.grading.grade`, so a judge can be the
  rollout engine's grader: math via the judge, QA via token F1/EM as usual.
* :meth:`concise_fn` matches ``etagent.evaluation.metrics``' ``concise_fn(traj, example)``.
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from etagent import grading
from etagent.records import MATH, Example

log = logging.getLogger(__name__)

#: Fields each prompt template must use (checked at construction).
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "equivalence": ("question", "prediction", "gold"),
    "conciseness": ("question", "response", "gold"),  # released radar prompt: the golden answer is shown
}
DEFAULT_VERDICT_PATTERN = r"(?i)verdict\s*[:：]\s*\**\s*([a-z]+)"


@dataclass
class Verdict:
    """Outcome of one judged item."""

    decision: bool
    yes: int = 0
    no: int = 0
    errors: int = 0
    replies: list[str] = field(default_factory=list)
    shortcut: bool = False


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class LLMJudge:
    """The released judge rules with a separate judge model (see module docstring).

    ``prompts``: ``equivalence`` (fields ``{question} {prediction} {gold}``; a positive verdict =
    equivalent), ``conciseness`` (``{question} {response} {gold}``; a positive verdict = the
    trajectory HAS a redundant or ineffective call) and optionally ``system``.
    ``verdict_pattern``: a regex whose group 1 is the verdict word of a reply (the last
    match counts); ``positive`` / ``negative`` list the words meaning yes / no.
    Sampling: the released judge servers' (``radar/vllm_client_pool.py``: T 0.6, top_p 0.95,
    repetition penalty 1.05).
    """

    def __init__(
        self,
        backend: Any,
        prompts: Mapping[str, str],
        n_votes: int = 10,
        math_votes: int = 1,
        temperature: float = 0.6,
        top_p: float = 0.95,
        repetition_penalty: float = 1.05,
        max_new_tokens: int = 512,
        seed: int | None = 0,
        tokenizer: Any = None,
        verdict_pattern: str = DEFAULT_VERDICT_PATTERN,
        positive: Sequence[str] = ("yes", "equivalent", "correct", "true"),
        negative: Sequence[str] = ("no", "different", "incorrect", "false"),
        shortcut_math: bool = True,
        batch_size: int = 64,
    ) -> None:
        if backend is None:
            raise ValueError("judge.backend is null: judge=llm needs its own judge model (the paper: "
                             "Qwen2.5-72B-Instruct), e.g. an openai node pointing at its server")
        if n_votes < 1 or math_votes < 1:
            raise ValueError(f"judge.n_votes and judge.math_votes must be >= 1, got {n_votes}, {math_votes}")
        if batch_size < 1:
            raise ValueError(f"judge.batch_size must be >= 1, got {batch_size}")
        prompts = dict(prompts or {})
        for key, needed in TEMPLATE_FIELDS.items():
            if not isinstance(prompts.get(key), str) or not prompts[key].strip():
                raise ValueError(f"judge.prompts.{key} is missing (a format string using {{{'}, {'.join(needed)}}})")
            have = _fields(prompts[key])
            unknown, missing = have - set(needed), set(needed) - have
            if unknown or missing:
                raise ValueError(
                    f"judge.prompts.{key}: fields must be {sorted(needed)}; "
                    f"missing {sorted(missing)}, unknown {sorted(unknown)} (double literal braces: {{{{ }}}})"
                )
        try:
            self._verdict_re = re.compile(verdict_pattern)
        except re.error as exc:
            raise ValueError(f"judge.verdict_pattern is not a valid regex: {exc}") from None
        if self._verdict_re.groups < 1:
            raise ValueError("judge.verdict_pattern needs one capture group (the verdict word)")
        self.positive = {w.lower() for w in positive}
        self.negative = {w.lower() for w in negative}
        if self.positive & self.negative:
            raise ValueError(f"judge: words both positive and negative: {sorted(self.positive & self.negative)}")
        self.backend = backend
        self.tokenizer = tokenizer if tokenizer is not None else getattr(backend, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError("judge: the backend has no tokenizer; pass judge.tokenizer")
        self.prompts = prompts
        self.system_prompt = prompts.get("system") or None
        self.n_votes, self.math_votes = int(n_votes), int(math_votes)
        self.temperature, self.top_p, self.repetition_penalty = float(temperature), float(top_p), float(repetition_penalty)
        self.max_new_tokens, self.seed = int(max_new_tokens), seed
        self.shortcut_math, self.batch_size = bool(shortcut_math), int(batch_size)
        self.stats = {"items": 0, "votes": 0, "errors": 0, "shortcuts": 0}

    # ------------------------------------------------------------------ parsing
    def parse_verdict(self, reply: str) -> bool | None:
        """True / False from the last verdict in ``reply``; None if there is none."""
        matches = self._verdict_re.findall(reply or "")
        for word in reversed(matches):
            word = (word[0] if isinstance(word, tuple) else word).strip().lower()
            if word in self.positive:
                return True
            if word in self.negative:
                return False
        return None

    # ------------------------------------------------------------------ core
    def _prompt_ids(self, user_text: str) -> list[int]:
        from etagent.models.prompting import build_prompt_ids

        return build_prompt_ids(self.tokenizer, user_text, self.system_prompt)

    def _vote(self, texts: list[str], n_votes: int, decide) -> list[Verdict]:
        """``n_votes`` judgements of each prompt text, in batches; ``decide(yes, no)`` -> the decision."""
        from etagent.backends.base import SamplingParams

        out: list[Verdict] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            params = SamplingParams(
                n=n_votes,
                temperature=self.temperature,
                top_p=self.top_p,
                repetition_penalty=self.repetition_penalty,
                max_new_tokens=self.max_new_tokens,
                stop=(),  # why: a judge reply is free text; tool stop strings would cut it
                seed=None if self.seed is None else int(self.seed) + start,
                logprobs=False,
            )
            try:
                results = self.backend.generate([self._prompt_ids(t) for t in chunk], params)
                if len(results) != len(chunk):
                    raise RuntimeError(f"backend returned {len(results)} results for {len(chunk)} prompts")
            except Exception as exc:  # noqa: BLE001 - a failed call is counted, never accepted
                log.warning("judge: backend call failed (%s); %d items judged False", exc, len(chunk))
                results = [[] for _ in chunk]
            for comps in results:
                replies = []
                for c in list(comps)[:n_votes]:
                    try:
                        replies.append(self.tokenizer.decode(list(c.ids), skip_special_tokens=True))
                    except Exception:  # noqa: BLE001
                        replies.append("")
                verdicts = [self.parse_verdict(r) for r in replies]
                yes, no = verdicts.count(True), verdicts.count(False)
                errors = n_votes - yes - no  # unparsable replies and missing completions
                self.stats["votes"] += n_votes
                self.stats["errors"] += errors
                out.append(Verdict(decision=bool(decide(yes, no)), yes=yes, no=no, errors=errors, replies=replies))
        self.stats["items"] += len(texts)
        return out

    @property
    def errors(self) -> int:
        return self.stats["errors"]

    # ------------------------------------------------------------------ equivalence
    def equivalent_many(self, items: Sequence[tuple[str, str | None, str | Sequence[str]]]) -> list[Verdict]:
        """Verdicts for ``(question, prediction, gold)`` items (gold: one answer or aliases)."""
        verdicts: list[Verdict | None] = [None] * len(items)
        ask: list[int] = []
        texts: list[str] = []
        for i, (question, pred, gold) in enumerate(items):
            golds = [gold] if isinstance(gold, str) else [str(g) for g in gold]
            gold_text = _golds(golds)
            if pred is None or not str(pred).strip():
                verdicts[i] = Verdict(decision=False)
                continue
            if self.shortcut_math and any(grading.math_equal(str(pred), g) for g in golds):
                self.stats["shortcuts"] += 1
                verdicts[i] = Verdict(decision=True, shortcut=True)
                continue
            ask.append(i)
            texts.append(
                self.prompts["equivalence"].format(question=question, prediction=str(pred), gold=gold_text)
            )
        # released: accepted when a judge reply says correct (one reply in the released evaluation)
        for i, v in zip(ask, self._vote(texts, self.math_votes, lambda yes, no: yes >= 1)):
            verdicts[i] = v
        return [v for v in verdicts if v is not None]

    def equivalent(self, question: str, pred: str | None, gold: str | Sequence[str]) -> bool:
        return self.equivalent_many([(question, pred, gold)])[0].decision

    def grade(self, example: Example, answer: str | None, metric: str) -> float:
        """:func:`etagent.grading.grade` with math judged by the LLM (other metrics unchanged);
        ``metric``: the one the run's Grader chose for ``example``."""
        if metric != grading.MATH_METRIC or example.domain != MATH:
            return grading.grade(example, answer, metric)
        return float(self.equivalent(example.question, answer, example.answers))

    # ------------------------------------------------------------------ conciseness
    def concise_many(self, items: Sequence[tuple[str, str, str | Sequence[str]]]) -> list[Verdict]:
        """Verdicts for ``(question, response, gold)`` items; ``decision`` = concise. ``yes`` counts
        the votes that found a redundant or ineffective call, ``no`` those that found none."""
        texts = [self.prompts["conciseness"].format(question=q, response=r, gold=_golds(g)) for q, r, g in items]
        # released radar/run.py evaluate_redundancy: flag "no redundancy" = 0 if yes > no else 1
        return self._vote(texts, self.n_votes, lambda yes, no: not yes > no)

    def concise(self, question: str, response: str, gold: str | Sequence[str]) -> bool:
        return self.concise_many([(question, response, gold)])[0].decision

    def concise_fn(self, traj: Any, example: Example) -> bool:
        """Adapter for ``evaluation.metrics``' ``concise_fn(traj, example)``."""
        return self.concise(example.question, traj.response_text, example.answers)


def _golds(gold: str | Sequence[str]) -> str:
    return gold if isinstance(gold, str) else " OR ".join(str(g) for g in gold)


def build_judge(cfg_judge: Any) -> LLMJudge | None:
    """Instantiate the ``judge`` config group; ``judge: null`` -> None. ``judge.backend`` must be set:
    the judge is a separate model, never the evaluated policy (ConfigError naming the key)."""
    if cfg_judge is None:
        return None
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from etagent.config.validate import ConfigError

    plain = OmegaConf.to_container(cfg_judge, resolve=True) if OmegaConf.is_config(cfg_judge) else dict(cfg_judge)
    node = OmegaConf.create(plain)
    if node.get("backend") is None:
        raise ConfigError(
            "judge.backend is null: judge=llm needs a separate judge model (the paper: Qwen2.5-72B-Instruct), "
            "e.g. judge.backend={_target_: etagent.backends.openai.OpenAIBackend, base_url: http://host:8001/v1, "
            "model: judge, tokenizer: ...} (conf/judge/llm.yaml)")
    return instantiate(node, _convert_="all")
