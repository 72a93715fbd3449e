"""Method fidelity, options that used to do nothing (issue 13): the eval stage's LLM judge
(judge=llm, eval.concise_judge), experiment=paper_eval's search backend and per-benchmark
table, backend=vllm in the RL stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etagent import grading, protocol
from etagent.pipeline.context import RunContext
from etagent.records import Example, Trajectory, write_jsonl

from conftest import compose
from test_judge import FakeBackend
from test_rollout import tok  # noqa: F401 - fixture
from run_env import GRADER, GRAMMAR, unused_toolset


class _Engine:
    """Stands in for the rollout engine: answers 'seventeen' and grades with the stage's grader."""

    def __init__(self, grader):
        self.grader, self.grammar = grader, GRAMMAR
        self.max_turn_tokens = 16

    def rollout(self, examples, n, params, group_prefix="", budget=None):
        out = []
        for ex in examples:
            for k in range(n):
                text = "<think>t</think><answer>\\boxed{seventeen}</answer>"
                answer = grading.block_answer(text, GRAMMAR)
                out.append(Trajectory(id=f"{group_prefix}{ex.id}#{k}", example_id=ex.id,
                                      group_id=f"{group_prefix}{ex.id}", response_text=text, response_mask=[1] * 4,
                                      answer=answer, score=self.grader(ex, answer)))
        return out


def _eval_ctx(tmp_path, monkeypatch, overrides, backend):
    from etagent.pipeline import components

    cfg = compose(["stages=[eval]", "logger=none", *overrides], run_dir=tmp_path)
    ctx = RunContext(cfg, tmp_path, tracker=type("T", (), {"log": lambda self, *a, **k: None})())
    ctx.policies = lambda: {"seed": tmp_path / "seed"}
    ex = Example(id="m1", question="Compute 10+7.", answers=["17"], domain="math", source="t")
    monkeypatch.setattr(components, "load_split", lambda ctx, split: [ex])
    monkeypatch.setattr(components, "make_toolset", lambda ctx: unused_toolset())
    monkeypatch.setattr(components, "policy_backend", lambda ctx, path: (backend, None))
    monkeypatch.setattr(components, "make_engine", lambda ctx, b, grader, **stage: _Engine(grader))
    return ctx


def test_eval_stage_uses_the_llm_judge_when_selected(tmp_path, monkeypatch):
    from judge_backend import ScriptedJudge

    from etagent.pipeline import stage_eval

    policy = FakeBackend(lambda text, k: "Verdict: no")
    judge_node = "judge.backend={_target_: judge_backend.ScriptedJudge, verdict: 'yes'}"
    ctx = _eval_ctx(tmp_path, monkeypatch, ["judge=llm", "eval.concise_judge=true", judge_node], policy)
    stage_eval.run(ctx)
    judge = ScriptedJudge.instances[-1]
    metrics = json.loads((tmp_path / "eval" / "seed" / "metrics.json").read_text())
    prompts = [t for texts, _ in judge.calls for t in texts]
    assert policy.calls == []  # the evaluated policy never judges itself
    equivalence = [p for p in prompts if "Predicted answer: seventeen" in p]
    concise = [p for p in prompts if "redundant or ineffective tool call" in p]
    assert equivalence and "Reference answer: 17" in equivalence[0]  # math equivalence asked
    assert concise and "Reference answer: 17" in concise[0]  # the conciseness prompt shows the gold
    assert metrics["overall"]["correctness"] == 1.0  # the judge says correct; math-verify alone: "seventeen" != 17
    # 10 votes, all "yes, redundant": not concise
    assert metrics["overall"]["conciseness_judge"] == 0.0 and metrics["judge"]["items"] == 2
    assert [params.n for _, params in judge.calls] == [1, 10]  # one equivalence reply, ten conciseness votes


def test_llm_judge_needs_its_own_backend(tmp_path, monkeypatch):
    from etagent.config.validate import ConfigError
    from etagent.pipeline import stage_eval

    policy = FakeBackend(lambda text, k: "Verdict: yes")
    with pytest.raises(ConfigError, match="judge.backend"):
        stage_eval.run(_eval_ctx(tmp_path, monkeypatch, ["judge=llm"], policy))
    assert policy.calls == [] and not (tmp_path / "eval" / "seed").exists()


def test_eval_stage_without_judge_never_calls_one(tmp_path, monkeypatch):
    from etagent.pipeline import stage_eval

    backend = FakeBackend(lambda text, k: "Verdict: yes")
    stage_eval.run(_eval_ctx(tmp_path, monkeypatch, [], backend))
    metrics = json.loads((tmp_path / "eval" / "seed" / "metrics.json").read_text())
    assert backend.calls == [] and metrics["overall"]["correctness"] == 0.0
    assert "conciseness_judge" not in metrics["overall"]


def test_concise_judge_without_a_judge_fails_at_start(tmp_path, monkeypatch):
    from etagent.config.validate import ConfigError
    from etagent.pipeline import stage_eval

    with pytest.raises(ConfigError, match="judge=llm"):
        stage_eval.run(_eval_ctx(tmp_path, monkeypatch, ["eval.concise_judge=true"], FakeBackend(lambda t, k: "")))


