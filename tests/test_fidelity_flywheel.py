"""Method fidelity, flywheel (issue 13): one number-aware salient-token notion, coherent edits
with the teacher's patterns, the operations' mechanics, no oracle in the default evolver."""

from __future__ import annotations

import dataclasses

import pytest

from etagent.behaviour import label_behaviour
from etagent.flywheel.evolvers import PolicyEvolver
from etagent.flywheel.fault import ABORTED, locate_fault
from etagent.flywheel.strategies import (
    EvolveContext, GlobalRefine, HintInjection, ModifyRedundancy, SelfCorrect, remove_redundant,
)
from etagent.flywheel.verify import ACCEPTED, Candidate, Verifier
from etagent.records import Example, PlanStep
from etagent.salient import salient_tokens
from etagent.tools.base import ToolSet
from etagent.tools.python_sandbox import PythonSandbox

from test_flywheel_strategies import CharTokenizer, DictSearch, FakeEngine, make_traj
from run_env import ENV, GRADER, GRAMMAR, unused_toolset

R = GRAMMAR.format_result
MATH = Example("m1", "What is 123*456?", ["56088"], "math", "synthetic", "train",
               plan=[PlanStep("python", "print(123*456)", "56088")])
POP = Example("q1", "How many people live in Velmont?", ["1234567"], "qa", "synthetic", "train",
              plan=[PlanStep("search", "Velmont population", "1,234,567")])


@pytest.fixture(scope="module")
def toolset():
    ts = ToolSet({"python": PythonSandbox(pool_size=2, wall_seconds=5),
                  "search": DictSearch({"velmont population": "Velmont has 1,234,567 inhabitants."})})
    yield ts
    ts.close()


@pytest.fixture
def verifier(toolset):
    return Verifier(toolset, CharTokenizer(), GRADER, GRAMMAR)


def test_salient_tokens_are_number_aware():
    assert salient_tokens("1,234,567 people") == {"1234567", "people"}
    assert salient_tokens("42.0 and -3.50 and +7") == {"42", "-3.5", "7"}
    assert salient_tokens("3-1") == {"3", "1"}  # a minus after a digit is no sign


def test_thousands_separators_ground_the_answer_everywhere(verifier):
    text = ("<think>Look it up.</think><search>Velmont population</search>" + R("Velmont has 1,234,567 inhabitants.")
            + "<answer>\\boxed{1234567}</answer>")
    parent = make_traj(POP, text)
    # behaviour labels: the call is used (its number is the answer)
    b = label_behaviour(parent, dataclasses.replace(POP, plan=None), **ENV)
    assert b["n_redundant"] == 0 and b["n_useful"] == 1
    # the redundancy rule keeps the call that produced the answer
    new, removals = remove_redundant(text, POP.question, GRAMMAR)
    assert removals == [] and new == text
    # the grounding check: dropping that call is caught, keeping it passes
    no_call = "<think>I know it.</think><answer>\\boxed{1234567}</answer>"
    v_drop, v_keep = verifier.verify([Candidate(POP, parent, no_call, "modify_redundancy", check_grounding=True),
                                      Candidate(POP, parent, text, "modify_redundancy", check_grounding=True)])
    assert v_drop.reason == "ungrounded" and v_keep.reason == ACCEPTED


# --------------------------------------------------------------------------- coherent edits (teacher patterns)

# the teacher's aborted pattern (etagent/seed/teacher.py): the real call's thought moves to the
# malformed try, which is followed by "That failed. Let me fix it." and the real call
ABORTED_TEXT = "\n".join([
    "<think>I need the product of 123 and 456.</think>",
    "<python>print(123*456</python>" + R("SyntaxError: '(' was never closed"),
    "<think>That failed. Let me fix it.</think>",
    "<python>print(123*456)</python>" + R("56088"),
    "<answer>The answer is \\boxed{56088}</answer>",
])


def test_removing_a_failed_call_removes_its_follow_up(verifier):
    parent = make_traj(MATH, ABORTED_TEXT, statuses=["error", "ok"])
    new, removals = remove_redundant(ABORTED_TEXT, MATH.question, GRAMMAR, ["error", "ok"])
    assert [r.reason for r in removals] == ["failed"]
    assert "That failed" not in new and "fix it" not in new
    assert "I need the product of 123 and 456." in new  # the retry keeps its reasoning
    (v,) = verifier.verify([Candidate(MATH, parent, new, "modify_redundancy", check_grounding=True)])
    assert v.ok and v.traj.n_calls(GRAMMAR) == 1


