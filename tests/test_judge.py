"""LLM judge with a fake backend: majority vote, verdict parsing, failures, config prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from etagent.backends.base import Completion
from etagent.judge import LLMJudge, build_judge
from etagent.records import Example, Trajectory
from run_env import GRADER

CONF = Path(__file__).resolve().parents[1] / "conf" / "judge"


class CharTokenizer:
    """Characters as ids; a plain chat layout (enough for prompt building and decoding)."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"[{m['role']}]{m['content']}\n" for m in messages)
        return text + ("[assistant]" if add_generation_prompt else "")

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class FakeBackend:
    """Replies from ``reply(prompt_text, vote_index)``; records every call."""

    def __init__(self, reply, fail: bool = False):
        self.tokenizer = CharTokenizer()
        self.reply, self.fail = reply, fail
        self.calls: list[tuple[list[str], object]] = []

    def generate(self, prefixes, params):
        texts = [self.tokenizer.decode(p) for p in prefixes]
        self.calls.append((texts, params))
        if self.fail:
            raise ConnectionError("server down")
        return [
            [Completion(ids=self.tokenizer.encode(self.reply(t, k)), logprobs=None, finish_reason="eos")
             for k in range(params.n)]
            for t in texts
        ]


PROMPTS = {
    "system": "You grade.",
    "equivalence": "Q: {question}\nGOLD: {gold}\nPRED: {prediction}\nSay Verdict: yes/no.",
    "conciseness": "Q: {question}\nSOLUTION: {response}\nSay Verdict: yes/no.",
}


def _judge(reply, n_votes=3, **kw) -> tuple[LLMJudge, FakeBackend]:
    backend = FakeBackend(reply, fail=kw.pop("fail", False))
    return LLMJudge(backend, PROMPTS, n_votes=n_votes, **kw), backend


def votes(*replies):
    return lambda text, k: replies[k]


def test_majority_vote_and_counted_errors():
    j, b = _judge(votes("Verdict: yes", "Verdict: no", "Verdict: yes"))
    assert j.equivalent("What is x?", "7", "8") is True
    texts, params = b.calls[0]
    assert params.n == 3 and params.stop == () and params.logprobs is False
    assert "GOLD: 8" in texts[0] and "PRED: 7" in texts[0] and texts[0].startswith("[system]You grade.")
    assert j.errors == 0

    j, _ = _judge(votes("Verdict: yes", "Verdict: no", "no idea"))
    v = j.equivalent_many([("q", "7", "8")])[0]
    assert (v.decision, v.yes, v.no, v.errors) == (False, 1, 1, 1)  # 1 of 3 is not a majority
    assert j.errors == 1 and j.stats["votes"] == 3

    j, _ = _judge(votes("rambling", "", "Verdict: maybe"))
    assert j.concise("q", "<answer>\\boxed{1}</answer>") is False
    assert j.errors == 3


def test_backend_failure_is_false_and_counted():
    j, b = _judge(votes("Verdict: yes"), n_votes=1, fail=True)
    assert j.equivalent_many([("q", "7", "8"), ("q", "1", "2")])[0].decision is False
    assert j.errors == 2 and len(b.calls) == 1


def test_verdict_parsing():
    j, _ = _judge(votes("x"), n_votes=1)
    assert j.parse_verdict("Reasoning... Verdict: YES") is True
    assert j.parse_verdict("**Verdict:** No") is False
    assert j.parse_verdict("Verdict: no\nOn reflection, Verdict: yes") is True  # last one counts
    assert j.parse_verdict("Verdict: equivalent") is True
    assert j.parse_verdict("I say yes") is None
    assert j.parse_verdict("") is None


def test_math_shortcut_and_missing_prediction_skip_the_llm():
    j, b = _judge(votes("Verdict: no", "Verdict: no", "Verdict: no"))
    assert j.equivalent("q", "\\frac{1}{2}", ["0.5"]) is True  # math-verify says equal: no call
    assert j.equivalent("q", None, "3") is False
    assert b.calls == [] and j.stats["shortcuts"] == 1
    j, b = _judge(votes("Verdict: yes"), n_votes=1, shortcut_math=False)
    assert j.equivalent("q", "1/2", "0.5") is True and len(b.calls) == 1


def test_batches_keep_order():
    reply = lambda text, k: "Verdict: yes" if "PRED: good" in text else "Verdict: no"  # noqa: E731
    j, b = _judge(reply, n_votes=1, batch_size=2)
    items = [("q", p, "gold") for p in ("good", "bad", "good", "bad", "good")]
    assert [v.decision for v in j.equivalent_many(items)] == [True, False, True, False, True]
    assert [len(t) for t, _ in b.calls] == [2, 2, 1]


def test_grade_and_concise_fn_adapters():
    reply = lambda text, k: "Verdict: yes" if "PRED: 4" in text else "Verdict: no"  # noqa: E731
    j, b = _judge(reply, shortcut_math=False)
    math = Example(id="m", question="2+2?", answers=["four"], domain="math", source="t")
    assert j.grade(math, "4", "math") == 1.0 and j.grade(math, "5", "math") == 0.0
    qa = Example(id="a", question="Capital?", answers=["Paris"], domain="qa", source="t")
    n_calls = len(b.calls)
    assert j.grade(qa, "Paris", "f1") == 1.0 and len(b.calls) == n_calls  # QA: token F1, no LLM
    # as the math judge of the run's grader (judge=llm): math via the judge, QA as usual
    g = GRADER.with_judge(j)
    assert g.grade(math, "4") == 1.0 and g.grade(qa, "Paris") == 1.0 and len(b.calls) == n_calls + 1
    j, _ = _judge(lambda t, k: "Verdict: yes" if "<python>" not in t else "Verdict: no")
    traj = Trajectory(id="t", example_id="a", group_id="a", response_text="<answer>\\boxed{Paris}</answer>")
    assert j.concise_fn(traj, qa) is True


def test_bad_configuration_is_rejected():
    b = FakeBackend(votes("x"))
    with pytest.raises(ValueError, match=r"judge.prompts.equivalence: .*missing \['gold'\]"):
        LLMJudge(b, dict(PROMPTS, equivalence="{question} {prediction}"))
    with pytest.raises(ValueError, match=r"judge.prompts.conciseness is missing"):
        LLMJudge(b, {"equivalence": PROMPTS["equivalence"]})
    with pytest.raises(ValueError, match="n_votes"):
        LLMJudge(b, PROMPTS, n_votes=0)
    with pytest.raises(ValueError, match="capture group"):
        LLMJudge(b, PROMPTS, verdict_pattern="verdict")
    with pytest.raises(ValueError, match="backend is null"):
        LLMJudge(None, PROMPTS)


def test_llm_yaml_prompts_instantiate_and_work():
    cfg = OmegaConf.load(CONF / "llm.yaml")
    assert cfg._target_ == "etagent.judge.LLMJudge" and cfg.backend is None
    backend = FakeBackend(lambda text, k: "The values agree.\nVerdict: yes" if "17" in text else "Verdict: no")
    judge = build_judge(cfg, backend=backend)
    assert isinstance(judge, LLMJudge) and judge.n_votes == cfg.n_votes
    assert judge.positive >= {"yes"} and "no" in judge.negative  # quoted in YAML: not booleans
    assert judge.equivalent("Compute 10+7.", "17", "seventeen") is True
    text = backend.calls[-1][0][0]
    assert "Compute 10+7." in text and "seventeen" in text and "{question}" not in text
    assert judge.concise("Q?", "<answer>\\boxed{1}</answer>") is False
    assert build_judge(OmegaConf.load(CONF / "none.yaml").judge) is None
