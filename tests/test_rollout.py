"""RolloutEngine: scripted backend (deterministic turns) and the untrained tiny model (garbage), real tools."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

from etagent import protocol
from etagent.backends.base import Completion, GenerationBackend, SamplingParams, find_stop
from etagent.backends.hf import HFBackend
from etagent.models.factory import ModelSpec, build_scratch_model
from etagent.models.tokenizer import build_tokenizer
from etagent.records import Example, Trajectory
from etagent.rollout.branching import EntropyBrancher
from etagent.rollout.engine import RolloutEngine
from etagent.tools.base import ToolSet
from etagent.tools.python_sandbox import PythonSandbox
from etagent.tools.search import build_search_tool
from run_env import GRADER, GRAMMAR

TEXTS = [
    "What is 6*7? <think>multiply</think><python>print(6*7)</python><result>\n42\n</result>"
    "<answer>The answer is \\boxed{42}</answer>",
    "Who wrote Dune? <search>Dune author</search><result>\nDoc 1(Title: Dune) Dune was written by Frank Herbert.\n"
    "</result><answer>\\boxed{Frank Herbert}</answer>",
] * 40
MATH = Example(id="m1", question="What is 6*7?", answers=["42"], domain="math", source="t")
QA = Example(id="q1", question="Who wrote Dune?", answers=["Frank Herbert"], domain="qa", source="t")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    docs = [{"id": "0", "title": "Dune", "text": "Dune was written by Frank Herbert."},
            {"id": "1", "title": "Emma", "text": "Emma was written by Jane Austen."}]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    py = PythonSandbox(pool_size=2, cpu_seconds=2, wall_seconds=5, max_output_chars=200)
    ts = ToolSet({"python": py, "search": build_search_tool(backend="bm25", corpus_path=str(corpus), top_k=1)})
    yield ts
    ts.close()


class Scripted(GenerationBackend):
    """Emits scripted turns: ``scripts[question][sample]`` is a list of turn texts (or id lists).

    The sample of a later turn is recognised by its first turn (scripts of one question must
    start differently when they differ); the turn index is the number of result blocks so far.
    """

    def __init__(self, tokenizer, scripts, entropy=None):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.entropy = entropy  # fn(turn) -> float, reported per token
        self.log: list[tuple[list[int], list[int]]] = []  # (prefix, returned ids)
        self.batches: list[int] = []  # rows per generate call

    def _turn(self, prefix: list[int], j: int):
        text = self.tokenizer.decode(prefix, skip_special_tokens=False)
        q = next(q for q in self.scripts if q in text)
        response = text.split("<|im_start|>assistant\n", 1)[1]
        turn = response.count(protocol.close_tag(protocol.RESULT))
        samples = self.scripts[q]
        if response:
            j = next((k for k, s in enumerate(samples) if response.startswith(self._text(s[0]))), 0)
        script = samples[j % len(samples)]
        return script[turn] if turn < len(script) else "<answer>\\boxed{none}</answer>", turn

    def _text(self, piece) -> str:
        return piece if isinstance(piece, str) else self.tokenizer.decode(piece, skip_special_tokens=False)

    def generate(self, prefixes, params):
        self.batches.append(len(prefixes) * params.n)
        out = []
        for prefix in prefixes:
            comps = []
            for j in range(params.n):
                piece, turn = self._turn(prefix, j)
                ids = list(piece) if not isinstance(piece, str) else self.tokenizer.encode(piece, add_special_tokens=False)
                finish, stop = "length", None
                cut = len(ids)
                for k in range(1, len(ids) + 1):
                    if ids[k - 1] == self.tokenizer.eos_token_id:
                        cut, finish = k - 1, "eos"
                        break
                    hit = find_stop(self.tokenizer.decode(ids[:k], skip_special_tokens=False), params.stop)
                    if hit:
                        cut, finish, stop = k, "stop", hit[1]
                        break
                if cut > params.max_new_tokens:
                    cut, finish, stop = params.max_new_tokens, "length", None
                ids = ids[:cut]
                ent = [self.entropy(turn)] * len(ids) if self.entropy else None
                comps.append(Completion(ids, [-0.1 * (i + 1) for i in range(len(ids))], finish, stop, ent))
                self.log.append((list(prefix), ids))
            out.append(comps)
        return out


def check_invariants(t: Trajectory, backend_log, as_model_prefix=False):
    """Masks, segments, ids preserved end to end, text = whole decode."""
    tok_decode = check_invariants.tok.decode
    n = len(t.response_ids)
    assert len(t.response_mask) == len(t.logprobs) == n
    assert t.response_text == tok_decode(t.response_ids, skip_special_tokens=False)
    segs = t.meta["segments"]
    assert [s[0] for s in segs] == ([0] + [s[1] for s in segs[:-1]] if segs else []) and (segs[-1][1] if segs else 0) == n
    results = [s for s in segs if s[2] == "result"]
    executed = [c for c in t.tool_calls]
    # every injected block decodes exactly to format_result(call.result), in call order
    injected = [tok_decode(t.response_ids[s:e], skip_special_tokens=False) for s, e, _ in results]
    assert injected == [GRAMMAR.format_result(c.result) for c in executed]
    for s, e, kind in segs:
        want = 1 if kind == "model" or (kind == "prefix" and as_model_prefix) else 0
        assert t.response_mask[s:e] == [want] * (e - s), (kind, t.response_mask[s:e])
        if kind != "model":
            assert t.logprobs[s:e] == [0.0] * (e - s)
        else:  # exactly what the backend returned for this prefix (possibly cut to the budget)
            prefix = tuple(t.prompt_ids + t.response_ids[:s])
            got = t.response_ids[s:e]
            assert any(tuple(p) == prefix and ids[: len(got)] == got for p, ids in backend_log), "ids changed"
    assert Trajectory.from_json(t.to_json()) == t


@pytest.fixture(autouse=True)
def _tok_for_checks(tok):
    check_invariants.tok = tok


def test_math_and_search_with_real_tools_rows_leave_batch(tok, tools):
    scripts = {
        MATH.question: [["<think>multiply</think><python>print(6*7)</python>", "<answer>The answer is \\boxed{42}</answer>"],
                        ["<answer>\\boxed{41}</answer>"]],
        QA.question: [["<think>look it up</think><search>Dune author</search>", "<answer>\\boxed{Frank Herbert}</answer>"],
                      ["<answer>\\boxed{Jane Austen}</answer>"]],
    }
    be = Scripted(tok, scripts)
    eng = RolloutEngine(be, tools, GRADER, GRAMMAR, system_prompt=None, max_result_chars=120)
    trajs = eng.rollout([MATH, QA], n=2, params=SamplingParams(seed=0), group_prefix="r0/")
    assert [t.id for t in trajs] == ["r0/m1#0", "r0/m1#1", "r0/q1#0", "r0/q1#1"]
    assert [t.group_id for t in trajs] == ["r0/m1"] * 2 + ["r0/q1"] * 2
    m0, m1, q0, q1 = trajs
    assert (m0.answer, m0.score, m0.finish_reason) == ("42", 1.0, "answer")
    assert [(c.kind, c.query, c.result, c.status) for c in m0.tool_calls] == [("python", "print(6*7)", "42", "ok")]
    assert (m1.score, m1.tool_calls) == (0.0, [])
    assert q0.tool_calls[0].status == "ok" and "Frank Herbert" in q0.tool_calls[0].result and q0.score == 1.0
    assert q1.score == 0.0 and m0.format_errors == [] and q0.format_errors == []
    assert m0.timing["tool_s"] > 0 and m0.timing["gen_s"] >= 0 and m0.timing["total_s"] >= m0.timing["tool_s"]
    assert m0.behaviour.get("n_calls") == 1
    # turn 1: one call with n=2 per question (4 rows); turn 2: only the two rows that called a tool
    assert be.batches == [4, 2]
    for t in trajs:
        check_invariants(t, be.log)
    # masked-out tokens decode exactly to the result blocks
    masked = tok.decode([i for i, m in zip(m0.response_ids, m0.response_mask) if m == 0], skip_special_tokens=False)
    assert masked == GRAMMAR.format_result("42")
    assert eng.last_stats["tool_calls"] == 2 and eng.last_stats["generate_calls"] == 2


def test_budgets_per_kind_grace_extra_calls_and_tokens(tok, tools):
    calls = [f"<python>print({i})</python>" for i in range(5)]
    scripts = {MATH.question: [calls + ["<answer>\\boxed{42}</answer>"]]}
    be = Scripted(tok, scripts)
    eng = RolloutEngine(be, tools, GRADER, GRAMMAR, budget="per_kind", max_calls_per_kind=2, budget_grace=2, system_prompt=None)
    (t,) = eng.rollout([MATH], 1, SamplingParams())
    assert [c.status for c in t.tool_calls] == ["ok", "ok", "budget", "budget"] and t.finish_reason == "budget"
    assert "budget exhausted" in t.tool_calls[2].result
    check_invariants(t, be.log)
    eng = RolloutEngine(be, tools, GRADER, GRAMMAR, budget="per_kind", max_calls_per_kind=2, budget_grace=9, system_prompt=None)
    (t,) = eng.rollout([MATH], 1, SamplingParams())
    assert [c.status for c in t.tool_calls] == ["ok"] * 2 + ["budget"] * 3 and t.finish_reason == "answer"
    (t,) = eng.rollout([MATH], 1, SamplingParams(), extra_calls=3)  # flywheel extra budget
    assert [c.status for c in t.tool_calls] == ["ok"] * 5 and [c.result for c in t.tool_calls] == ["0", "1", "2", "3", "4"]
    # token budgets: a long turn is cut at max_turn_tokens / the response at max_response_tokens
    long = {MATH.question: [["<think>" + "blah " * 80 + "</think><answer>\\boxed{1}</answer>"]]}
    be2 = Scripted(tok, long)
    (t,) = RolloutEngine(be2, tools, GRADER, GRAMMAR, max_turn_tokens=500, max_response_tokens=30, system_prompt=None).rollout([MATH], 1, SamplingParams())
    assert t.finish_reason == "max_tokens" and len(t.response_ids) == 30
    (t,) = RolloutEngine(be2, tools, GRADER, GRAMMAR, max_turn_tokens=20, max_response_tokens=500, system_prompt=None).rollout([MATH], 1, SamplingParams())
    assert t.finish_reason == "max_tokens" and len(t.response_ids) == 20
    check_invariants(t, be2.log)


def _byte_id(tok, b: int) -> int:
    from tokenizers.pre_tokenizers import ByteLevel  # byte -> the printable char byte-level BPE uses

    alphabet = sorted(ByteLevel.alphabet(), key=lambda c: ord(c))
    table = {**{i: chr(i) for i in range(ord("!"), ord("~") + 1)}, **{i: chr(i) for i in range(0xA1, 0xAD)},
             **{i: chr(i) for i in range(0xAE, 0x100)}}
    n = 0
    for i in range(256):
        if i not in table:
            table[i] = chr(256 + n)
            n += 1
    assert table[b] in alphabet
    return tok.convert_tokens_to_ids(table[b])


def test_malformed_output_never_crashes_and_ids_are_kept(tok, tools):
    garbage = [_byte_id(tok, 0xFF), _byte_id(tok, 0xC3)] + tok.encode("<python>print(", add_special_tokens=False) + \
        [_byte_id(tok, 0xE2)] + tok.encode(")</python>", add_special_tokens=False)
    # decode + re-encode would not give these ids back: the engine must keep them
    assert tok.encode(tok.decode(garbage, skip_special_tokens=False), add_special_tokens=False) != garbage
    py_only = ToolSet({"python": tools.tools["python"]})
    ans = "<answer>\\boxed{42}</answer>"
    cases = {
        "no opener": (["</python>", ans], "invalid", "without a matching"),
        "empty call": (["<python>   </python>", ans], "invalid", "empty"),
        "unknown tool": (["<search>Dune author</search>", ans], "error", "unknown tool search"),
        "tool error": (["<python>1/0</python>", ans], "error", "ZeroDivisionError"),
        "unclosed think": (["<think>hmm <python>print(2)</python>", ans], "ok", "2"),
        "garbage bytes": ([garbage, ans], "error", "Error"),
    }
    examples = [Example(id=k.replace(" ", "_"), question=f"Q {k}?", answers=["42"], domain="math", source="t") for k in cases]
    scripts = {f"Q {k}?": [v[0]] for k, v in cases.items()}
    scripts["Q code tag?"] = [["<code>print(1)</code> done<|endoftext|>"]]
    examples.append(Example(id="code", question="Q code tag?", answers=["42"], domain="math", source="t"))
    be = Scripted(tok, scripts)
    # a misbuilt tool set that lacks a tool its grammar names (a rollout engine only accepts the
    # run's grammar, equal to the tool set's): the call gets an error result, the rollout goes on
    py_only.grammar = GRAMMAR
    trajs = RolloutEngine(be, py_only, GRADER, GRAMMAR, system_prompt=None).rollout(examples, 1, SamplingParams())
    for (name, (_, status, needle)), t in zip(cases.items(), trajs):
        assert [c.status for c in t.tool_calls] == [status], name
        assert needle in t.tool_calls[0].result, (name, t.tool_calls[0].result)
        assert t.finish_reason == "answer", name  # the rollout carried on
        # the answer inside an unclosed <think> is no well-formed answer block: no credit
        assert t.score == (0.0 if name == "unclosed think" else 1.0), name
        check_invariants(t, be.log)
    g = trajs[list(cases).index("garbage bytes")]
    assert g.response_ids[: len(garbage)] == garbage
    code = trajs[-1]
    assert code.finish_reason == "eos" and code.tool_calls == [] and "unknown_tag" in code.format_errors
    assert "unclosed" in trajs[list(cases).index("unclosed think")].format_errors


def test_prefixes_continue_with_mask_choice_and_budget(tok, tools):
    # turn index = result blocks so far, and the prefix brings one: turn 0 is never asked for
    scripts = {MATH.question: [["unused", "<python>print(1)</python>", "<answer>\\boxed{5}</answer>"]]}
    prefix = "<think>add</think><python>print(2+3)</python>"
    be = Scripted(tok, scripts)
    eng = RolloutEngine(be, tools, GRADER, GRAMMAR, budget="per_kind", max_calls_per_kind=1, budget_grace=5, system_prompt=None)
    (t,) = eng.rollout([MATH], 1, SamplingParams(), prefixes=[prefix])
    # the prefix's trailing call ran before sampling; the sampled call is over budget (1 per kind)
    assert [(c.query, c.status) for c in t.tool_calls] == [("print(2+3)", "ok"), ("print(1)", "budget")]
    assert t.tool_calls[0].result == "5" and t.response_text.startswith(prefix + GRAMMAR.format_result("5"))
    assert t.meta["segments"][0][2] == "prefix" and t.response_mask[0] == 0
    check_invariants(t, be.log)
    (t1,) = eng.rollout([MATH], 1, SamplingParams(), prefixes=[prefix], treat_prefix_as_model=True)
    check_invariants(t1, be.log, as_model_prefix=True)
    assert t1.response_mask[0] == 1
    # a prefix with its result already there: recorded, counted, masked, not re-run
    done = prefix + GRAMMAR.format_result("5")
    eng2 = RolloutEngine(be, tools, GRADER, GRAMMAR, budget="per_kind", max_calls_per_kind=2, system_prompt=None)
    (t2,) = eng2.rollout([MATH], 1, SamplingParams(), prefixes=[done])
    assert [(c.query, c.status) for c in t2.tool_calls] == [("print(2+3)", "ok"), ("print(1)", "ok")]
    assert t2.response_text.startswith(done) and t2.answer == "5"
    # a prefix already over the token budget ends at once; no examples -> no trajectories
    (t3,) = RolloutEngine(be, tools, GRADER, GRAMMAR, max_response_tokens=5, system_prompt=None).rollout([MATH], 1, SamplingParams(), prefixes=[done])
    assert t3.finish_reason == "max_tokens" and t3.response_text == done
    assert eng.rollout([], 2, SamplingParams()) == []


def test_entropy_branching_forks_after_tool_results_and_fills_groups(tok, tools):
    scripts = {MATH.question: [["<python>print(6*7)</python>", "<answer>\\boxed{42}</answer>"]],
               QA.question: [["<answer>\\boxed{Frank Herbert}</answer>"]]}
    be = Scripted(tok, scripts, entropy=lambda turn: 0.1 if turn == 0 else 2.0)
    brancher = EntropyBrancher(initial_rollouts=2, beam=2, branch_prob=0.0, entropy_weight=1.0, window=4, seed=0)
    eng = RolloutEngine(be, tools, GRADER, GRAMMAR, strategy="branching", branching=brancher, system_prompt=None)
    trajs = eng.rollout([MATH, QA], 4, SamplingParams(seed=1))
    math = [t for t in trajs if t.example_id == "m1"]
    assert len(math) == 4 and len({t.id for t in math}) == 4
    forks = [t for t in math if "parent" in t.meta]
    assert len(forks) == 2  # each initial chain forked once right after its tool result
    for f in forks:
        parent = next(t for t in math if t.id == f.meta["parent"])
        cut = f.meta["segments"][1][1]  # end of the first result block
        assert f.meta["segments"][1][2] == "result" and f.response_ids[:cut] == parent.response_ids[:cut]
        check_invariants(f, be.log)
    # QA never calls a tool here -> no fork -> the group is topped up with fresh chains
    qa = [t for t in trajs if t.example_id == "q1"]
    assert len(qa) == 4 and not any("parent" in t.meta for t in qa)
    # probability: clipped, relative entropy rise
    b = EntropyBrancher(branch_prob=0.5, entropy_weight=0.2)
    assert b.probability(2.0, 1.0) == pytest.approx(0.7) and b.probability(0.0, 1.0) == pytest.approx(0.3)
    assert b.entropy(None, [-1.0, -3.0]) == pytest.approx(2.0)


def test_untrained_tiny_model_garbage_with_real_tools(tok, tools):
    torch.manual_seed(0)
    model = build_scratch_model(ModelSpec(), len(tok), tok.eos_token_id, tok.pad_token_id, seed=1)
    hf = HFBackend(model, tok, batch_size=32)
    log: list = []
    batches: list[int] = []

    class Recording(GenerationBackend):
        tokenizer = tok

        def generate(self, prefixes, params):
            out = hf.generate(prefixes, params)
            batches.append(len(prefixes) * params.n)
            for p, comps in zip(prefixes, out):
                log.extend((list(p), c.ids) for c in comps)
            return out

    eng = RolloutEngine(Recording(), tools, GRADER, GRAMMAR, max_response_tokens=120, max_turn_tokens=60, max_calls_per_kind=3, system_prompt=None)
    exs = [MATH, QA, Example(id="m2", question="What is 2+2?", answers=["4"], domain="math", source="t")]
    trajs = eng.rollout(exs, 8, SamplingParams(seed=0))
    assert len(trajs) == 24
    for t in trajs:
        assert t.finish_reason in ("answer", "eos", "max_tokens", "budget", "stop")
        assert len(t.response_ids) <= 120 + max((len(tok.encode(GRAMMAR.format_result(c.result))) for c in t.tool_calls), default=0)
        check_invariants(t, log)
    statuses = Counter(c.status for t in trajs for c in t.tool_calls)
    assert sum(statuses.values()) > 0  # garbage hits stop tags: invalid/error calls, and the rollouts carried on
    assert batches[0] == 24 and all(b <= 24 for b in batches) and batches[-1] < 24  # finished rows leave


def test_config_files_instantiate(tok, tools):
    from hydra.utils import instantiate

    from conftest import compose

    be = Scripted(tok, {})
    for name in ("default", "branching"):
        cfg = compose([f"rollout={name}", "seed=3"])  # branching: a delta of rollout/default
        eng = instantiate(cfg.rollout, backend=be, toolset=tools, grader=GRADER, grammar=GRAMMAR, system_prompt=None)
        assert isinstance(eng, RolloutEngine) and eng.strategy == ("standard" if name == "default" else "branching")
    assert isinstance(eng.brancher, EntropyBrancher) and eng.brancher.seed == 3
    with pytest.raises(ValueError, match="rollout.strategy"):
        RolloutEngine(be, tools, GRADER, GRAMMAR, strategy="beam", system_prompt=None)
    # the run's grader and grammar are required, and the grammar must be the tool set's
    with pytest.raises(TypeError, match="grader.*grammar"):
        RolloutEngine(be, tools, system_prompt=None)  # noqa
    with pytest.raises(TypeError, match="etagent.grading.Grader"):
        RolloutEngine(be, tools, lambda ex, ans: 1.0, GRAMMAR, system_prompt=None)
    from etagent.protocol import Grammar

    with pytest.raises(ValueError, match="not the run's"):
        RolloutEngine(be, tools, GRADER, Grammar([GRAMMAR.tools[0]]), system_prompt=None)