def test_a_hint_for_an_aborted_call_follows_its_result(toolset, verifier):
    wrong = ABORTED_TEXT.replace("<think>That failed. Let me fix it.</think>\n<python>print(123*456)</python>"
                                 + R("56088") + "\n", "").replace("56088", "5")
    parent = make_traj(MATH, wrong, statuses=["error"])
    f = locate_fault(parent, MATH, GRAMMAR)
    assert f.kind == ABORTED and f.prefix(wrong).endswith("was never closed\n</result>")
    engine = FakeEngine(toolset, lambda ex, p, k: "<python>print(123*456)</python>" + R("56088")
                        + "<answer>\\boxed{56088}</answer>")
    ctx = EvolveContext(engine, verifier, PolicyEvolver(grammar=GRAMMAR), GRAMMAR, continuations=1)
    cands = HintInjection().propose([(MATH, parent)], ctx)
    (prefix,) = engine.calls[0]["prefixes"]
    assert prefix.endswith("</result><think>The code failed; I should fix it and run it again.</think>")
    assert prefix.index("SyntaxError") < prefix.index("The code failed")  # never before the code ran
    assert cands and verifier.verify(cands)[0].ok


# --------------------------------------------------------------------------- mechanics


DUP = ("<think>I need the product.</think><python>print(123*456)</python>" + R("56088")
       + "<think>Let me run it again to be sure.</think><python>print(123*456)</python>" + R("56088")
       + "The product is 56088.<answer>\\boxed{56088}</answer>")


def test_modify_redundancy_cuts_at_the_redundant_step_and_the_policy_continues(toolset, verifier):
    engine = FakeEngine(toolset, lambda ex, p, k: "The product is 56088.<answer>\\boxed{56088}</answer>")
    ctx = EvolveContext(engine, verifier, PolicyEvolver(grammar=GRAMMAR), GRAMMAR, continuations=1)
    cands = ModifyRedundancy().propose([(MATH, make_traj(MATH, DUP))], ctx)
    assert [c.meta["level"] for c in cands] == ["rule", "continue"]
    (prefix,) = engine.calls[0]["prefixes"]
    assert prefix.endswith(R("56088")) and "run it again" not in prefix  # cut where the redundant step began
    assert engine.calls[0]["extra_calls"] == ctx.extra_calls
    assert all(v.ok for v in verifier.verify(cands))


def test_self_correction_continues_with_a_reflection_step(toolset, verifier):
    wrong = ("<think>Multiply.</think><python>print(123*457)</python>" + R("56211")
             + "<think>So it is 56211.</think><answer>\\boxed{56211}</answer>")
    engine = FakeEngine(toolset, lambda ex, p, k: "<python>print(123*456)</python>" + R("56088")
                        + "<answer>\\boxed{56088}</answer>")
    ctx = EvolveContext(engine, verifier, PolicyEvolver(grammar=GRAMMAR), GRAMMAR, continuations=1)
    cands = SelfCorrect().propose([(MATH, make_traj(MATH, wrong))], ctx)
    (prefix,) = engine.calls[0]["prefixes"]
    assert prefix.endswith(R("56211") + "<think>Wait, that step may be wrong. Let me look at it again and redo it.</think>")
    assert cands and verifier.verify(cands)[0].ok


# --------------------------------------------------------------------------- no oracle


def test_default_evolver_gives_the_same_output_without_plans(toolset, verifier):
    """Fault typing, hints, corrections and candidates never read example.plan."""
    guess = "<think>About 50000.</think><answer>\\boxed{50000}</answer>"
    wrong = ("<think>Multiply.</think><python>print(123*457)</python>" + R("56211")
             + "<answer>\\boxed{56211}</answer>")

    def script(ex, prefix, k):
        return "<think>t</think><python>print(123*456)</python>" + R("56088") + "<answer>\\boxed{56088}</answer>"

    def run(example):
        parents = [make_traj(example, t, f"p{i}") for i, t in enumerate((guess, wrong, ABORTED_TEXT, DUP))]
        for p in parents:  # labels as the loop writes them (plan-derived when a plan exists)
            p.behaviour = label_behaviour(p, example, **ENV)
        engine = FakeEngine(toolset, script)
        ctx = EvolveContext(engine, verifier, PolicyEvolver(refine_samples=2, grammar=GRAMMAR), GRAMMAR, continuations=1,
                            seed=0)
        incorrect, correct = [(example, p) for p in parents[:2]], [(example, p) for p in parents[2:]]
        out = []
        for strategy, items in ((SelfCorrect(), incorrect), (HintInjection(), incorrect),
                                (ModifyRedundancy(), correct), (GlobalRefine(), correct)):
            out += [(c.strategy, c.text, c.meta.get("fault"), c.meta.get("inserted")) for c in strategy.propose(items, ctx)]
        return out, [c["prefixes"] for c in engine.calls], [locate_fault(p, example, GRAMMAR) for p in parents]

    with_plan = run(MATH)
    without = run(dataclasses.replace(MATH, plan=None))
    assert with_plan == without and with_plan[0]


# --------------------------------------------------------------------------- rounds


GUESS = "<think>About 50000.</think><answer>\\boxed{50000}</answer>"


