"""Flywheel rounds, persistence/resume, reports and configs (fake engine), plus the tiny-model
end-to-end run of two flywheel rounds and ASE."""

from __future__ import annotations

import json

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from etagent.flywheel.evolvers import PolicyEvolver
from etagent.flywheel.loop import FlywheelConfig, flywheel_grader, run_flywheel
from etagent.records import Example, PlanStep, Trajectory, read_jsonl
from etagent.tools.base import ToolSet
from etagent.tools.python_sandbox import PythonSandbox

from conftest import compose
from test_flywheel_strategies import DUP, GUESS, FakeEngine
from run_env import DOMAINS, GRADER, GRAMMAR

R = GRAMMAR.format_result
SHORT = "<think>Compute it.</think><python>print(123*456)</python>" + R("56088") + "<answer>\\boxed{56088}</answer>"


def _examples(n=3):
    return [Example(f"m{i}", "What is 123*456?", ["56088"], "math", "synthetic", "train",
                    plan=[PlanStep("python", "print(123*456)", "56088")]) for i in range(n)]


def _evolver(engine, **kw):
    return PolicyEvolver(grammar=engine.grammar, **kw)


def _script(ex, prefix, k):
    if prefix is not None or k >= 2:  # continuations and low-temperature refines solve it
        return SHORT.replace("print(123*456)", f"print(123 * 456)  # {k}") if k else SHORT
    return DUP if k == 0 else GUESS


@pytest.fixture(scope="module")
def toolset():
    ts = ToolSet({"python": PythonSandbox(pool_size=2, wall_seconds=5)})
    yield ts
    ts.close()


def test_two_rounds_persist_resume_and_report(toolset, tmp_path):
    engine = FakeEngine(toolset, _script)
    cfg = FlywheelConfig(min_correct=0.75, samples_per_question=2, max_rounds=2, continuations=1, stop_when_no_gain=False)
    tuned = []
    pool = run_flywheel(engine, _examples(), cfg, tmp_path, evolver=_evolver(engine),
                        finetune_fn=lambda sel, r: tuned.append((len(sel), r)))
    assert tuned == []  # finetune_between_rounds is off
    strategies = {t.meta["strategy"] for t in pool}
    assert {"sample", "modify_redundancy", "self_correct", "hint_injection"} <= strategies
    for t in pool:
        assert {"round", "strategy", "parent_id"} <= set(t.meta)
        if t.meta["strategy"] != "sample":
            assert GRAMMAR.is_valid(t.response_text) and t.score == 1.0 and t.meta["parent_id"]
    rows = json.loads((tmp_path / "rounds.json").read_text())
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["strategies"]["modify_redundancy"]["added"] == 3
    assert (tmp_path / "rounds.png").stat().st_size > 0 and "| round |" in (tmp_path / "rounds.md").read_text()
    assert len(list(read_jsonl(tmp_path / "pool.jsonl", Trajectory))) == len(pool)
    sft = list(read_jsonl(tmp_path / "sft.jsonl", Trajectory))
    assert sft and all(t.score == 1.0 for t in sft)
    assert len({t.example_id for t in sft}) == 3 and all(len(t.response_text) <= len(DUP) for t in sft)

    # resume: a third round continues after the two finished ones, with fine-tuning in between
    n_before = len(engine.calls)
    cfg3 = FlywheelConfig(min_correct=0.75, samples_per_question=2, max_rounds=3, continuations=1,
                          stop_when_no_gain=False, finetune_between_rounds=True)
    pool3 = run_flywheel(engine, _examples(), cfg3, tmp_path, evolver=_evolver(engine),
                         finetune_fn=lambda sel, r: tuned.append((len(sel), r)))
    assert tuned and tuned[0][1] == 2  # the round-2 policy is restored before round 3
    assert len(pool3) >= len(pool)
    assert [r["round"] for r in json.loads((tmp_path / "rounds.json").read_text())] == [1, 2, 3]
    assert engine.calls[n_before]["prefixes"] is None  # round 3 started with fresh sampling
    assert (tmp_path / "round_3.jsonl").exists()


