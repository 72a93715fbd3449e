"""Adding a tool = its class + its YAML node, no other file: a calculator (tests/calculator_tool.py, node
in tests/tool_conf/tools/with_calculator.yaml) reaches every consumer through the run environment
(etagent.runenv.RunEnv, built from the composed config): one test per consumer below (prompt, rollout
dispatch, flywheel verification and edits, reward, Pareto statistics, metrics, tokenizer; the verl agent
loop's stop strings: tests/test_verl_pkg_agent_loop.py). The default grammar stays byte-identical."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from etagent import protocol
from etagent.backends.base import Completion, GenerationBackend, SamplingParams, find_stop
from etagent.behaviour import normalise_query
from etagent.flywheel.textops import edit_dedup_key
from etagent.models.tokenizer import build_tokenizer
from etagent.records import BUDGET, INVALID, OK, Example, ToolCall, Trajectory
from etagent.rollout.engine import RolloutEngine
from etagent.runenv import RunEnv
from etagent.tools import ToolSpec, build_toolset, config_grammar
from run_env import GRAMMAR

TOOL_CONF = Path(__file__).resolve().parent / "tool_conf"
WITH_CALC = [f"hydra.searchpath=[file://{TOOL_CONF}]", "tools=with_calculator",
             "tools.python.pool_size=1", "tools.python.preimport=[]", "tools.search.backend=cache"]
CALC_TURN = "<calculator>6 * 7</calculator><result>\n42\n</result>"
CALC_TEXT = f"<think>multiply</think>{CALC_TURN}<answer>\\boxed{{42}}</answer>"
MATH = Example(id="m1", question="What is 6*7?", answers=["42"], domain="math", source="t")

#: the protocol before tools owned their grammar (numbers depend on these staying byte-identical)
LEGACY_PROMPT = (
    "You are a helpful assistant that solves problems by reasoning step by step and using tools when they help. "
    "Think inside <think> </think>. To run Python code, write it inside <python> </python>; to search for "
    "information, write a query inside <search> </search>. The tool output will be returned inside <result> "
    "</result>. Use a tool only when it is needed, and avoid repeating calls. Give the final answer inside <answer> "
    "</answer>, with the answer in \\boxed{}, e.g. <answer>The answer is \\boxed{42}</answer>."
)
LEGACY_TAG_TOKENS = ("<think>", "</think>", "<python>", "</python>", "<search>", "</search>", "<result>",
                     "</result>", "<answer>", "</answer>")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The run environment of a config with the calculator node (tool set built on first use)."""
    from conftest import compose

    cfg = compose(WITH_CALC + ["model.use_system_prompt=true"], run_dir=tmp_path_factory.mktemp("calc"))
    with RunEnv.from_config(cfg) as e:
        yield e


class TurnBackend(GenerationBackend):
    """Answers turn k (k = result blocks so far) with ``turns[k]``, cut after the first stop
    string of ``params.stop`` as a real sampler would (so a missing stop string shows)."""

    def __init__(self, tokenizer, turns: list[str]):
        self.tokenizer, self.turns = tokenizer, turns
        self.stops: list[tuple[str, ...]] = []

    def generate(self, prefixes, params):
        self.stops.append(tuple(params.stop))
        out = []
        for prefix in prefixes:
            response = self.tokenizer.decode(prefix, skip_special_tokens=False).split("<|im_start|>assistant\n", 1)[1]
            text = self.turns[min(response.count("</result>"), len(self.turns) - 1)]
            hit = find_stop(text, tuple(params.stop))
            finish, stop = ("stop", hit[1]) if hit else ("length", None)
            ids = self.tokenizer.encode(text[: hit[0]] if hit else text, add_special_tokens=False)
            out.append([Completion(ids, [-0.1] * len(ids), finish, stop)] * params.n)
        return out


def _traj(text: str, calls: list[ToolCall], score: float = 1.0, tid: str = "t") -> Trajectory:
    return Trajectory(id=tid, example_id=MATH.id, group_id=MATH.id, response_text=text, tool_calls=calls,
                      score=score, response_mask=[1] * 10, meta={"round": 1, "strategy": "sample", "parent_id": None})