def test_rounds_compound_edits_of_edits(toolset, tmp_path):
    import json

    from etagent.flywheel.loop import FlywheelConfig, run_flywheel

    def script(ex, prefix, k):
        if prefix is None:  # fresh samples (and refine samples) guess
            return GUESS
        if prefix.endswith("</result>"):  # the policy continues after a cut redundant step
            return "The product is 56088.<answer>\\boxed{56088}</answer>"
        return DUP  # reflections succeed, but with a duplicate call

    engine = FakeEngine(toolset, script)
    cfg = FlywheelConfig(min_correct=0.75, samples_per_question=1, max_rounds=2, continuations=1,
                         stop_when_no_gain=False, strategies=["modify_redundancy", "hint_injection"])
    pool = run_flywheel(engine, [MATH], cfg, tmp_path, evolver=PolicyEvolver(grammar=GRAMMAR))
    by_id = {t.id: t for t in pool}
    r1 = {t.id for t in pool if t.meta["round"] == 1 and t.meta["strategy"] == "hint_injection"}
    r2 = [t for t in pool if t.meta["round"] == 2 and t.meta["strategy"] == "modify_redundancy"]
    assert r1 and any(t.meta["parent_id"] in r1 for t in r2)  # round 2 edited round 1's edit
    assert all(by_id[t.meta["parent_id"]].meta["round"] == 1 for t in r2 if t.meta["parent_id"] in by_id)
    rows = json.loads((tmp_path / "rounds.json").read_text())
    assert rows[0]["pool_parents"] == 0 and rows[1]["pool_parents"] >= 1
    assert "| round | strategy | proposed | accepted | rejected | added | rejected by reason |" in \
        (tmp_path / "rounds.md").read_text()


def test_lucky_guesses_are_not_sft_data(toolset, tmp_path):
    import json

    from etagent.flywheel.loop import FlywheelConfig, run_flywheel

    lucky = "<think>Probably 56088.</think><answer>\\boxed{56088}</answer>"
    engine = FakeEngine(toolset, lambda ex, p, k: (lucky if k == 0 else GUESS) if p is None else GUESS)
    cfg = FlywheelConfig(min_correct=0.75, samples_per_question=3, max_rounds=1, strategies=[])
    pool = run_flywheel(engine, [MATH], cfg, tmp_path, evolver=PolicyEvolver(grammar=GRAMMAR))
    guess = next(t for t in pool if t.answer == "56088")
    assert guess.score == 1.0 and guess.meta["grounded"] is False  # 1 of 3 no-call answers right
    (row,) = json.loads((tmp_path / "rounds.json").read_text())
    assert row["sft_lucky_before"] == 1.0 and row["sft_lucky"] is None and row["sft_size"] == 0
    # a question reliably answered without tools keeps its no-call answers
    engine = FakeEngine(toolset, lambda ex, p, k: lucky)
    pool = run_flywheel(engine, [MATH], cfg, tmp_path / "b", evolver=PolicyEvolver(grammar=GRAMMAR))
    assert all(t.meta["grounded"] for t in pool)


def test_finetune_between_rounds_is_wired(tmp_path, monkeypatch):
    from etagent.pipeline import components, stage_flywheel
    from etagent.pipeline.context import RunContext

    from conftest import compose

    cfg = compose(["flywheel.finetune_between_rounds=true"], run_dir=tmp_path)
    ctx = RunContext(cfg, tmp_path, tracker=None)
    ctx.policies = lambda: {"seed": tmp_path / "seed"}
    synced, trained = [], []

    class Backend:
        tokenizer = CharTokenizer()

        def generate(self, prefixes, params):
            return []

        def sync_weights(self, model):
            synced.append(model)

    def fake_ase(policy, selection, sft_cfg, out, **kw):
        trained.append((str(policy), len(selection)))
        (out / "final").mkdir(parents=True)
        (out / "final" / "config.json").write_text("{}")
        return str(out / "final")

    def fake_flywheel(engine, train, fcfg, fdir, finetune_fn=None, **kw):
        assert finetune_fn is not None
        finetune_fn([make_traj(MATH, DUP)], 1)
        finetune_fn([make_traj(MATH, DUP)], 2)
        return []

    monkeypatch.setattr(components, "load_split", lambda ctx, split: [MATH])
    monkeypatch.setattr(components, "make_toolset", lambda ctx: unused_toolset())
    monkeypatch.setattr(components, "policy_backend", lambda ctx, path: (Backend(), None))
    monkeypatch.setattr(components, "load_policy", lambda ctx, path: (f"model@{path}", None))
    monkeypatch.setattr("etagent.flywheel.ase.run_ase", fake_ase)
    monkeypatch.setattr("etagent.flywheel.loop.run_flywheel", fake_flywheel)
    stage_flywheel.run(ctx)
    fdir = tmp_path / "flywheel"
    assert trained == [(str(tmp_path / "seed"), 1), (str(fdir / "finetune_round_1" / "final"), 1)]  # compounding policy
    assert synced == [f"model@{fdir / 'finetune_round_1' / 'final'}", f"model@{fdir / 'finetune_round_2' / 'final'}"]
