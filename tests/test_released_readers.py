"""The released readers as tables (issue 23, N4/N6/N10): the evaluation's answer extraction with
its last-five-lines fallback, the RL reward's answer (last ``\\boxed`` anywhere once an answer
block exists), and the released ``validate_format`` language next to etagent's strict grammar.
Each row is what the released function returns for that text (asilverlight/ET-Agent:
``flywheel/src/utils.py`` extract_answer, ``evaluation/src/evaluator.py``,
``ARPO/.../reward_score/efficiency.py`` and ``validate_format.py``)."""

from __future__ import annotations

import pytest

from etagent import grading, protocol
from etagent.backends.base import SamplingParams
from etagent.records import Example
from etagent.rollout.engine import RolloutEngine

from run_env import ENV, GRADER, GRAMMAR
from test_rollout import MATH, QA, Scripted, tok, tools  # noqa: F401 - fixtures

B = "\\boxed"
FIVE = "l1\nl2\nl3\nl4\nl5\nl6\nl7"

# (text, official_eval_answer, strict block_answer)
EVAL_CASES = [
    (f"<answer>{B}{{42}}</answer>", "42", "42"),
    (f"<think>t</think><answer>The answer is {B}{{42}}.</answer>", "42", "42"),
    ("<answer>Paris</answer>", "Paris", None),  # no \boxed: the block's text
    ("<answer> Paris </answer>", " Paris ", None),  # raw, not stripped
    (f"<answer>{B}{{\\text{{Paris}}}}</answer>", "Paris", "\\text{Paris}"),  # \text{} unwrapped
    (f"<answer>{B}{{}}</answer>", f"{B}{{}}", ""),  # an empty box: the block's text
    (f"{B}{{7}}", "7", None),  # no answer block: the last \boxed anywhere
    (f"<think>{B}{{3}}</think> so it is", "3", None),
    (f"<answer>{B}{{1}}</answer><answer>{B}{{2}}</answer>", "2", "2"),  # the last block
    (f"<answer>x</answer> later {B}{{9}}", "x", None),  # a block beats a later \boxed
    (f"<answer>{B}{{\\frac{{1}}{{2}}}}</answer>", "\\frac{1}{2}", "\\frac{1}{2}"),
    (f"<answer>{B}{{12</answer>", f"{B}{{12", None),  # an unclosed box: kept as written
    ("<answer>\\fbox{5}</answer>", "\\fbox{5}", "5"),  # \fbox is found but not unwrapped
    (f"<answer>{B} 5</answer>", f"{B} 5", "5"),
    (f"<answer>{B}{{a{{b}}c}}</answer>", "a{b}c", "a{b}c"),  # nested braces
    (f"<answer>{B}{{1}} or {B}{{2}}</answer>", "2", "2"),  # the last box of the block
    (f"<python>x</python><result>{B}{{5}}</result>", "5", None),  # no block: even a result's box counts
    (f"<answer>{B}{{4}}", "4", None),  # unclosed block: read as no block
    (f"</answer>{B}{{8}}", "8", None),  # a closer without opener: no block
    (f"x</answer><answer>{B}{{5}}</answer>", "5", "5"),
    (f"<answer>A</answer> <answer>", "A", None),  # the last closed block
    (f"<answer>{B}{{\\text{{a}} b}}</answer>", "\\text{a} b", "\\text{a} b"),
    (f"{B}{{\\text{{yes}}}}", "yes", None),
    ("<answer>The capital</answer>", "The capital", None),
    ("<answer>  </answer>", "  ", None),  # whitespace is an answer (released truthiness)
    # nothing extractable: the evaluator's fallback to the last five lines (blank lines squeezed)
    (FIVE, "l3\nl4\nl5\nl6\nl7", None),
    ("a\n\n\nb", "a\n\nb", None),
    ("<answer></answer>\nso", "<answer></answer>\nso", None),  # empty block, no box: fallback
    ("", None, None),
    ("   \n  ", None, None),
]