def test_default_grammar_is_byte_identical_to_the_legacy_protocol(cfg_factory):
    g = RunEnv.from_config(cfg_factory()).grammar
    assert g == GRAMMAR == config_grammar(cfg_factory().tools)
    assert g.system_prompt == LEGACY_PROMPT
    assert g.stop_strings == ("</python>", "</search>", "</answer>") and g.call_stop_strings == ("</python>", "</search>")
    assert g.tag_tokens == LEGACY_TAG_TOKENS  # the tiny tokenizer's atomic tokens
    assert g.tool_tags == ("python", "search")
    # there is no module-level grammar to fall back on
    for gone in ("default_grammar", "parse", "validate", "format_result", "STOP_STRINGS", "SYSTEM_PROMPT", "TAG_TOKENS"):
        assert not hasattr(protocol, gone), gone


def test_prompted(env, cfg_factory):
    """The system prompt describes the calculator (what the stages prompt with)."""
    g = env.grammar
    assert g.tool_tags == ("python", "search", "calculator")
    assert "<calculator> </calculator>" in env.system_prompt == g.system_prompt
    assert RunEnv.from_config(cfg_factory(WITH_CALC)).system_prompt is None  # tiny: no system prompt
    assert "<calculator> </calculator>" in RunEnv.from_config(cfg_factory(WITH_CALC)).tool_prompt  # verl export's


def test_dispatched_by_the_rollout_engine(env):
    """The sampler stops after the call, the engine dispatches it to the calculator and labels it."""
    turns = ["<think>multiply</think><calculator>6 * 7</calculator> ignored",
             "<think>got it</think><answer>The answer is \\boxed{42}</answer>"]
    tok = build_tokenizer(turns + [LEGACY_PROMPT, MATH.question], tag_tokens=env.grammar.tag_tokens, vocab_size=300)
    ts = env.toolset
    assert ts.kinds == ("python", "search", "calculator") and ts.grammar == env.grammar
    backend = TurnBackend(tok, turns)
    [t] = RolloutEngine(backend, ts, env.grader, env.grammar, system_prompt=env.system_prompt).rollout(
        [MATH], 1, SamplingParams())
    assert ts.tools["calculator"].calls[-1] == "6 * 7"
    assert all("</calculator>" in stops for stops in backend.stops)  # the sampler stopped after the call
    assert [(c.kind, c.query, c.result, c.status) for c in t.tool_calls] == [("calculator", "6 * 7", "42", "ok")]
    assert "<calculator>6 * 7</calculator><result>\n42\n</result>" in t.response_text and "ignored" not in t.response_text
    assert t.finish_reason == "answer" and t.score == 1.0 and t.format_errors == []
    assert t.n_calls(env.grammar) == t.n_executed == 1 and t.behaviour["n_calls"] == 1 and t.behaviour["n_aborted"] == 0
    assert "<calculator> </calculator>" in tok.decode(t.prompt_ids, skip_special_tokens=False)


def test_verified_and_edited_by_the_flywheel(env):
    """The verifier re-executes the calculator call; the redundancy edit, fault typing and hint
    choice see it as a call of its own tool."""
    from etagent.flywheel.evolvers import PolicyEvolver
    from etagent.flywheel.fault import ABORTED, Fault, locate_fault, tool_for_fault
    from etagent.flywheel.strategies import remove_redundant
    from etagent.flywheel.verify import ACCEPTED, Candidate, Verifier

    class Chars:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    v = Verifier(env.toolset, Chars(), env.grader.with_threshold(0.75), env.grammar)
    parent = _traj(CALC_TEXT, [ToolCall("calculator", "6 * 7", "42", OK)])
    dup = CALC_TEXT.replace("</result>", "</result><think>again</think>" + CALC_TURN, 1)
    text, removals = remove_redundant(dup, MATH.question, env.grammar)
    assert [(r.kind, r.reason) for r in removals] == [("calculator", "duplicate")] and text.count(CALC_TURN) == 1
    (verdict,) = v.verify([Candidate(MATH, parent, text, "modify_redundancy", check_grounding=True)])
    assert verdict.reason == ACCEPTED, verdict.detail
    assert [(c.kind, c.result, c.status) for c in verdict.traj.tool_calls] == [("calculator", "42", "ok")]
    assert verdict.traj.behaviour == {} and verdict.traj.n_calls(env.grammar) == 1
    wrong = _traj("<think>t</think><calculator>6 / 0</calculator><result>\nError\n</result><answer>\\boxed{0}</answer>",
                  [ToolCall("calculator", "6 / 0", "Error", "error")], score=0.0)
    fault = locate_fault(wrong, MATH, env.grammar)
    assert fault.kind == ABORTED and wrong.response_text[: fault.pos].endswith("Error\n</result>")
    assert tool_for_fault(MATH, fault, wrong, env.grammar) == "calculator"
    assert tool_for_fault(MATH, Fault(0, ABORTED, 0), wrong, GRAMMAR) == "python"  # unknown to the default grammar
    assert PolicyEvolver(grammar=env.grammar).grammar == env.grammar


