"""Real-model, backend and benchmark configs compose together; experiment=paper_eval; SLURM launcher.

Composition and validation only (nothing is downloaded or started): on this CPU machine the
real models cannot run, so these tests pin the configuration a GPU run would use.
"""

from __future__ import annotations

import itertools

import pytest
from hydra.utils import instantiate

from conftest import CONF, SHARED, compose
from etagent.config import validate

REAL_MODELS = ("qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-7b-instruct")
REAL_BACKENDS = ("vllm", "openai")
BENCHMARKS = ("aime24", "amc23", "math500", "2wiki", "hotpotqa", "musique", "bamboogle", "paper_math", "paper_qa")
PAPER_SIX = {"aime24": 30, "amc23": 40, "math500": 500, "2wiki": 200, "bamboogle": 125, "musique": 200}


def test_the_lists_above_cover_every_real_config_file():
    on_disk = {p.stem for p in (CONF / "task").glob("*.yaml")} - {"synthetic", "calibration", "jsonl"}  # jsonl: test_jsonl_task; calibration: test_calibration_world
    assert on_disk == set(BENCHMARKS)
    assert {p.stem for p in (CONF / "model").glob("qwen*.yaml")} == set(REAL_MODELS)
    assert set(REAL_BACKENDS) <= {p.stem for p in (CONF / "backend").glob("*.yaml")}


def _compose_many(override_lists: list[list[str]], run_dir) -> list:
    """Compose several override lists under one Hydra initialisation (much faster than one each)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    fixed = [f"paths.run_dir={run_dir}", f"paths.shared_dir={SHARED}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return [hcompose(config_name="config", overrides=ov + fixed) for ov in override_lists]


@pytest.mark.parametrize("model", REAL_MODELS)
def test_every_real_model_with_every_benchmark(model, tmp_path):
    # backends are crossed with every model in the paper_eval test below
    combos = [(task, "vllm") for task in BENCHMARKS]
    cfgs = _compose_many([[f"model={model}", f"task={t}", f"backend={b}", "stages=[world,eval,report]"]
                          for t, b in combos], tmp_path)
    for (task, backend), cfg in zip(combos, cfgs):
        validate(cfg)
        assert cfg.model.name == model and cfg.model.kind == "pretrained"
        assert cfg.task.name == task and cfg.backend._target_.split(".")[-2] == backend


def test_every_real_model_with_every_backend_in_paper_eval(tmp_path):
    combos = list(itertools.product(REAL_MODELS, REAL_BACKENDS))
    cfgs = _compose_many([["experiment=paper_eval", f"model={m}", f"backend={b}"] for m, b in combos], tmp_path)
    for (model, backend), cfg in zip(combos, cfgs):
        validate(cfg)
        assert cfg.model.name == model and cfg.task.name == "paper"
        assert cfg.backend._target_.split(".")[-2] == backend


def test_paper_eval_defaults_and_benchmarks(tmp_path):
    cfg = validate(compose(["experiment=paper_eval"], tmp_path))
    assert cfg.model.name == "qwen2.5-7b-instruct"
    assert cfg.backend._target_ == "etagent.backends.vllm.VLLMBackend"
    assert list(cfg.stages) == ["world", "eval", "report"]
    assert cfg.judge is None  # math-verify unless judge=llm
    task = instantiate(cfg.task)
    assert sorted(task.names) == sorted(PAPER_SIX)
    examples = task.load("test")
    counts = {name: sum(e.source == name for e in examples) for name in PAPER_SIX}
    assert counts == PAPER_SIX  # the files in ../shared/benchmarks, complete
    assert {e.meta["metric"] for e in examples if e.domain == "math"} == {"math"}
    assert {e.meta["metric"] for e in examples if e.domain == "qa"} == {"f1"}
    limited = instantiate(compose(["experiment=paper_eval", "task.limit=2"], tmp_path).task)
    assert len(limited.load("test")) == 2 * len(PAPER_SIX)


def test_paper_eval_with_llm_judge_validates(tmp_path):
    cfg = validate(compose(["experiment=paper_eval", "judge=llm", "judge.n_votes=5"], tmp_path))
    assert cfg.judge._target_ == "etagent.judge.LLMJudge" and cfg.judge.n_votes == 5


# --------------------------------------------------------------------------- launcher


def _hydra_cfg(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides + [f"paths.shared_dir={SHARED}"],
                        return_hydra_config=True)


def test_default_launcher_stays_basic_and_slurm_is_opt_in():
    assert _hydra_cfg([]).hydra.launcher._target_.endswith("BasicLauncher")
    launcher = _hydra_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.nodes == 1
    assert launcher.timeout_min > 0 and launcher.submitit_folder.endswith(".submitit/%j")


def test_pipeline_builds_every_backend_from_config(tmp_path, monkeypatch):
    """components.make_backend passes a checkpoint to vllm, a tokenizer to a server, a module to hf."""
    import sys
    import types

    from conftest import compose
    from etagent.pipeline import components
    from etagent.pipeline.context import RunContext

    seen = {}

    class FakeLLM:  # stands in for vllm.LLM: records what the backend asked for
        def __init__(self, model, **kw):
            seen["model"] = model

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=object))
    for backend in ("vllm", "openai"):
        cfg = compose([f"backend={backend}", "model=qwen2.5-0.5b-instruct"], run_dir=tmp_path)
        ctx = RunContext(cfg=cfg, run_dir=tmp_path, tracker=None)
        b = components.make_backend(ctx, tmp_path / "ckpt", tokenizer=object())
        assert type(b).__name__ == {"vllm": "VLLMBackend", "openai": "OpenAIBackend"}[backend]