# (text, domain, official_reward_answer)
REWARD_CASES = [
    (f"<think>t</think><answer>{B}{{1}}</answer> then {B}{{2}}", "math", "2"),  # N10: last box anywhere
    (f"<think>{B}{{3}}</think><answer>the answer</answer>", "math", "3"),
    (f"{B}{{2}}", "math", None),  # no answer block, no credit
    (f"<answer>{B}{{A}}</answer><answer>{B}{{B}}</answer>", "math", "B"),
    (f"<answer>{B}{{A}}</answer><answer>{B}{{B}}</answer>", "qa", "A"),  # QA: the first block's box
    (f"<answer>{B}{{Paris}}</answer> {B}{{Rome}}", "qa", "Paris"),
    ("<answer>Paris</answer>", "qa", None),  # QA needs a box in the block
    (f"<answer>{B}{{5</answer>", "math", None),  # braces never close
    (f"<answer>{B} 5$</answer>", "math", f"{B} 5"),  # "\boxed " with a space wins
    (f"<answer>{B}{{\\frac{{3}}{{4}}}}</answer>", "math", "\\frac{3}{4}"),
]


@pytest.mark.parametrize("text, official, strict", EVAL_CASES)
def test_released_evaluation_answer_extraction(text, official, strict):
    assert grading.official_eval_answer(text) == official
    assert grading.extract_for(text, "official_eval", "math", GRAMMAR) == official
    assert grading.block_answer(text, GRAMMAR) == strict == grading.extract_for(text, "strict", "qa", GRAMMAR)


@pytest.mark.parametrize("text, domain, expected", REWARD_CASES)
def test_released_reward_answer(text, domain, expected):
    assert grading.official_reward_answer(text, domain) == expected == grading.extract_for(text, "official_reward", domain, GRAMMAR)


def test_extraction_rules_are_named():
    assert len(EVAL_CASES) + len(REWARD_CASES) >= 30
    with pytest.raises(ValueError, match="answer extraction"):
        grading.extract_for("x", "lenient", "math", GRAMMAR)


def test_eval_reading_grades_through_the_engine(tok, tools):
    """The engine grades what its reader extracts: an unboxed QA answer block earns F1 only officially."""
    be = Scripted(tok, {QA.question: [["<think>known</think><answer>Frank Herbert</answer>"]]})
    (strict,) = RolloutEngine(be, tools, GRADER, GRAMMAR, system_prompt=None).rollout([QA], 1, SamplingParams())
    (official,) = RolloutEngine(be, tools, GRADER, GRAMMAR, system_prompt=None, answer_extraction="official_eval").rollout([QA], 1, SamplingParams())
    assert (strict.answer, strict.score) == (None, 0.0)
    assert (official.answer, official.score) == ("Frank Herbert", 1.0)
    with pytest.raises(ValueError, match="answer_extraction"):
        RolloutEngine(be, tools, GRADER, GRAMMAR, system_prompt=None, answer_extraction="official")


# --------------------------------------------------------------------------- format rules

THINK = "<think>a</think>"
ANS = f"<answer>{B}{{1}}</answer>"
CALL = "<python>print(1)</python><result>\n1\n</result>"

# (text, released validate_format accepts, strict error codes or set())
FORMAT_CASES = [
    (THINK + ANS, True, set()),
    (THINK + CALL + ANS, True, set()),
    (ANS, False, {"think_missing"}),
    ("<think>a" + ANS, False, {"unclosed", "nested", "think_missing", "answer_missing"}),  # unbalanced think
    (THINK + f"<answer>1</answer>", False, {"boxed_missing"}),
    (THINK + ANS + ANS, False, {"answer_repeated", "text_after_answer"}),
    (THINK + f"{B}{{1}}", False, {"answer_missing"}),
    (THINK + "</answer>x<answer>" + B + "{1}", False, {"unmatched_close", "unclosed"}),
    (THINK + "<python>print(1)</python>" + ANS, False, {"call_without_result"}),
    (THINK + "<search>q</search>" + ANS, False, {"call_without_result"}),
    # released accepts what strict rejects:
    (THINK + "<python></python><result>\n\n</result>" + ANS, True, {"empty_call"}),  # an empty call
    ("<think>a<think>b</think>c</think>" + ANS, True, {"nested", "unmatched_close"}),  # nested <think>
    (THINK + "<result>orphan</result>" + ANS, True, {"orphan_result"}),  # an orphan <result>
    (THINK + "<python>x</python><think>wait</think><result>\n1\n</result>" + ANS, True,
     {"call_without_result", "orphan_result"}),  # a <think> between a call and its result
    (THINK + "<code>x</code>" + ANS, True, {"unknown_tag"}),
    (THINK + ANS + " and more", True, {"text_after_answer"}),
    # strict reads unknown tags outside <think> only:
    ("<think>since a<b> and c>d, also <br> here</think>" + ANS, True, set()),
    ("<think>a</think>so a<b>" + ANS, True, {"unknown_tag"}),
    # the released order checks:
    (THINK + "<result>r</result><python>x</python>" + ANS, False, {"orphan_result", "call_without_result"}),
    (THINK + "<python>x" + ANS, False, {"unclosed", "nested", "answer_missing"}),
    (THINK + "<answer>\\boxed 1</answer>", False, set()),  # released needs "\boxed{"; strict reads "\boxed 1"
    (THINK + "<search>q</search><result>r</result>" + CALL + ANS, True, set()),
]


