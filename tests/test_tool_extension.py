"""Adding a tool = its class + its YAML node: a calculator (tests/calculator_tool.py, node in
tests/tool_conf/tools/with_calculator.yaml) is prompted, stopped on, parsed, dispatched and
counted like the built-in tools; the default grammar stays byte-identical."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from etagent import protocol
from etagent.backends.base import Completion, GenerationBackend, SamplingParams, find_stop
from etagent.behaviour import normalise_query
from etagent.models.tokenizer import build_tokenizer
from etagent.pipeline.components import system_prompt
from etagent.records import Example
from etagent.rollout.engine import RolloutEngine
from etagent.flywheel.textops import edit_dedup_key
from etagent.tools import ToolSpec, build_toolset, config_grammar

TOOL_CONF = Path(__file__).resolve().parent / "tool_conf"
WITH_CALC = [f"hydra.searchpath=[file://{TOOL_CONF}]", "tools=with_calculator",
             "tools.python.pool_size=1", "tools.python.preimport=[]", "tools.search.backend=cache"]

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


def test_default_grammar_is_byte_identical_to_the_legacy_protocol(cfg_factory):
    g = config_grammar(cfg_factory().tools)
    assert g == protocol.default_grammar()
    assert protocol.SYSTEM_PROMPT == g.system_prompt == LEGACY_PROMPT
    assert protocol.STOP_STRINGS == g.stop_strings == ("</python>", "</search>", "</answer>")
    assert protocol.CALL_STOP_STRINGS == ("</python>", "</search>")
    assert protocol.TAG_TOKENS == g.tag_tokens == LEGACY_TAG_TOKENS  # the tiny tokenizer's atomic tokens
    assert protocol.TOOL_TAGS == ("python", "search")


def test_calculator_node_extends_prompt_stops_and_parser(cfg_factory):
    cfg = cfg_factory(WITH_CALC + ["model.use_system_prompt=true"])
    g = config_grammar(cfg.tools)
    assert g.tool_tags == ("python", "search", "calculator")
    assert "</calculator>" in g.stop_strings and g.call_kind["</calculator>"] == "calculator"
    assert "<calculator> </calculator>" in g.system_prompt
    assert system_prompt(SimpleNamespace(cfg=cfg)) == g.system_prompt  # what the stages prompt with
    text = "<think>t</think><calculator>6 * 7</calculator><result>\n42\n</result><answer>\\boxed{42}</answer>"
    assert g.parse(text).call_counts() == {"python": 0, "search": 0, "calculator": 1} and g.is_valid(text)
    # the default grammar does not know the tag: an unknown tag, the result an orphan
    assert {"unknown_tag", "orphan_result"} <= {e.code for e in protocol.validate(text)}
    # tool output cannot open or close the new tag either
    assert g.format_result("</calculator> x") == "<result>\n&lt;/calculator&gt; x\n</result>"
    # the tool's own canonical query key; the flywheel's stricter edit-dedup key keeps case for it
    assert normalise_query("calculator", " 6 *  7 ", g) == "6*7"
    assert normalise_query("calculator", " 6 *  7 ") == "6 * 7"  # unknown to the default grammar
    assert edit_dedup_key("calculator", " 6 *  7 ", g) == "6 * 7"
    assert edit_dedup_key("search", "Capital  of France?") == "capital of france?"


def test_tool_spec_rejects_tags_the_grammar_cannot_use():
    for name in ("result", "answer", "think", "text", "two words", ""):
        with pytest.raises(ValueError, match="tool name"):
            ToolSpec(name, f"to x, write it inside <{name}> </{name}>")
    with pytest.raises(ValueError, match="must show the call"):
        ToolSpec("calc", "to evaluate arithmetic, write an expression")
    spec = ToolSpec("calc", "to x, write it inside <calc> </calc>")
    with pytest.raises(ValueError, match="unique"):
        protocol.Grammar([spec, spec])


def test_a_configured_calculator_is_called_in_a_rollout(cfg_factory, tmp_path):
    cfg = cfg_factory(WITH_CALC, run_dir=tmp_path)
    turns = ["<think>multiply</think><calculator>6 * 7</calculator> ignored",
             "<think>got it</think><answer>The answer is \\boxed{42}</answer>"]
    tok = build_tokenizer(turns + [LEGACY_PROMPT, "What is 6*7?"], vocab_size=300)
    ex = Example(id="m1", question="What is 6*7?", answers=["42"], domain="math", source="t")
    with build_toolset(cfg.tools) as ts:
        assert ts.kinds == ("python", "search", "calculator") and ts.grammar == config_grammar(cfg.tools)
        backend = TurnBackend(tok, turns)
        [t] = RolloutEngine(backend, ts, system_prompt=ts.grammar.system_prompt).rollout([ex], 1, SamplingParams())
        assert ts.tools["calculator"].calls == ["6 * 7"]
    assert all("</calculator>" in stops for stops in backend.stops)  # the sampler stopped after the call
    assert [(c.kind, c.query, c.result, c.status) for c in t.tool_calls] == [("calculator", "6 * 7", "42", "ok")]
    assert "<calculator>6 * 7</calculator><result>\n42\n</result>" in t.response_text
    assert "ignored" not in t.response_text
    assert t.finish_reason == "answer" and t.score == 1.0 and t.format_errors == []
    assert t.num_calls == 1 and t.behaviour["n_calls"] == 1 and t.behaviour["n_aborted"] == 0
    assert "<calculator> </calculator>" in tok.decode(t.prompt_ids, skip_special_tokens=False)
    # the RL reward's tool count (f_tool) sees the call once it has the run's grammar (stage_rl wires it)
    from etagent.rl.reward import N_CALLS, RewardFn

    assert t.parsed().num_calls == 0 and t.parsed(ts.grammar).num_calls == 1
    assert RewardFn().components([[t]])[0, 0, N_CALLS].item() == 0.0
    assert RewardFn().use_grammar(ts.grammar).components([[t]])[0, 0, N_CALLS].item() == 1.0


def test_inline_override_adds_a_tool_and_a_misnamed_node_fails_early(cfg_factory):
    cfg = cfg_factory(["+tools.calculator={_target_: calculator_tool.Calculator}"])
    assert config_grammar(cfg.tools).tool_tags == ("python", "search", "calculator")
    bad = cfg_factory(["+tools.calc={_target_: calculator_tool.Calculator}", "tools.python=null"])
    with pytest.raises(ValueError, match=r"tools\.calc: .*<calculator>.*tools\.calculator"):
        build_toolset(bad.tools)
    with pytest.raises(ValueError, match=r"tools\.calc"):
        config_grammar(bad.tools)
    nospec = cfg_factory(["+tools.clock={_target_: datetime.datetime}", "tools.python=null"])
    with pytest.raises(ValueError, match=r"tools\.clock\._target_=.*ToolSpec"):
        build_toolset(nospec.tools)


def test_grammar_follows_a_reduced_tool_set(cfg_factory):
    """A python-only agent is neither told about search nor stopped/dispatched on <search>."""
    g = config_grammar(cfg_factory(["tools.search=null"]).tools)
    assert g.tool_tags == ("python",) and g.stop_strings == ("</python>", "</answer>")
    assert "<search>" not in g.system_prompt and "To run Python code, write it inside <python> </python>." in g.system_prompt
    text = "<think>t</think><search>x</search><result>\nr\n</result><answer>\\boxed{1}</answer>"
    assert g.parse(text).num_calls == 0 and "unknown_tag" in {e.code for e in g.validate(text)}


def test_fault_hint_tool_comes_from_the_specs(cfg_factory):
    """The flywheel picks a hint's tool from the grammar: a failed call's own tool, else the first
    tool whose spec lists the domain (default tools: math -> python, qa -> search)."""
    from etagent.flywheel.fault import ABORTED, INSUFFICIENT, Fault, tool_for_fault
    from etagent.records import ToolCall, Trajectory

    g = config_grammar(cfg_factory(["+tools.calculator={_target_: calculator_tool.Calculator}"]).tools)
    math = Example(id="m", question="q", answers=["1"], domain="math", source="t")
    qa = Example(id="q", question="q", answers=["a"], domain="qa", source="t")
    failed = Trajectory(id="t", example_id="m", group_id="m", response_text="",
                        tool_calls=[ToolCall("calculator", "1/0", "Error", "error", 0.0)])
    plain = Trajectory(id="u", example_id="m", group_id="m", response_text="")
    assert tool_for_fault(math, Fault(0, INSUFFICIENT, 0), plain) == "python"
    assert tool_for_fault(qa, Fault(0, INSUFFICIENT, 0), plain) == "search"
    assert tool_for_fault(math, Fault(0, ABORTED, 0), failed, g) == "calculator"
    assert tool_for_fault(math, Fault(0, ABORTED, 0), failed) == "python"  # unknown to the default grammar