def test_none_ablation_keeps_only_samples_and_stops_without_gain(toolset, tmp_path):
    engine = FakeEngine(toolset, lambda ex, p, k: SHORT)
    node = compose(["flywheel=none", "grading.qa_threshold=0.75"]).flywheel  # a delta of flywheel/full
    node.seed = 0
    node.samples_per_question = 2
    cfg = instantiate(node)
    pool = run_flywheel(engine, _examples(2), cfg, tmp_path, evolver=_evolver(engine))
    assert {t.meta["strategy"] for t in pool} == {"sample"}
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["completed_rounds"] == 2 and "no new correct" in state["stopped"]  # round 2 only repeats
    assert len(pool.select(cfg.max_per_question, flywheel_grader(engine, cfg))) == 2
    with pytest.raises(TypeError, match="built FlywheelConfig"):
        run_flywheel(engine, _examples(2), node, tmp_path / "raw", evolver=_evolver(engine))


def test_configs_validate_and_instantiate():
    from etagent.config.validate import validate

    names = {"none": [], "enhance_only": ["modify_redundancy", "global_refine"],
             "reflect_only": ["self_correct", "hint_injection"],
             "full": ["modify_redundancy", "global_refine", "self_correct", "hint_injection"],
             "oracle_upper_bound": ["modify_redundancy", "global_refine", "self_correct", "hint_injection"]}
    from hydra.utils import instantiate

    for name, strategies in names.items():
        root = compose([f"flywheel={name}", "grading.qa_threshold=0.75", "stages=[flywheel]"])
        node = root.flywheel
        node.seed = 0
        validate(root)
        fc = instantiate(node, evolver=None)  # the stage builds the evolver node, with the run's grammar
        assert fc.strategies == strategies and fc.extra_calls == 4 and fc.min_correct == 0.75
        oracle = node.evolver is not None and instantiate(node.evolver, grammar=GRAMMAR)
        assert (type(oracle).__name__ == "OracleEvolver") == (name == "oracle_upper_bound")
    for name in ("policy", "llm"):
        node = OmegaConf.load(f"conf/evolver/{name}.yaml")
        validate(OmegaConf.create({"evolver": node, "stages": ["flywheel"]}))
        evolver = instantiate(node, grammar=GRAMMAR)
        assert evolver.name == name and evolver.grammar == GRAMMAR
    with pytest.raises(ValueError, match="unknown"):
        FlywheelConfig(min_correct=0.75, strategies=["modify_redundancy", "telepathy"])
    with pytest.raises(TypeError, match="min_correct"):
        FlywheelConfig()  # noqa - the success threshold is the run's (${grading.qa_threshold}), never a code default


# --------------------------------------------------------------------------- tiny model, end to end

SMALL_ARCH = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=256)