def test_counted_by_the_reward(env):
    from etagent.rl.reward import N_CALLS, RewardFn, score_components

    t = _traj(CALC_TEXT, [ToolCall("calculator", "6 * 7", "42", OK)])
    assert RewardFn(grammar=env.grammar).components([[t]])[0, 0, N_CALLS].item() == 1.0
    assert RewardFn(grammar=GRAMMAR).components([[t]])[0, 0, N_CALLS].item() == 0.0  # another run's grammar
    c = score_components(CALC_TEXT, MATH, grader=env.grader, grammar=env.grammar, model_tokens=5)
    assert c["n_calls"] == 1 and c["format_ok"] and c["correctness"] == 1.0


def test_counted_by_the_pareto_statistics(env, tmp_path):
    """The sampler sees executed calls: a calculator call that ran counts, a budget-refused or
    invalid one does not (released pareto/data_process.py)."""
    from etagent.rl.curriculum import Schedule, StageSpec, sample_and_select
    from etagent.rl.grpo import GRPOConfig

    seen = {}

    class Sampler:
        name = "spy"

        def select(self, tool_counts, correctness, domains, grader):
            seen.update(tool_counts=tool_counts, grader=grader)
            return [0]

    refused = CALC_TEXT.replace("<answer>", "<calculator>1+1</calculator><answer>")
    rows = {0: (CALC_TEXT, [ToolCall("calculator", "6 * 7", "42", OK)]),
            1: (refused, [ToolCall("calculator", "6 * 7", "42", OK), ToolCall("calculator", "1+1", "", BUDGET)]),
            2: ("<think>t</think></calculator><result>\nError\n</result><answer>\\boxed{42}</answer>",
                [ToolCall("calculator", "", "Error: no opener", INVALID)])}

    class Engine:
        grader = env.grader

        def rollout(self, examples, n, params, group_prefix="", budget=None):
            return [Trajectory(id=f"{group_prefix}{e.id}#{k}", example_id=e.id, group_id=f"{group_prefix}{e.id}",
                               response_text=rows[k][0], tool_calls=rows[k][1], score=1.0)
                    for e in examples for k in range(n)]

    sel = sample_and_select(Engine(), [MATH], StageSpec(k=3), Sampler(), GRPOConfig(), Schedule(), 1)
    assert seen["tool_counts"] == [[1, 1, 0]] and seen["grader"] is env.grader
    assert sel["sample_tool_calls_mean"] == pytest.approx(2 / 3)
    assert [Trajectory(id="x", example_id="m", group_id="m", response_text=text, tool_calls=calls).n_calls(env.grammar)
            for text, calls in rows.values()] == [1, 2, 0]  # the official count differs: it counts tags


def test_counted_by_the_metrics_and_labels(env):
    from etagent.behaviour import label_behaviour
    from etagent.evaluation.metrics import compute_metrics

    t = _traj(CALC_TEXT, [ToolCall("calculator", "6 * 7", "42", OK)])
    m = compute_metrics([t], {MATH.id: MATH}, grader=env.grader, grammar=env.grammar)
    assert m["mean_calls"] == 1.0 and m["efficiency"] == 1.0 and m["call_success_rate"] == 1.0
    assert compute_metrics([t], {MATH.id: MATH}, grader=env.grader, grammar=GRAMMAR)["mean_calls"] == 0.0
    assert label_behaviour(t, MATH, grader=env.grader, grammar=env.grammar)["n_calls"] == 1


