"""LLM judge with a fake backend: the released vote rules, verdict parsing, failures, config prompts."""

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
    "conciseness": "Q: {question}\nGOLD: {gold}\nSOLUTION: {response}\nRedundant? Say Verdict: yes/no.",
}


def _judge(reply, n_votes=3, **kw) -> tuple[LLMJudge, FakeBackend]:
    backend = FakeBackend(reply, fail=kw.pop("fail", False))
    return LLMJudge(backend, PROMPTS, n_votes=n_votes, **kw), backend


def votes(*replies):
    return lambda text, k: replies[k]


def test_math_is_accepted_when_a_reply_says_correct():
    j, b = _judge(votes("Verdict: yes"))
    assert j.equivalent("What is x?", "7", "8") is True
    texts, params = b.calls[0]
    assert params.n == 1 and params.stop == () and params.logprobs is False  # released: one judge reply
    assert (params.temperature, params.top_p, params.repetition_penalty) == (0.6, 0.95, 1.05)
    assert "GOLD: 8" in texts[0] and "PRED: 7" in texts[0] and texts[0].startswith("[system]You grade.")
    j, _ = _judge(votes("Verdict: no", "Verdict: yes", "no idea"), math_votes=3)
    v = j.equivalent_many([("q", "7", "8")])[0]
    assert (v.decision, v.yes, v.no, v.errors) == (True, 1, 1, 1)  # any reply saying correct accepts
    assert j.errors == 1 and j.stats["votes"] == 3
    j, _ = _judge(votes("Verdict: no", "rambling"), math_votes=2)
    assert j.equivalent("q", "7", "8") is False


# (votes, concise): released radar/run.py -- concise unless "yes, redundant" votes outnumber "no" votes
VOTE_RULE = [
    (["yes"] * 6 + ["no"] * 4, False),
    (["yes"] * 5 + ["no"] * 5, True),  # a tie is concise
    (["yes"] * 4 + ["no"] * 6, True),
    (["yes"] * 1 + ["garbled"] * 9, False),  # unparsable votes count for neither side
    (["garbled"] * 10, True),
    (["no"] * 10, True),
    (["yes"] * 10, False),
    (["yes"] * 3 + ["no"] * 2 + ["garbled"] * 5, False),
]


@pytest.mark.parametrize("replies, concise", VOTE_RULE)
def test_conciseness_vote_rule_is_the_released_one(replies, concise):
    j, b = _judge(votes(*[f"Verdict: {r}" if r != "garbled" else "hmm" for r in replies]), n_votes=10)
    v = j.concise_many([("q", "<answer>\\boxed{1}</answer>", ["1", "one"])])[0]
    assert v.decision is concise and v.yes + v.no + v.errors == 10
    (texts, params), = b.calls
    assert params.n == 10 and "GOLD: 1 OR one" in texts[0]  # the gold is in the conciseness prompt


def test_backend_failure_is_false_and_counted():
    j, b = _judge(votes("Verdict: yes"), n_votes=1, fail=True)
    assert j.equivalent_many([("q", "7", "8"), ("q", "1", "2")])[0].decision is False
    assert j.errors == 2 and len(b.calls) == 1
    assert j.concise("q", "r", "g") is True  # a failed conciseness call never makes a trajectory redundant


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
    j, _ = _judge(lambda t, k: "Verdict: yes" if "<python>" in t and "GOLD: Paris" in t else "Verdict: no")
    traj = Trajectory(id="t", example_id="a", group_id="a", response_text="<answer>\\boxed{Paris}</answer>")
    assert j.concise_fn(traj, qa) is True
    traj = Trajectory(id="t", example_id="a", group_id="a", response_text="<python>1</python><answer>x</answer>")
    assert j.concise_fn(traj, qa) is False


def test_bad_configuration_is_rejected():
    b = FakeBackend(votes("x"))
    with pytest.raises(ValueError, match=r"judge.prompts.equivalence: .*missing \['gold'\]"):
        LLMJudge(b, dict(PROMPTS, equivalence="{question} {prediction}"))
    with pytest.raises(ValueError, match=r"judge.prompts.conciseness is missing"):
        LLMJudge(b, {"equivalence": PROMPTS["equivalence"]})
    with pytest.raises(ValueError, match="n_votes"):
        LLMJudge(b, PROMPTS, n_votes=0)
    with pytest.raises(ValueError, match=r"judge.prompts.conciseness: .*missing \['gold'\]"):
        LLMJudge(b, dict(PROMPTS, conciseness="{question} {response}"))
    with pytest.raises(ValueError, match="capture group"):
        LLMJudge(b, PROMPTS, verdict_pattern="verdict")
    with pytest.raises(ValueError, match="backend is null"):
        LLMJudge(None, PROMPTS)


def test_llm_yaml_prompts_instantiate_and_work():
    from etagent.config.validate import ConfigError

    cfg = OmegaConf.load(CONF / "llm.yaml")
    assert cfg._target_ == "etagent.judge.LLMJudge" and cfg.backend is None
    with pytest.raises(ConfigError, match="judge.backend"):  # a separate judge model is required
        build_judge(cfg)
    cfg.backend = {"_target_": "judge_backend.ScriptedJudge", "verdict": "yes"}
    judge = build_judge(cfg)
    backend = judge.backend
    assert isinstance(judge, LLMJudge) and (judge.n_votes, judge.math_votes) == (10, 1)
    assert judge.positive >= {"yes"} and "no" in judge.negative  # quoted in YAML: not booleans
    assert judge.equivalent("Compute 10+7.", "17", "seventeen") is True
    text = backend.calls[-1][0][0]
    assert "Compute 10+7." in text and "seventeen" in text and "{question}" not in text
    assert judge.concise("Q?", "<answer>\\boxed{1}</answer>", "1") is False  # 10 x "yes, redundant"
    text = backend.calls[-1][0][0]
    assert "Reference answer: 1" in text and "redundant or ineffective tool call" in text
    assert build_judge(OmegaConf.load(CONF / "none.yaml").judge) is None