@pytest.mark.slow
def test_tiny_model_two_rounds_and_ase(toolset, tmp_path):
    """Seed SFT (memorise 8 teacher-solved questions) -> 2 flywheel rounds with the real
    engine, HF backend and sandbox, fine-tuning between rounds -> ASE -> loadable policy."""
    import torch

    from etagent.backends.hf import HFBackend
    from etagent.data.synthetic import SyntheticTask
    from etagent.flywheel.ase import run_ase, to_sequences
    from etagent.flywheel.evolvers import PolicyEvolver
    from etagent.models.factory import ModelSpec, build_scratch_model, load_policy
    from etagent.models.prompting import build_prompt_ids
    from etagent.models.tokenizer import build_tokenizer
    from etagent.rollout.engine import RolloutEngine
    from etagent.seed.teacher import FlawedTeacher
    from etagent.train.sequences import from_text
    from etagent.train.sft import SFTConfig, train_sft

    torch.set_num_threads(1)
    train = SyntheticTask(seed=0, n_train=8, n_dev=0, n_test=0, mix={"math_tool": 0.5, "math_copy": 0.5},
                          domains=DOMAINS).load("train")
    by_id = {e.id: e for e in train}
    rows = FlawedTeacher(samples_per_example=2, seed=0).write(train, toolset)
    tok = build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=[r["response_text"] for r in rows] + [e.question for e in train], vocab_size=512)
    model = build_scratch_model(ModelSpec(arch=SMALL_ARCH), len(tok), tok.eos_token_id, tok.pad_token_id, seed=0)
    sft = dict(batch_size=32, warmup_steps=2, progress=False, checkpoint_every=0, max_len=256)
    seqs = [from_text(tok, build_prompt_ids(tok, by_id[r["example_id"]].question), r["response_text"], grammar=GRAMMAR)
            for r in rows]
    model = train_sft(model, tok, seqs, SFTConfig(lr=1e-2, max_steps=60, **sft), tmp_path / "seed")
    seed_path = tmp_path / "seed" / "final"

    backend = HFBackend(model=model, tokenizer=tok, batch_size=64)
    engine = RolloutEngine(backend, toolset, GRADER, toolset.grammar, system_prompt=None, max_response_tokens=200,
                           max_turn_tokens=96)
    calls = []
    real_rollout = engine.rollout

    def spy(examples, n, params, prefixes=None, extra_calls=0, group_prefix=""):
        calls.append((prefixes is not None, extra_calls))
        return real_rollout(examples, n, params, prefixes=prefixes, extra_calls=extra_calls, group_prefix=group_prefix)

    engine.rollout = spy
    tuned = []

    def finetune(selection, round_):
        tuned.append(round_)
        m = train_sft(backend.model, tok, to_sequences(selection, tok, engine.grammar), SFTConfig(lr=1e-3, max_steps=2, **sft),
                      tmp_path / f"ft{round_}")
        backend.sync_weights(m)

    cfg = FlywheelConfig(min_correct=0.75, samples_per_question=4, max_rounds=2, continuations=2,
                         stop_when_no_gain=False, finetune_between_rounds=True, seed=0)
    pool = run_flywheel(engine, train, cfg, tmp_path / "fw", evolver=_evolver(engine, refine_samples=2),
                        finetune_fn=finetune)

    state = json.loads((tmp_path / "fw" / "state.json").read_text())
    assert state["completed_rounds"] == 2 and tuned == [1] and state["finetuned_after"] == 1
    assert (tmp_path / "fw" / "rounds.png").exists()
    assert all(extra == 4 for is_cont, extra in calls if is_cont) and any(is_cont for is_cont, _ in calls)
    for t in pool:
        assert t.meta["round"] in (1, 2) and t.meta["strategy"]
        if t.meta["strategy"] != "sample":  # every edit was verified and re-encoded with result tokens masked
            # valid in the run's grammar (this tool set's: python only, so a stray </search> in <think> is text)
            assert engine.grammar.is_valid(t.response_text) and t.score == 1.0 and t.meta["parent_id"]
            assert tok.decode(t.response_ids, skip_special_tokens=False) == t.response_text
            assert (0 in t.response_mask) == (t.n_calls(engine.grammar) > 0)
    selection = pool.select(cfg.max_per_question, flywheel_grader(engine, cfg))
    assert selection, "the seed policy solved nothing: the SFT selection is empty"
    assert [t.id for t in read_jsonl(tmp_path / "fw" / "sft.jsonl", Trajectory)] == [t.id for t in selection]

    out = run_ase(seed_path, tmp_path / "fw" / "sft.jsonl", SFTConfig(lr=1e-3, max_steps=4, **sft), tmp_path / "ase",
                  grammar=engine.grammar, dtype="float32", device="cpu")
    data = json.loads((tmp_path / "ase" / "ase_data.json").read_text())
    assert data["trajectories"] == len(selection)
    new_model, _ = load_policy(out, dtype="float32", device="cpu")
    seed_model, _ = load_policy(seed_path, dtype="float32", device="cpu")
    with torch.no_grad():
        diff = sum(float((a - b).abs().sum()) for a, b in zip(new_model.parameters(), seed_model.parameters()))
    assert diff > 0  # ASE changed the seed policy