def test_tokenised_atomically(env):
    texts = [CALC_TEXT, MATH.question] * 5
    tok = build_tokenizer(texts, tag_tokens=env.grammar.tag_tokens, vocab_size=300)
    for tag in ("<calculator>", "</calculator>"):
        assert len(tok.encode(tag, add_special_tokens=False)) == 1
        assert tok.encode(f"x{tag}y", add_special_tokens=False)[1] == tok.convert_tokens_to_ids(tag)
    plain = build_tokenizer(texts, tag_tokens=GRAMMAR.tag_tokens, vocab_size=300)
    assert len(plain.encode("</calculator>", add_special_tokens=False)) > 1  # not a tag of the default grammar


def test_parser_and_canonical_queries_follow_the_configured_tools(env):
    g = env.grammar
    assert "</calculator>" in g.stop_strings and g.call_kind["</calculator>"] == "calculator"
    assert g.parse(CALC_TEXT).call_counts() == {"python": 0, "search": 0, "calculator": 1} and g.is_valid(CALC_TEXT)
    # the default grammar does not know the tag: an unknown tag, the result an orphan
    assert {"unknown_tag", "orphan_result"} <= {e.code for e in GRAMMAR.validate(CALC_TEXT)}
    # tool output cannot open or close the new tag either
    assert g.format_result("</calculator> x") == "<result>\n&lt;/calculator&gt; x\n</result>"
    # the tool's own canonical query key; the flywheel's stricter edit-dedup key keeps case for it
    assert normalise_query("calculator", " 6 *  7 ", g) == "6*7"
    assert normalise_query("calculator", " 6 *  7 ", GRAMMAR) == "6 * 7"  # unknown to the default grammar
    assert edit_dedup_key("calculator", " 6 *  7 ", g) == "6 * 7"
    assert edit_dedup_key("search", "Capital  of France?", g) == "capital of france?"
    assert SimpleNamespace(grammar=g).grammar.tool_tags[-1] == "calculator"


def test_tool_spec_rejects_tags_the_grammar_cannot_use():
    for name in ("result", "answer", "think", "text", "two words", ""):
        with pytest.raises(ValueError, match="tool name"):
            ToolSpec(name, f"to x, write it inside <{name}> </{name}>")
    with pytest.raises(ValueError, match="must show the call"):
        ToolSpec("calc", "to evaluate arithmetic, write an expression")
    spec = ToolSpec("calc", "to x, write it inside <calc> </calc>")
    with pytest.raises(ValueError, match="unique"):
        protocol.Grammar([spec, spec])


def test_inline_override_adds_a_tool_and_a_misnamed_node_fails_early(cfg_factory):
    cfg = cfg_factory(["+tools.calculator={_target_: calculator_tool.Calculator}"])
    assert config_grammar(cfg.tools).tool_tags == ("python", "search", "calculator")
    bad = cfg_factory(["+tools.calc={_target_: calculator_tool.Calculator}", "tools.python=null"])
    with pytest.raises(ValueError, match=r"tools\.calc: .*<calculator>.*tools\.calculator"):
        build_toolset(bad.tools)
    with pytest.raises(ValueError, match=r"tools\.calc"):
        RunEnv.from_config(bad)
    nospec = cfg_factory(["+tools.clock={_target_: datetime.datetime}", "tools.python=null"])
    with pytest.raises(ValueError, match=r"tools\.clock\._target_=.*ToolSpec"):
        build_toolset(nospec.tools)


def test_grammar_follows_a_reduced_tool_set(cfg_factory):
    """A python-only agent is neither told about search nor stopped/dispatched on <search>."""
    g = RunEnv.from_config(cfg_factory(["tools.search=null"])).grammar
    assert g.tool_tags == ("python",) and g.stop_strings == ("</python>", "</answer>")
    assert "<search>" not in g.system_prompt and "To run Python code, write it inside <python> </python>." in g.system_prompt
    text = "<think>t</think><search>x</search><result>\nr\n</result><answer>\\boxed{1}</answer>"
    assert g.parse(text).num_calls == 0 and "unknown_tag" in {e.code for e in g.validate(text)}
