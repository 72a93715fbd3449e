"""The ``etagent_tir`` agent loop inside verl's own AgentLoopWorker (verl 0.9.1, CPU).

verl's worker loads the loop from the shipped registry format (agent_loop_config_path),
reads the exported parquet with its RLHFDataset and pads the outputs into its batch; the
LLM server is a fake with verl's server-manager interface that samples from a tiny HF
policy (vLLM's contract: stop strings kept, eos returned as a token). Under greedy
decoding the batch must hold exactly what etagent's own RolloutEngine produces for the
same question with the same Hydra config (ids, mask, log-probs), with tool results masked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import torch
from hydra.utils import instantiate
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
from verl.workers.rollout.replica import TokenOutput
from verl_pkg_support import MATH, QA, tiny_policy, verl_config, write_corpus

from etagent import protocol
from etagent.backends.base import EOS, SamplingParams, find_stop
from etagent.backends.hf import HFBackend
from etagent.export.verl import export_verl
from etagent.export.verl_agent_loop import AGENT_NAME, compose_etagent
from etagent.models.factory import load_policy
from etagent.records import BUDGET, OK
from etagent.runenv import RunEnv
from etagent.tools import build_toolset
from run_env import GRAMMAR

RESPONSE_LEN, PROMPT_LEN = 160, 256


class FakeServer:
    """verl's LLMServerClient interface (``generate -> TokenOutput``) over etagent's HF backend."""

    def __init__(self, backend: HFBackend):
        self.backend = backend
        self.requests: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        sp = dict(sampling_params)
        self.requests.append(sp)
        assert sp.get("include_stop_str_in_output") is True  # vLLM must keep the stop string
        params = SamplingParams(temperature=float(sp["temperature"]), top_p=float(sp.get("top_p", 1.0)),
                                max_new_tokens=int(sp["max_tokens"]), stop=tuple(sp["stop"]),
                                logprobs=bool(sp.get("logprobs")))
        comp = self.backend.generate([list(prompt_ids)], params)[0][0]
        ids, lps = list(comp.ids), list(comp.logprobs or [])
        if comp.finish_reason == EOS:  # vLLM returns the eos token
            ids.append(self.backend.tokenizer.eos_token_id)
            lps.append(0.0)
        return TokenOutput(token_ids=ids, log_probs=lps if sp.get("logprobs") else None, stop_reason="completed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verl_loop")
    corpus = write_corpus(tmp / "corpus.jsonl")
    overrides = [f"tools.search.corpus_path={corpus}", "tools.search.backend=bm25", "tools.search.top_k=1",
                 "tools.search.cache_path=null", "tools.python.pool_size=1", "tools.python.preimport=[math]",
                 "rollout.max_turn_tokens=64", f"paths.run_dir={tmp}"]
    toolset = build_toolset(compose_etagent(overrides).tools)
    policy = tiny_policy(tmp / "policy", toolset)
    parquet = tmp / "rl.parquet"
    export_verl([MATH, QA], parquet, system_prompt=GRAMMAR.system_prompt)
    yield {"tmp": tmp, "overrides": overrides, "toolset": toolset, "policy": policy, "parquet": parquet}
    toolset.close()


def _worker(setup, extra: list[str], backend: HFBackend | None, server=None):
    registry = setup["tmp"] / f"agent_loops_{len(extra)}.yaml"
    ov = setup["overrides"] + extra
    registry.write_text(
        f"- name: {AGENT_NAME}\n  _target_: etagent.export.verl_agent_loop.ETAgentTIRLoop\n"
        f"  overrides: [{', '.join(repr(o) for o in ov)}]\n"
    )
    cfg = verl_config([
        f"actor_rollout_ref.model.path={setup['policy']}", "actor_rollout_ref.rollout.name=vllm",
        f"actor_rollout_ref.rollout.prompt_length={PROMPT_LEN}",
        f"actor_rollout_ref.rollout.response_length={RESPONSE_LEN}",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={registry}",
        f"actor_rollout_ref.rollout.agent.default_agent_loop={AGENT_NAME}",
        "actor_rollout_ref.rollout.val_kwargs.temperature=0",
        f"data.max_prompt_length={PROMPT_LEN}", "data.return_raw_chat=true",
        f"+data.cache_dir={setup['tmp'] / 'verl_cache'}", "data.filter_overlong_prompts_workers=1",
    ])
    server = server or FakeServer(backend)
    return cfg, AgentLoopWorker(cfg, llm_client=server), server


def _verl_rollout(setup, extra: list[str], backend: HFBackend | None, server=None):
    cfg, worker, server = _worker(setup, extra, backend, server)
    tok = worker.tokenizer
    ds = RLHFDataset([str(setup["parquet"])], tok, cfg.data)
    batch = DataProto.from_single_dict(collate_fn([ds[i] for i in range(len(ds))]))
    batch.meta_info["validate"] = True  # verl's greedy path: val_kwargs.temperature=0
    out = asyncio.run(worker.generate_sequences(batch))
    return out, server, tok


def _row(out: DataProto, i: int):
    p = out.batch["prompts"].shape[1]
    attn = out.batch["attention_mask"][i]
    n = int(attn[p:].sum())
    return {
        "prompt": out.batch["prompts"][i][attn[:p].bool()].tolist(),
        "ids": out.batch["responses"][i][:n].tolist(),
        "mask": out.batch["response_mask"][i][:n].tolist(),
        "logprobs": out.batch["rollout_log_probs"][i][:n].tolist(),
    }


def _reference(setup, extra: list[str], backend: HFBackend):
    cfg = compose_etagent(setup["overrides"] + extra)
    eng = instantiate(cfg.rollout, backend=backend, toolset=setup["toolset"], grader=RunEnv.from_config(cfg).grader,
                      grammar=setup["toolset"].grammar, system_prompt=GRAMMAR.system_prompt,
                      max_response_tokens=RESPONSE_LEN)
    return eng.rollout([MATH, QA], 1, SamplingParams(temperature=0.0, seed=0))


def _budget_override(setup) -> list[str]:
    rollout = compose_etagent(setup["overrides"]).rollout
    key = "max_calls_total" if "max_calls_total" in rollout else "max_calls_per_kind"
    return [f"rollout.{key}=0"]


@pytest.mark.slow
@pytest.mark.parametrize("budget", [False, True], ids=["default", "no_calls_allowed"])
def test_agent_loop_equals_rollout_engine(setup, budget):
    model, tok = load_policy(setup["policy"], device="cpu", dtype="float32")
    backend = HFBackend(model, tok, batch_size=4)
    extra = _budget_override(setup) if budget else []
    out, server, _ = _verl_rollout(setup, extra, backend)
    ref = _reference(setup, extra, backend)
    assert len(out) == len(ref) == 2 and server.requests
    assert all(r["stop"] == list(GRAMMAR.stop_strings) and r["temperature"] == 0 for r in server.requests)
    for i, t in enumerate(ref):
        row = _row(out, i)
        eos = [tok.eos_token_id] if t.finish_reason == "eos" else []  # verl keeps the eos token
        assert row["prompt"] == t.prompt_ids
        # cut to response_length: the engine lets a last tool result overshoot its budget
        assert row["ids"] == (t.response_ids + eos)[:RESPONSE_LEN]
        assert row["mask"] == (t.response_mask + [1] * len(eos))[:RESPONSE_LEN]
        # (float noise: the engine batches both questions, padded; the server sees one at a time)
        model_pos = [k for k, m in enumerate(t.response_mask[:RESPONSE_LEN]) if m]
        assert [row["logprobs"][k] for k in model_pos] == pytest.approx([t.logprobs[k] for k in model_pos], abs=1e-3)
        # the reward's inputs: exact model-token count; and the calls that ran
        assert out.non_tensor_batch["model_tokens"][i] == sum(row["mask"])
        assert out.non_tensor_batch["n_executed"][i] == t.n_executed
        assert out.non_tensor_batch["finish_reason"][i] == t.finish_reason
        assert t.tool_calls, "the tiny policy must call a tool (else nothing here is tested)"
        if budget:  # the call over budget is refused, as in the engine
            assert any(c.status == BUDGET for c in t.tool_calls) and not any(c.status == OK for c in t.tool_calls)
        else:  # every tool result is in the response, masked, in the protocol's format
            results = [(s, e) for s, e, kind in t.meta["segments"] if kind == "result"]
            assert len(results) == len(t.tool_calls) >= 1
            for (s, e), call in zip(results, t.tool_calls):
                assert row["mask"][s:e] == [0] * (e - s)
                assert tok.decode(row["ids"][s:e], skip_special_tokens=False) == GRAMMAR.format_result(call.result)
            assert t.finish_reason == "answer" and t.score == 1.0
    # verl's padding: mask 0 beyond each response, prompts left-padded
    assert out.batch["responses"].shape == (2, RESPONSE_LEN) and out.batch["prompts"].shape == (2, PROMPT_LEN)
    assert torch.equal(out.batch["response_mask"] * out.batch["attention_mask"][:, PROMPT_LEN:], out.batch["response_mask"])


class ScriptedServer:
    """verl's server interface answering turn k (k = result blocks so far) with ``turns[k]``, cut
    after the first of the request's stop strings (kept, as vLLM does): a missing stop string shows."""

    def __init__(self, tokenizer, turns: list[str]):
        self.tok, self.turns = tokenizer, turns
        self.requests: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        self.requests.append(dict(sampling_params))
        response = self.tok.decode(list(prompt_ids), skip_special_tokens=False).split("<|im_start|>assistant\n", 1)[1]
        turn = self.turns[min(response.count("</result>"), len(self.turns) - 1)]
        hit = find_stop(turn, tuple(sampling_params["stop"]))
        ids = self.tok.encode(turn[: hit[0]] if hit else turn, add_special_tokens=False)
        return TokenOutput(token_ids=ids + ([] if hit else [self.tok.eos_token_id]), log_probs=None,
                           stop_reason="completed")


TOOL_CONF = Path(__file__).resolve().parent / "tool_conf"


def test_agent_loop_stops_on_and_dispatches_a_configured_tool(setup):
    """A calculator added as class + YAML node (tests/tool_conf): the loop's stop strings come from the
    tool config it receives, so the server stops after </calculator> and the calculator runs."""
    from etagent.models.tokenizer import load_tokenizer

    tok = load_tokenizer(setup["policy"])
    turns = ["<think>multiply</think><calculator>6*7</calculator> never sampled",
             "<think>done</think><answer>The answer is \\boxed{42}</answer>"]
    extra = [f"hydra.searchpath=[file://{TOOL_CONF}]", "tools=with_calculator"]
    out, server, tok = _verl_rollout(setup, extra, None, ScriptedServer(tok, turns))
    assert server.requests and all("</calculator>" in r["stop"] for r in server.requests)
    for i in range(len(out)):
        row = _row(out, i)
        text = tok.decode(row["ids"], skip_special_tokens=False)
        assert "<calculator>6*7</calculator><result>\n42\n</result>" in text and "never sampled" not in text
        assert out.non_tensor_batch["n_executed"][i] == 1 and out.non_tensor_batch["finish_reason"][i] == "answer"
