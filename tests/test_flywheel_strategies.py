"""Flywheel strategies on handcrafted trajectories, verified with the real Python sandbox.

A fake rollout engine scripts the policy's continuations (the real engine is exercised by
the tiny-model integration test in test_flywheel_loop.py)."""

from __future__ import annotations

import pytest

from etagent import grading, protocol
from etagent.flywheel.evolvers import LLMEvolver, OracleEvolver, PolicyEvolver
from etagent.flywheel.fault import ABORTED, ERRONEOUS, INSUFFICIENT, locate_fault
from etagent.flywheel.pool import Pool
from etagent.flywheel.strategies import (
    EvolveContext, GlobalRefine, HintInjection, ModifyRedundancy, SelfCorrect, remove_redundant,
)
from etagent.flywheel.textops import split_steps
from etagent.flywheel.verify import (
    ACCEPTED, INCORRECT, RESULT_CHANGED, UNGROUNDED, Candidate, Verifier,
)
from etagent.records import Example, PlanStep, ToolCall, Trajectory
from etagent.tools.base import ToolResult, ToolSet
from etagent.tools.python_sandbox import PythonSandbox
from etagent.tools.search.base import SearchTool
from run_env import GRADER, GRAMMAR, grader

R = GRAMMAR.format_result


class CharTokenizer:
    """Enough of a tokenizer for encode_response/decode: one id per character."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


class DictSearch:
    spec = SearchTool.spec
    name = "search"

    def __init__(self, docs: dict[str, str]):
        self.docs = docs

    def run_batch(self, queries):
        return [ToolResult("ok", self.docs.get(q.strip().lower(), "no result"), 0.0) for q in queries]

    def close(self):
        pass


class FakeEngine:
    """rollout() answers every prefix with ``script(example, prefix, k)`` (k = sample index;
    prefix None for fresh samples)."""

    def __init__(self, toolset, script):
        self.toolset, self.script = toolset, script
        self.backend = type("B", (), {"tokenizer": CharTokenizer()})()
        self.grader, self.grammar = GRADER, toolset.grammar  # the run's grader and its tools' grammar
        self.calls = []

    def rollout(self, examples, n, params, prefixes=None, extra_calls=0, group_prefix=""):
        self.calls.append({"n": n, "prefixes": prefixes, "extra_calls": extra_calls, "temperature": params.temperature})
        out = []
        for i, ex in enumerate(examples):
            prefix = prefixes[i] if prefixes else None  # None: a fresh sample, not a continuation
            for k in range(n):
                text = (prefix or "") + self.script(ex, prefix, k)
                out.append(make_traj(ex, text, f"{group_prefix}{ex.id}-{len(self.calls)}-{i}-{k}"))
        return out


def make_traj(ex: Example, text: str, tid: str = "t0", statuses: list[str] | None = None) -> Trajectory:
    parsed = GRAMMAR.parse(text)
    calls = []
    segs = parsed.segments
    for j, s in enumerate(segs):
        if s.kind in GRAMMAR.tool_tags:
            res = next((x.content.strip() for x in segs[j + 1 :] if x.kind == protocol.RESULT), "")
            calls.append(ToolCall(s.kind, s.content, res, "ok"))
    for c, st in zip(calls, statuses or []):
        c.status = st
    ans = grading.extract_answer(text, GRAMMAR)
    return Trajectory(id=tid, example_id=ex.id, group_id=ex.id, response_text=text, prompt_ids=[1, 2, 3],
                      tool_calls=calls, answer=ans, score=GRADER.grade(ex, ans),
                      format_errors=[str(e) for e in parsed.errors], meta={"round": 1, "strategy": "sample", "parent_id": None})


@pytest.fixture(scope="module")
def toolset():
    ts = ToolSet({"python": PythonSandbox(pool_size=2, wall_seconds=5),
                  "search": DictSearch({"capital of zubra": "Zubra's capital is Velmont."})})
    yield ts
    ts.close()


@pytest.fixture()
def verifier(toolset):
    return Verifier(toolset, CharTokenizer(), grader(qa_threshold=0.8), GRAMMAR)


MATH = Example("m1", "What is 123*456?", ["56088"], "math", "synthetic", "train",
               plan=[PlanStep("python", "print(123*456)", "56088")])
QA = Example("q1", "What is the capital of Zubra?", ["Velmont"], "qa", "synthetic", "train",
             plan=[PlanStep("search", "capital of Zubra", "Velmont")])

DUP = ("<think>I need the product.</think><python>print(123*456)</python>" + R("56088")
       + "<think>Let me run it again to be sure.</think><python>print(123*456)</python>" + R("56088")
       + "The product is 56088.<answer>\\boxed{56088}</answer>")


# --------------------------------------------------------------------------- modify redundancy


def test_duplicate_call_removed_and_verified(verifier):
    text, removals = remove_redundant(DUP, MATH.question, GRAMMAR)
    assert [r.reason for r in removals] == ["duplicate"]
    assert GRAMMAR.count_tool_calls(text)["python"] == 1
    assert "run it again" not in text  # the reasoning that only served the duplicate went too
    assert "I need the product" in text
    parent = make_traj(MATH, DUP)
    (cand,) = ModifyRedundancy().propose([(MATH, parent)], EvolveContext(None, verifier, PolicyEvolver(grammar=GRAMMAR), GRAMMAR))
    (v,) = verifier.verify([cand])
    assert v.reason == ACCEPTED, v.detail
    t = v.traj
    assert t.n_executed == t.n_calls(GRAMMAR) == 1 and t.tool_calls[0].status == "ok" and t.tool_calls[0].result.strip() == "56088"
    assert GRAMMAR.is_valid(t.response_text) and t.score == 1.0
    assert t.meta["strategy"] == "modify_redundancy" and t.meta["parent_id"] == parent.id
    # results are masked in the re-encoded ids
    res_seg = next(s for s in GRAMMAR.parse(t.response_text).segments if s.kind == protocol.RESULT)
    assert t.response_mask[res_seg.start] == 0 and t.response_mask[0] == 1
    assert len(t.response_ids) == len(t.response_mask) == len(t.response_text)


def test_unused_and_failed_calls_removed(verifier):
    text = ("<think>Compute it.</think><python>print(2+2)</python>" + R("4") + "<python>print(undefined_name)</python>"
            + R("NameError: name 'undefined_name' is not defined")
            + "<think>Compute it.</think><python>print(123*456)</python>" + R("56088") + "<answer>\\boxed{56088}</answer>")
    parent = make_traj(MATH, text, statuses=["ok", "error", "ok"])
    new, removals = remove_redundant(text, MATH.question, GRAMMAR, [c.status for c in parent.tool_calls])
    assert sorted(r.reason for r in removals) == ["failed", "unused"]
    (v,) = verifier.verify([Candidate(MATH, parent, new, "modify_redundancy", check_grounding=True)])
    assert v.ok and v.traj.n_calls(GRAMMAR) == 1


def test_used_calls_are_kept():
    text = "<think>Compute it.</think><python>print(123*456)</python>" + R("56088") + "<answer>\\boxed{56088}</answer>"
    new, removals = remove_redundant(text, MATH.question, GRAMMAR)
    assert removals == [] and new == text


def test_edit_that_breaks_the_answer_is_rejected(verifier):
    parent = make_traj(MATH, DUP)
    # deleting the call that produced the answer: the answer is no longer grounded in a result
    no_call = "<think>I need the product.</think>The product is 56088.<answer>\\boxed{56088}</answer>"
    wrong = "<think>Compute it.</think><python>print(123*456)</python>" + R("56088") + "<answer>\\boxed{56089}</answer>"
    fabricated = "<think>Compute it.</think><python>print(123*456)</python>" + R("99") + "<answer>\\boxed{56088}</answer>"
    verdicts = verifier.verify([
        Candidate(MATH, parent, no_call, "modify_redundancy", check_grounding=True),
        Candidate(MATH, parent, wrong, "global_refine"),
        Candidate(MATH, parent, fabricated, "global_refine"),
    ])
    assert [v.reason for v in verdicts] == [UNGROUNDED, INCORRECT, RESULT_CHANGED]
    assert all(v.traj is None for v in verdicts)


def test_missing_results_are_filled_by_real_tools(toolset):
    v = Verifier(toolset, CharTokenizer(), GRADER, GRAMMAR, require_same_results=True)
    parent = make_traj(QA, "<answer>\\boxed{Paris}</answer>")
    rewrite = "<think>Compute it.</think><search>capital of Zubra</search>It is Velmont.<answer>\\boxed{Velmont}</answer>"
    (verdict,) = v.verify([Candidate(QA, parent, rewrite, "global_refine")])
    assert verdict.ok, verdict.detail
    assert "Zubra's capital is Velmont." in verdict.traj.response_text and verdict.traj.score == 1.0


# --------------------------------------------------------------------------- fault location


def test_fault_location():
    aborted = make_traj(MATH, "<python>print(12 3)</python>" + R("SyntaxError") + "<answer>\\boxed{1}</answer>",
                        statuses=["error"])
    f = locate_fault(aborted, MATH, GRAMMAR)
    assert f.kind == ABORTED and f.prefix(aborted.response_text).endswith("SyntaxError\n</result>")  # after the result
    guess = make_traj(MATH, "<think>About 50000.</think><answer>\\boxed{50000}</answer>")
    f = locate_fault(guess, MATH, GRAMMAR)
    assert f.kind == INSUFFICIENT and f.prefix(guess.response_text) == ""
    wrong = make_traj(MATH, "<python>print(123*456)</python>" + R("56088") + "So<answer>\\boxed{56089}</answer>")
    f = locate_fault(wrong, MATH, GRAMMAR)
    assert f.kind == ERRONEOUS and f.prefix(wrong.response_text).endswith("</result>")


# --------------------------------------------------------------------------- reflection


def _ctx(toolset, verifier, script, evolver=None, **kw):
    engine = FakeEngine(toolset, script)
    return engine, EvolveContext(engine, verifier, evolver or PolicyEvolver(grammar=GRAMMAR), GRAMMAR, round=2,
                                 continuations=2, **kw)


GUESS = "<think>About 50000.</think><answer>\\boxed{50000}</answer>"


def test_self_correct_keeps_correct_continuation(toolset, verifier):
    def script(ex, prefix, k):
        return "<think>Compute it.</think><python>print(123*456)</python>" + R("56088") + "<answer>\\boxed{56088}</answer>"

    engine, ctx = _ctx(toolset, verifier, script)
    parent = make_traj(MATH, GUESS)
    cands = SelfCorrect().propose([(MATH, parent)], ctx)
    assert engine.calls[0]["extra_calls"] == 4 and engine.calls[0]["prefixes"] == [""]
    assert len(cands) == 1  # two identical continuations are de-duplicated
    (v,) = verifier.verify(cands)
    assert v.ok and v.traj.meta["fault"] == INSUFFICIENT and v.traj.meta["round"] == 2


def test_wrong_hint_continuation_is_discarded(toolset, verifier):
    def script(ex, prefix, k):
        assert prefix.endswith("<think>I should compute this with python.</think>")
        return "<python>print(123*457)</python>" + R("56211") + "<answer>\\boxed{56211}</answer>"

    engine, ctx = _ctx(toolset, verifier, script)
    cands = HintInjection().propose([(MATH, make_traj(MATH, GUESS))], ctx)
    assert cands and all(v.reason == INCORRECT for v in verifier.verify(cands))


def test_hint_kept_or_stripped(toolset, verifier):
    def script(ex, prefix, k):
        return "<think>Compute it.</think><python>print(123*456)</python>" + R("56088") + "<answer>\\boxed{56088}</answer>"

    for keep in (True, False):
        _, ctx = _ctx(toolset, verifier, script, keep_hint_in_data=keep)
        (cand,) = HintInjection().propose([(MATH, make_traj(MATH, GUESS))], ctx)
        (v,) = verifier.verify([cand])
        assert v.ok
        assert ("I should compute this with python." in v.traj.response_text) == keep


# --------------------------------------------------------------------------- global refine


def test_policy_global_refine_keeps_only_shorter(toolset, verifier):
    short = "<think>Compute it.</think><python>print(123*456)</python>" + R("56088") + "<answer>\\boxed{56088}</answer>"

    def script(ex, prefix, k):
        return short if k == 0 else DUP

    engine, ctx = _ctx(toolset, verifier, script, evolver=PolicyEvolver(refine_samples=3, refine_temperature=0.2, grammar=GRAMMAR))
    cands = GlobalRefine().propose([(MATH, make_traj(MATH, DUP))], ctx)
    assert engine.calls[0]["temperature"] == 0.2 and engine.calls[0]["prefixes"] is None
    assert [c.text for c in cands] == [short]
    assert verifier.verify(cands)[0].ok


def test_oracle_refine_is_minimal_plan(toolset, verifier):
    _, ctx = _ctx(toolset, verifier, lambda *a: "")
    (cand,) = OracleEvolver(grammar=GRAMMAR).refine([(MATH, make_traj(MATH, DUP))], ctx)
    (v,) = verifier.verify([cand])
    assert v.ok and v.traj.n_calls(GRAMMAR) == 1


class ScriptedLLM:
    tokenizer = type("T", (), {
        "apply_chat_template": staticmethod(lambda m, tokenize=False, add_generation_prompt=True: m[-1]["content"]),
        "encode": staticmethod(lambda t, add_special_tokens=False: ScriptedLLM.prompts.append(t) or [len(t)]),
        "decode": staticmethod(lambda ids, skip_special_tokens=True: ScriptedLLM.reply),
    })()
    reply = ""
    prompts: list[str] = []

    def generate(self, prefixes, params):
        from etagent.backends.base import Completion

        return [[Completion([0], None, "eos")] for _ in prefixes]


def _llm_evolver(**kw):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load("conf/evolver/llm.yaml")
    return LLMEvolver(prompts=dict(cfg.prompts), backend=ScriptedLLM(), grammar=GRAMMAR, **kw)


def test_llm_evolver_parses_replies(toolset, verifier):
    evo = _llm_evolver(step_level=False)
    _, ctx = _ctx(toolset, verifier, lambda *a: "", evolver=evo)
    # the released whole-level rewrite changes the reasoning only: calls, results and answer stay
    lean = DUP.replace("I need the product.", "Product:").replace("Let me run it again to be sure.", "Again.")
    ScriptedLLM.reply = "=== BEGIN ===\n" + lean + "\n=== END ==="
    (cand,) = evo.refine([(MATH, make_traj(MATH, DUP))], ctx)
    assert cand.text == lean and verifier.verify([cand])[0].ok
    # a rewrite that drops the repeated call is refused (that is modify_redundancy's job, verified)
    ScriptedLLM.reply = ("=== BEGIN ===\n<think>Compute it.</think><python>print(123*456)</python>" + R("56088")
                         + "<answer>\\boxed{56088}</answer>\n=== END ===")
    assert evo.refine([(MATH, make_traj(MATH, DUP))], ctx) == []
    assert ctx.stats["global_refine/changed_actions"] == 1
    wrong = make_traj(MATH, "<python>print(123*456)</python>" + R("56088") + "So<answer>\\boxed{1}</answer>")
    ScriptedLLM.reply = "STEP: 2\nthe answer step is wrong"
    (f,) = evo.locate([(MATH, wrong)])
    assert f.step == 1 and f.pos == len(split_steps(wrong.response_text, GRAMMAR)[0])
    ScriptedLLM.reply = "HINT: I should re-read the result."
    assert evo.hints([(MATH, wrong)], [f]) == ["<think>I should re-read the result.</think>"]


def test_llm_evolver_prompts_never_show_the_gold_answer(toolset, verifier):
    from omegaconf import OmegaConf

    evo = _llm_evolver()
    gold = "56088"
    wrong = make_traj(MATH, "<think>About 50000.</think><answer>\\boxed{50000}</answer>")
    ScriptedLLM.prompts.clear()
    ScriptedLLM.reply = "STEP: 1\nno"
    (f,) = evo.locate([(MATH, wrong)])
    evo.hints([(MATH, wrong)], [f])
    evo.corrections([(MATH, wrong)], [f])
    assert len(ScriptedLLM.prompts) == 3 and not any(gold in p for p in ScriptedLLM.prompts)
    prompts = dict(OmegaConf.load("conf/evolver/llm.yaml").prompts)
    with pytest.raises(ValueError, match=r"locate_fault uses \{gold\}"):
        LLMEvolver(prompts=dict(prompts, locate_fault=prompts["locate_fault"] + " (reference: {gold})"), grammar=GRAMMAR)


def test_official_hints_are_the_released_strings_per_domain(toolset, verifier, tmp_path):
    from conftest import compose
    from etagent.config import build
    from etagent.flywheel.loop import FlywheelConfig
    from etagent.flywheel.strategies import official_hint

    fw = build(compose(["flywheel.hints=official"], run_dir=tmp_path).flywheel, "flywheel")
    assert fw.hints == "official" and len(fw.official_hints["math"]) == len(fw.official_hints["qa"]) == 6
    assert all("Python" in h for h in fw.official_hints["math"])  # released Python_Hints / Search_Hints
    assert all("search" in h or "query" in h for h in fw.official_hints["qa"])
    wrong = make_traj(MATH, GUESS, "w1")
    _, ctx = _ctx(toolset, verifier, lambda *a: "", official_hints=fw.official_hints, seed=3)
    (ins,) = HintInjection().insertions([(MATH, wrong)], ctx.faults([(MATH, wrong)]), ctx)
    hint = official_hint(wrong, MATH, fw.official_hints, 3, ctx.round)
    assert ins == f"<think>{hint}</think>" and hint in fw.official_hints["math"]
    assert {official_hint(make_traj(MATH, GUESS, f"w{i}"), MATH, fw.official_hints, 3, 2) for i in range(40)} == set(
        fw.official_hints["math"])  # every released string can be drawn
    assert official_hint(wrong, QA, fw.official_hints, 3, 2) in fw.official_hints["qa"]
    _, gen_ctx = _ctx(toolset, verifier, lambda *a: "")  # generated (default): the evolver's templates
    (gen,) = HintInjection().insertions([(MATH, wrong)], gen_ctx.faults([(MATH, wrong)]), gen_ctx)
    assert gen not in {f"<think>{h}</think>" for h in fw.official_hints["math"]}
    with pytest.raises(ValueError, match="official_hints"):
        FlywheelConfig(hints="official", official_hints={}, min_correct=0.75)


# --------------------------------------------------------------------------- pool


def test_pool_dedup_provenance_and_selection(tmp_path):
    a = make_traj(MATH, DUP, "a")
    b = make_traj(MATH, DUP.replace("</think>", "</think> "), "b")  # whitespace-only difference
    short = make_traj(MATH, "<think>Compute it.</think><python>print(123*456)</python>" + R("56088") + "<answer>\\boxed{56088}</answer>", "c")
    short.meta = {"round": 1, "strategy": "global_refine", "parent_id": "a"}
    wrong = make_traj(MATH, GUESS, "d")
    pool = Pool(GRAMMAR, [a, b, short, wrong])
    assert len(pool) == 3
    flywheel = grader(qa_threshold=0.8)
    assert [t.id for t in pool.select(1, flywheel)] == ["c"]
    assert [t.id for t in pool.select(None, flywheel)] == ["c", "a"]
    assert [t.id for t in pool.select(None, flywheel, include_unedited=False)] == ["c"]
    with pytest.raises(ValueError, match="provenance"):
        pool.add(Trajectory(id="x", example_id="m1", group_id="m1", response_text="x"))
    pool.save(tmp_path / "pool.jsonl")
    assert [t.id for t in Pool.load(tmp_path / "pool.jsonl", GRAMMAR)] == ["a", "c", "d"]