# --------------------------------------------------------------------------- paper_eval


def test_paper_eval_searches_the_shipped_cache(tmp_path):
    from etagent.pipeline import components

    cfg = compose(["experiment=paper_eval"], run_dir=tmp_path)
    assert cfg.tools.search.backend == "cache"
    ctx = RunContext(cfg, tmp_path, tracker=None)
    with components.make_toolset(ctx) as toolset:
        (res,) = toolset.execute([("search", "Amy Smart film debut Campfire Tales")])
    assert res.status == "ok" and "film" in res.output


def test_a_missing_corpus_fails_at_start_naming_the_key(tmp_path):
    from etagent.config.validate import ConfigError
    from etagent.pipeline import components

    cfg = compose(["task=aime24"], run_dir=tmp_path)  # bm25 default, and a benchmark writes no corpus
    with pytest.raises(ConfigError, match="tools.search.corpus_path.*tools.search.backend=cache"):
        components.make_toolset(RunContext(cfg, tmp_path, tracker=None))
    # an explicit corpus that is missing fails too, even where the world wrote its own
    (tmp_path / "world").mkdir(exist_ok=True)
    (tmp_path / "world" / "corpus.jsonl").write_text('{"id": "0", "title": "t", "text": "x"}\n')
    cfg = compose([f"tools.search.corpus_path={tmp_path}/nope.jsonl"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match="nope.jsonl"):
        components.check_search_corpus(RunContext(cfg, tmp_path, tracker=None))
    components.check_search_corpus(RunContext(compose([], run_dir=tmp_path), tmp_path, tracker=None))  # world corpus


def test_eval_table_has_one_row_per_benchmark_and_the_macro_average():
    from etagent.evaluation import EvalConfig
    from etagent.evaluation.evaluate import evaluate

    names = ["aime24", "amc23", "math500", "2wiki", "bamboogle", "musique"]
    exs = [Example(id=f"{b}-{i}", question=f"q{i}", answers=["seventeen" if i else "1"], domain="math", source=b)
           for b in names for i in range(1 + names.index(b) % 2)]
    _, m = evaluate(_Engine(GRADER), exs, EvalConfig())
    rows = m["by_benchmark"]
    assert list(rows) == names + ["macro avg (6)"]
    per = [rows[b]["correctness"] for b in names]
    assert rows["macro avg (6)"]["correctness"] == pytest.approx(sum(per) / 6)
    assert rows["macro avg (6)"]["n"] == len(exs) and m["overall"]["correctness"] != pytest.approx(sum(per) / 6)


# --------------------------------------------------------------------------- backend=vllm in rl


def test_rl_stage_hands_vllm_a_checkpoint_dir_and_reloads_it_after_updates(tmp_path, monkeypatch, tok):
    import sys

    import torch

    from etagent.backends.base import SamplingParams
    from etagent.models.factory import ModelSpec, build_scratch_model
    from etagent.pipeline import components, stage_rl
    from test_backends import _FakeVLLM

    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    model = build_scratch_model(ModelSpec(), len(tok), tok.eos_token_id, tok.pad_token_id, seed=1)
    cfg = compose(["backend=vllm", "schedule.start=seed"], run_dir=tmp_path)  # the run has a seed agent only
    ctx = RunContext(cfg, tmp_path, tracker=None)
    ctx.policies = lambda: {"seed": tmp_path / "seed"}
    monkeypatch.setattr(components, "load_split", lambda ctx, split: [])
    monkeypatch.setattr(components, "make_toolset", lambda ctx: unused_toolset())
    seen = {}

    def fake_curriculum(*args, make_engine, **kw):
        engine = make_engine(model, tok)
        engine.backend.generate([[1, 2]], SamplingParams(n=1))
        seen["first"] = fake.engine_kwargs["model"]
        weights = Path(seen["first"]) / "model.safetensors"
        seen["before"] = weights.read_bytes()
        with torch.no_grad():  # a training update, then the trainer's sync
            model.get_output_embeddings().weight.mul_(-1.0)
        engine.backend.sync_weights(model)
        engine.backend.generate([[1, 2]], SamplingParams(n=1))
        seen["second"], seen["after"] = fake.engine_kwargs["model"], weights.read_bytes()
        return {}

    monkeypatch.setattr("etagent.rl.curriculum.run_curriculum", fake_curriculum)
    stage_rl.run(ctx)
    path = Path(seen["first"])
    assert path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert "Module" not in seen["first"] and seen["second"] == seen["first"]  # never a module repr
    assert seen["after"] != seen["before"]  # reloaded from the updated weights


def test_rl_stage_refuses_a_server_backend_at_start(tmp_path):
    from etagent.config.validate import ConfigError
    from etagent.pipeline import stage_rl

    ctx = RunContext(compose(["backend=openai"], run_dir=tmp_path), tmp_path, tracker=None)
    with pytest.raises(ConfigError, match="backend=hf or backend=vllm"):
        stage_rl.run(ctx)
