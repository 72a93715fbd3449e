"""A flywheel round is five steps with one job each; run one by one they give what run_flywheel gives."""

from __future__ import annotations

from etagent.flywheel.evolvers import PolicyEvolver
from etagent.flywheel.loop import FlywheelConfig, build_verifier, flywheel_grader, run_flywheel
from etagent.flywheel.pool import Pool
from etagent.flywheel.steps import ROUND_STEPS, Flywheel, Round, merge, propose, sample, split, verify
from etagent.flywheel.strategies import CORRECT, INCORRECT, EvolveContext, build_strategies

from test_flywheel_loop import _examples, _script, toolset  # noqa: F401 - fixture
from test_flywheel_strategies import FakeEngine


def _flywheel(engine, cfg):
    evolver = PolicyEvolver(grammar=engine.grammar)
    return Flywheel(engine, _examples(), cfg, build_verifier(engine, cfg), evolver,
                    build_strategies(cfg.strategies), flywheel_grader(engine, cfg), Pool(engine.grammar))


def test_each_step_does_its_one_job(toolset, tmp_path):  # noqa: F811
    cfg = FlywheelConfig(min_correct=0.75, samples_per_question=2, max_rounds=1, continuations=1)
    engine = FakeEngine(toolset, _script)
    fw = _flywheel(engine, cfg)
    rnd = Round(1, EvolveContext(engine, fw.verifier, fw.evolver, engine.grammar, round=1, extra_calls=cfg.extra_calls,
                                 continuations=cfg.continuations, temperature=cfg.temperature,
                                 keep_hint_in_data=cfg.keep_hint_in_data, seed=cfg.seed))
    assert ROUND_STEPS == (sample, split, propose, verify, merge)

    sample(fw, rnd)
    assert len(rnd.samples) == 6 and len(fw.pool) == 0
    assert all(s.meta["strategy"] == "sample" and s.meta["round"] == 1 and "grounded" in s.meta for s in rnd.samples)

    split(fw, rnd)
    right = [s for _, s in rnd.split[CORRECT]]
    wrong = [s for _, s in rnd.split[INCORRECT]]
    assert right and wrong and rnd.frontier == []  # round 1: no earlier edits to build on
    assert sorted(t.id for t in right + wrong) == sorted(s.id for s in rnd.samples)
    assert all(fw.succeeded(t) for t in right) and not any(fw.succeeded(t) for t in wrong)

    propose(fw, rnd)
    assert rnd.candidates and not rnd.verdicts and len(fw.pool) == 0
    assert sum(c["proposed"] for c in rnd.stats.values()) == len(rnd.candidates)

    verify(fw, rnd)
    assert len(rnd.verdicts) == len(rnd.candidates) and len(fw.pool) == 0
    assert sum(c["accepted"] + c["rejected"] for c in rnd.stats.values()) == len(rnd.candidates)

    merge(fw, rnd)
    edits = [t for t in rnd.added if t.meta["strategy"] != "sample"]
    assert edits and len(fw.pool) == len(rnd.added) == len(rnd.samples) + len(edits)
    assert sum(c["added"] for c in rnd.stats.values()) == len(edits)

    # the loop is these steps: the same round through run_flywheel adds the same trajectories
    engine = FakeEngine(toolset, _script)
    pool = run_flywheel(engine, _examples(), cfg, tmp_path, evolver=PolicyEvolver(grammar=engine.grammar))
    assert [(t.id, t.response_text, t.score) for t in pool] == [(t.id, t.response_text, t.score) for t in fw.pool]