@pytest.mark.parametrize("text, released_ok, strict_codes", FORMAT_CASES)
def test_released_validate_format_language_and_strict_rules(text, released_ok, strict_codes):
    grammar = GRAMMAR
    assert grammar.is_valid(text, rules="official") is released_ok
    assert (protocol.official_format_errors(text, grammar.tool_tags) == []) is released_ok
    assert {e.code for e in grammar.validate(text, rules="strict")} == strict_codes


def test_released_validator_follows_the_grammars_tools():
    assert len(FORMAT_CASES) >= 20
    calc = THINK + "<calculator>1+1</calculator>" + ANS  # a call with no result: invalid only if it is a tool
    assert protocol.official_format_errors(calc, ("python", "search")) == []
    assert [e.code for e in protocol.official_format_errors(calc, ("python", "search", "calculator"))] == [
        "call_incomplete"]
    with pytest.raises(ValueError, match="official"):
        protocol.rule_errors(["unknown_tag"], "official")  # the released rules cannot be read from codes


def test_reward_official_rules_and_reader_from_the_text():
    from etagent.rl.reward import score_components

    ex = Example(id="m", question="q", answers=["2"], domain="math", source="t")
    text = "<think>a<think>b</think></think>" + f"<answer>{B}{{1}}</answer> {B}{{2}}"
    strict = score_components(text, ex, **ENV, format_rules="strict")
    official = score_components(text, ex, **ENV, format_rules="official")
    assert not strict["format_ok"] and official["format_ok"]
    assert strict["correctness"] == 0.0  # strict credit: the block's \boxed{1}
    assert grading.official_reward_answer(text, "math") == "2"  # the released reward credits the last box


def test_official_rl_reader_credits_the_last_box_once_an_answer_block_exists(tok, tools, tmp_path):
    """N10 through every RL path: the rollout engine (reward.answer_extraction=official), the
    components the reward and the verl reward share, and the composed config."""
    from conftest import compose
    from etagent.config import build
    from etagent.export.verl_reward import compute_score
    from etagent.rl.reward import score_components

    text = f"<think>so {B}{{42}}</think><answer>the answer is above</answer>"
    be = Scripted(tok, {MATH.question: [[text]]})
    (strict,) = RolloutEngine(be, tools, GRADER, GRAMMAR, system_prompt=None).rollout([MATH], 1, SamplingParams())
    (official,) = RolloutEngine(be, tools, GRADER, GRAMMAR, system_prompt=None, answer_extraction="official_reward").rollout([MATH], 1, SamplingParams())
    assert (strict.answer, strict.score) == (None, 0.0) and (official.answer, official.score) == ("42", 1.0)
    assert score_components(text, MATH, **ENV, answer_extraction="official")["correctness"] == 1.0
    assert score_components(text, MATH, **ENV)["correctness"] == 0.0
    assert compute_score("math_effi_rl", text, ["42"], answer_extraction="official")["correctness"] == 1.0
    no_block = f"<think>so {B}{{42}}</think>"
    assert score_components(no_block, MATH, **ENV, answer_extraction="official")["correctness"] == 0.0
    with pytest.raises(ValueError, match="answer_extraction"):
        score_components(text, MATH, **ENV, answer_extraction="lenient")
    reward = build(compose(["reward.answer_extraction=official"], run_dir=tmp_path).reward, "reward", grammar=GRAMMAR)
    assert reward.engine_extraction == "official_reward"
    assert build(compose([], run_dir=tmp_path).reward, "reward", grammar=GRAMMAR).engine_extraction == "strict"
