"""preset=mechanism composes and validates with every experiment, selects the calibration world and its
teacher, and pins the study's budgets (experiments/mechanism/WORLD.md); the default stays the default."""

from __future__ import annotations

import pytest

from conftest import CONF, compose
from etagent.config import validate

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem != "paper_eval")


def test_preset_selects_the_world_and_pins_the_budgets(tmp_path):
    cfg = compose(["preset=mechanism"], run_dir=tmp_path)
    validate(cfg)
    assert cfg.task._target_ == "etagent.data.synthetic.calibration.CalibrationTask"
    assert cfg.seed_agent._target_ == "etagent.seed.calibration.CalibrationTeacher"
    assert cfg.task.seed == cfg.seed_agent.seed == cfg.seed  # the world and the seed agent vary with `seed`
    # the seed SFT recipe is the default one
    assert (cfg.seed_sft.max_steps, cfg.seed_sft.batch_size, cfg.seed_sft.lr) == (1600, 16, 3.0e-3)
    assert cfg.task.n_test == 500  # DESIGN.md's test split
    # flywheel: 3 rounds of 500 questions x 2 samples, one trajectory per question (>= 1,000 verified, WORLD.md)
    fw = cfg.flywheel
    assert (fw.questions_per_round, fw.max_rounds, fw.samples_per_question, fw.max_per_question) == (500, 3, 2, 1)
    # ASE: a step budget of >= 10 % of the seed SFT's optimizer updates, at the seed SFT's batch size
    assert cfg.ase_sft.max_steps == 200 and cfg.ase_sft.max_steps >= 0.1 * cfg.seed_sft.max_steps
    assert cfg.ase_sft.batch_size == 16
    # RL: 3 stages, each re-sampling and re-selecting, each a step budget
    stages = cfg.schedule.stages
    assert len(stages) == 3
    for st in stages:
        assert st.steps == 16 and st.get("epochs") is None
        assert st.sample_questions == 64 and st.k == 8 and st.select == 32


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_the_preset(experiment, tmp_path):
    cfg = compose(["preset=mechanism", f"experiment={experiment}"], run_dir=tmp_path)
    validate(cfg)
    assert cfg.task.name == "calibration"
    assert cfg.run_name == compose([f"experiment={experiment}"], run_dir=tmp_path).run_name  # the experiment names the run


def test_the_default_is_untouched(tmp_path):
    cfg = compose([], run_dir=tmp_path)
    assert cfg.task._target_ == "etagent.data.synthetic.SyntheticTask"
    assert cfg.seed_agent._target_ == "etagent.seed.teacher.FlawedTeacher"
    assert len(cfg.schedule.stages) == 2 and cfg.flywheel.questions_per_round == 128
