"""Generation backends: hf sampling loop on the tiny model, vllm translation (fake module), openai (fake server)."""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from etagent.backends.base import Completion, SamplingParams, find_stop
from etagent.backends.hf import HFBackend
from etagent.models.factory import ModelSpec, build_scratch_model
from etagent.models.prompting import build_prompt_ids
from etagent.models.tokenizer import build_tokenizer
from run_env import GRAMMAR

TEXTS = [
    "What is 12*7? <think>compute it</think><python>print(12*7)</python><result>\n84\n</result>"
    "<answer>The answer is \\boxed{84}</answer>",
    "Who wrote Dune? <search>author of Dune</search><result>\nDune was written by Frank Herbert.\n</result>"
    "<answer>\\boxed{Frank Herbert}</answer>",
] * 40


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = build_scratch_model(ModelSpec(), len(tok), tok.eos_token_id, tok.pad_token_id, seed=0)
    return m


def _reference_logprobs(model, prefix, ids, temperature):
    with torch.no_grad():
        full = torch.tensor([prefix + ids])
        logits = model(input_ids=full).logits[0, len(prefix) - 1 : -1].float()
        logp = torch.log_softmax(logits / temperature, dim=-1)
        return logp.gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------- hf


def test_hf_left_padding_kv_cache_logprobs_and_stops(tok, model):
    be = HFBackend(model, tok, batch_size=3)  # 2 prefixes x n=3 -> two chunks, mixed lengths
    prefixes = [build_prompt_ids(tok, "What is 3*4?"), build_prompt_ids(tok, "Who wrote the very long book about sand?")]
    assert len(prefixes[0]) != len(prefixes[1])
    params = SamplingParams(n=3, temperature=0.8, max_new_tokens=40, seed=7, stop=GRAMMAR.stop_strings)
    out = be.generate(prefixes, params)
    assert [len(o) for o in out] == [3, 3]
    for prefix, comps in zip(prefixes, out):
        for c in comps:
            assert c.finish_reason in ("stop", "length", "eos")
            assert len(c.logprobs) == len(c.ids) == len(c.entropies)
            if c.ids:  # log-probs of the sampled ids under softmax(logits / T), no cache, no padding
                ref = _reference_logprobs(model, prefix, c.ids, 0.8)
                assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4)
            text = tok.decode(c.ids, skip_special_tokens=False)
            if c.finish_reason == "stop":
                assert c.stop in GRAMMAR.stop_strings and text.endswith(c.stop)
                assert find_stop(tok.decode(c.ids[:-1], skip_special_tokens=False), GRAMMAR.stop_strings) is None
            elif c.finish_reason == "length":
                assert len(c.ids) == 40
            assert not set(c.ids) & set(be.eos_ids)
    # seeded: same seed -> same samples; the dynamic cache gives the same samples as the static one
    again = be.generate(prefixes, params)
    assert [[c.ids for c in o] for o in again] == [[c.ids for c in o] for o in out]
    dyn = HFBackend(model, tok, batch_size=3, cache_impl="dynamic").generate(prefixes, params)
    assert [[c.ids for c in o] for o in dyn] == [[c.ids for c in o] for o in out]


def test_hf_stop_spelled_with_several_tokens_and_eos(tok, model):
    be = HFBackend(model, tok, batch_size=4)
    prefix = build_prompt_ids(tok, "What is 3*4?")
    p = SamplingParams(n=1, max_new_tokens=12, stop=(), seed=11)
    ref = be.generate([prefix], p)[0][0]
    assert ref.finish_reason == "length" and len(ref.ids) == 12
    # same seed, an eos id at the first new token from position 2 on: ends there, eos excluded
    j = next(k for k in range(2, 12) if ref.ids[k] not in ref.ids[:k])
    c = HFBackend(model, tok, eos_token_ids=[ref.ids[j]]).generate([prefix], p)[0][0]
    assert c.finish_reason == "eos" and c.ids == ref.ids[:j]
    # a stop string spanning several tokens is matched on the decoded text
    stop = tok.decode(ref.ids[1:4], skip_special_tokens=False)
    end = next(k for k in range(1, 13) if stop in tok.decode(ref.ids[:k], skip_special_tokens=False))
    c = be.generate([prefix], p.replace(stop=(stop,)))[0][0]
    assert c.finish_reason == "stop" and c.stop == stop and c.ids == ref.ids[:end]


def test_hf_finished_rows_leave_the_batch(tok, model):
    be = HFBackend(model, tok, batch_size=8)
    sizes: list[int] = []
    h = model.register_forward_hook(lambda mod, args, kw, out: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        prefix = build_prompt_ids(tok, "What is 3*4?")
        for seed in range(3, 30):  # a sample where >= 2 of 8 rows end early (the batch compacts at 1/4 dead)
            sizes.clear()
            out = be.generate([prefix], SamplingParams(n=8, max_new_tokens=60, seed=seed, stop=GRAMMAR.stop_strings))
            lengths = sorted(len(c.ids) for c in out[0])
            if sum(n < lengths[-1] - 1 for n in lengths) >= 2:
                break
        else:
            pytest.fail("no seed gave rows of different lengths")
    finally:
        h.remove()
    assert sizes[0] == 8 and min(sizes) < 8  # finished rows were dropped from the batch
    assert len(sizes) == max(lengths)  # prefill + one step per token of the longest row (minus the last)


def test_hf_sync_weights_sees_new_weights_and_restores_train_mode(tok, model):
    import copy

    m = copy.deepcopy(model)
    be = HFBackend(m, tok)
    prefix = build_prompt_ids(tok, "What is 3*4?")
    p = SamplingParams(temperature=0.0, max_new_tokens=5, stop=())
    before = be.generate([prefix], p)[0][0]
    m.train()
    with torch.no_grad():  # a "training step" in place
        m.get_output_embeddings().weight.mul_(-1.0)
    be.sync_weights(m)
    after = be.generate([prefix], p)[0][0]
    assert after.ids != before.ids or after.logprobs != before.logprobs
    assert m.training  # generation ran in eval mode and restored the trainer's mode


def test_repetition_penalty_golden_values_and_off_by_default():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    out = HFBackend._penalise(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]  # seen: positive / p, negative * p; unseen untouched
    assert HFBackend._penalise(logits, None, 2.0) is logits  # penalty 1.0 never builds a mask
    assert SamplingParams().repetition_penalty == 1.0 and SamplingParams().top_k == 0


def test_hf_repetition_penalty_and_top_k(tok, model):
    be = HFBackend(model, tok)
    prefix = build_prompt_ids(tok, "What is 3*4?")
    greedy = be.generate([prefix], SamplingParams(temperature=0.0, max_new_tokens=30, stop=()))[0][0]
    # top_k=1 at temperature 1 is greedy decoding
    top1 = be.generate([prefix], SamplingParams(temperature=1.0, top_k=1, max_new_tokens=30, stop=(), seed=3))[0][0]
    assert top1.ids == greedy.ids
    # an overwhelming penalty forbids every id already in the prefix or sampled (until eos)
    pen = be.generate([prefix], SamplingParams(temperature=0.0, repetition_penalty=1e6, max_new_tokens=30, stop=()))[0][0]
    assert pen.ids and len(set(pen.ids)) == len(pen.ids) and not set(pen.ids) & set(prefix)
    assert len(set(greedy.ids)) < len(greedy.ids) or set(greedy.ids) & set(prefix)  # unpenalised, it repeats


def test_sampling_params_and_completion_validation():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=-1)
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=0.0)
    with pytest.raises(ValueError, match="finish_reason"):
        Completion([1], [0.0], "done")
    with pytest.raises(ValueError, match="logprobs"):
        Completion([1, 2], [0.0], "stop")
    assert find_stop("a</python>b</answer>", GRAMMAR.stop_strings) == (len("a</python>"), "</python>")


# ----------------------------------------------------------------------------- vllm (fake module)


class _FakeVLLM(types.ModuleType):
    """Just enough of vllm's offline API to check the translation layer."""

    def __init__(self):
        super().__init__("vllm")
        self.calls: list = []
        fake = self

        class SamplingParams:
            def __init__(self, **kw):
                self.kw = kw

        class LLM:
            def __init__(self, model, **kw):
                fake.engine_kwargs = dict(model=model, **kw)
                self.loaded = None

            def get_tokenizer(self):
                return None

            def generate(self, prompts, sp, use_tqdm=True):
                fake.calls.append((prompts, sp.kw))
                outs = []
                for p in prompts:
                    ids = p["prompt_token_ids"]
                    choices = []
                    for j in range(sp.kw["n"]):
                        toks = [ids[-1] + j, 5]
                        lp = [{t: types.SimpleNamespace(logprob=-0.5 * (k + 1))} for k, t in enumerate(toks)]
                        if j == 0:
                            choices.append(types.SimpleNamespace(token_ids=toks, logprobs=lp, finish_reason="stop", stop_reason="</python>"))
                        elif j == 1:  # eos: vllm keeps the eos id in token_ids
                            choices.append(types.SimpleNamespace(token_ids=toks + [0], logprobs=lp + [{0: types.SimpleNamespace(logprob=-1.0)}],
                                                                 finish_reason="stop", stop_reason=None))
                        else:
                            choices.append(types.SimpleNamespace(token_ids=toks, logprobs=lp, finish_reason="length", stop_reason=None))
                    outs.append(types.SimpleNamespace(outputs=choices))
                return outs

            def apply_model(self, fn):
                self.loaded = fn(types.SimpleNamespace(load_weights=lambda weights: [n for n, _ in weights]))

        self.SamplingParams = SamplingParams
        self.LLM = LLM


def test_vllm_translation_with_fake_module(tok, model, monkeypatch):
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    from etagent.backends.vllm import VLLMBackend

    be = VLLMBackend(model="/ckpt", tokenizer=tok, gpu_memory_utilization=0.3, max_model_len=2048, seed=1)
    eos = tok.eos_token_id
    assert eos == 0  # the fake emits id 0 as eos
    # continuation states are ignored (vLLM has its own prefix caching): no state comes back
    out = be.generate([[7, 8], [9]], SamplingParams(n=3, temperature=0.7, max_new_tokens=11, seed=4, stop=GRAMMAR.stop_strings),
                      states=["s", None])
    assert all(c.state is None for comps in out for c in comps)
    prompts, kw = fake.calls[0]
    assert prompts == [{"prompt_token_ids": [7, 8]}, {"prompt_token_ids": [9]}]
    assert kw["stop"] == list(GRAMMAR.stop_strings) and kw["include_stop_str_in_output"] is True
    assert kw["logprobs"] == 1 and kw["n"] == 3 and kw["max_tokens"] == 11 and kw["seed"] == 4
    assert kw["skip_special_tokens"] is False
    assert kw["top_k"] == -1 and kw["repetition_penalty"] == 1.0  # off: vLLM's own "off" values
    be.generate([[7]], SamplingParams(n=1, top_k=20, repetition_penalty=1.1))
    assert fake.calls[-1][1]["top_k"] == 20 and fake.calls[-1][1]["repetition_penalty"] == 1.1
    assert fake.engine_kwargs["model"] == "/ckpt" and fake.engine_kwargs["gpu_memory_utilization"] == 0.3
    a, b, c = out[0]
    assert (a.ids, a.finish_reason, a.stop, a.logprobs) == ([8, 5], "stop", "</python>", [-0.5, -1.0])
    assert (b.ids, b.finish_reason, b.logprobs) == ([9, 5], "eos", [-0.5, -1.0])  # eos id dropped
    assert (c.finish_reason, c.stop) == ("length", None)
    be.sync_weights(model)
    assert be.llm.loaded == [n for n, _ in model.named_parameters()]
    be.sync_weights("/new_ckpt")  # a path reloads the engine lazily
    be.generate([[1]], SamplingParams(n=1))
    assert fake.engine_kwargs["model"] == "/new_ckpt"


# ----------------------------------------------------------------------------- openai (fake server)


class _FakeServer:
    """/v1/completions returning deterministic completions; counts concurrency; can fail first requests."""

    def __init__(self, return_ids: bool = True, fail_first: int = 0, delay_s: float = 0.0, trim_stop: bool = False):
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_left = fail_first
        lock = threading.Lock()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    srv.bodies.append(body)
                    srv.in_flight += 1
                    srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
                    fail = srv.fail_left > 0
                    srv.fail_left -= 1 if fail else 0
                try:
                    time.sleep(delay_s)
                    if self.path != "/v1/completions":
                        return self._send(404, {"error": "not found"})
                    if fail:
                        return self._send(503, {"error": "overloaded"})
                    prompt = body["prompt"]
                    last = prompt[-1] if isinstance(prompt, list) else len(prompt)
                    choices = []
                    for j in range(body["n"]):
                        if j % 2 == 0:
                            text = "x</python>" if not trim_stop else "x"
                            ch = {"index": j, "text": text, "finish_reason": "stop", "stop_reason": "</python>",
                                  "logprobs": {"token_logprobs": [-0.25, -0.5]}}
                            ids = [last + j, 1]
                        else:
                            ch = {"index": j, "text": "yy", "finish_reason": "length", "stop_reason": None,
                                  "logprobs": {"token_logprobs": [-1.0, -2.0]}}
                            ids = [last + j, 2]
                        if return_ids:
                            ch["token_ids"] = ids
                        choices.append(ch)
                    self._send(200, {"id": "cmpl", "object": "text_completion", "choices": choices})
                finally:
                    with lock:
                        srv.in_flight -= 1

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def test_openai_token_ids_concurrency_and_retries(tok, monkeypatch):
    from etagent.backends.openai import OpenAIBackend

    monkeypatch.setenv("ETAGENT_TEST_KEY", "sk-test")
    with _FakeServer(return_ids=True, fail_first=2, delay_s=0.05) as srv:
        be = OpenAIBackend(base_url=srv.url, api_key_env="ETAGENT_TEST_KEY", model="policy", tokenizer=tok,
                           max_concurrency=2, timeout_s=10, max_retries=3, backoff_s=0.01)
        prefixes = [[10 + i, 20 + i] for i in range(6)]
        out = be.generate(prefixes, SamplingParams(n=2, max_new_tokens=9, seed=5, temperature=0.6, stop=GRAMMAR.stop_strings),
                          states=[None] * 6)
    assert all(c.state is None for comps in out for c in comps)  # a server keeps its own prefix cache
    assert srv.max_in_flight <= 2 and be.stats["retries"] == 2
    body = srv.bodies[-1]
    assert body["prompt"] in [list(p) for p in prefixes] and body["n"] == 2 and body["max_tokens"] == 9
    assert body["stop"] == list(GRAMMAR.stop_strings) and body["logprobs"] == 1 and body["include_stop_str_in_output"]
    assert sorted(b["seed"] for b in srv.bodies[-6:]) == [5 + i for i in range(6)]
    assert "top_k" not in body and "repetition_penalty" not in body  # off: a plain server never sees them
    for p, comps in zip(prefixes, out):
        a, b = comps
        assert (a.ids, a.finish_reason, a.stop, a.logprobs) == ([p[-1], 1], "stop", "</python>", [-0.25, -0.5])
        assert (b.ids, b.finish_reason, b.stop) == ([p[-1] + 1, 2], "length", None)


def test_openai_sends_the_released_sampling_as_vllm_extra_fields(tok):
    from etagent.backends.openai import OpenAIBackend

    with _FakeServer() as srv:
        be = OpenAIBackend(base_url=srv.url, api_key_env="", tokenizer=tok, max_retries=0)
        be.generate([[5, 6]], SamplingParams(n=2, temperature=0.6, top_p=0.95, top_k=20, repetition_penalty=1.1))
    body = srv.bodies[0]
    assert (body["temperature"], body["top_p"], body["top_k"], body["repetition_penalty"]) == (0.6, 0.95, 20, 1.1)


def test_openai_text_fallback_retokenises_and_restores_trimmed_stop(tok):
    from etagent.backends.openai import OpenAIBackend

    with _FakeServer(return_ids=False, trim_stop=True) as srv:
        be = OpenAIBackend(base_url=srv.url, api_key_env="", tokenizer=tok, prompt_format="text", max_retries=0)
        out = be.generate([[5, 6, 7]], SamplingParams(n=2, max_new_tokens=4, stop=GRAMMAR.stop_strings))
    assert srv.bodies[0]["prompt"] == tok.decode([5, 6, 7], skip_special_tokens=False)
    a, b = out[0]
    assert a.finish_reason == "stop" and tok.decode(a.ids, skip_special_tokens=False) == "x</python>"
    assert a.logprobs is None  # re-tokenised ids no longer line up with the server's log-probs
    assert b.ids == tok.encode("yy", add_special_tokens=False) and b.finish_reason == "length"


def test_openai_gives_up_with_a_clear_error():
    from etagent.backends.openai import OpenAIBackend

    with _FakeServer(fail_first=100) as srv:
        be = OpenAIBackend(base_url=srv.url, api_key_env="", max_retries=1, backoff_s=0.01)
        with pytest.raises(RuntimeError, match="failed after 2 attempts"):
            be.generate([[1, 2]], SamplingParams())
    be = OpenAIBackend(base_url="http://127.0.0.1:9/v1", api_key_env="", max_retries=0, timeout_s=1)
    with pytest.raises(RuntimeError, match="failed after 1 attempts"):
        be.generate([[1, 2]], SamplingParams())


def test_backend_configs_instantiate(tok, model):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from etagent.backends.openai import OpenAIBackend
    from etagent.backends.vllm import VLLMBackend

    def load(name):
        return OmegaConf.create({"seed": 2, "backend": OmegaConf.load(f"conf/backend/{name}.yaml")}).backend

    hf = instantiate(load("hf"), model=model, tokenizer=tok)
    assert isinstance(hf, HFBackend) and hf.batch_size == 64 and hf.model is model
    oa = instantiate(load("openai"), tokenizer=tok)
    assert isinstance(oa, OpenAIBackend) and oa.max_concurrency == 32
    vl = instantiate(load("vllm"), model="/ckpt", tokenizer=tok)  # vllm itself is imported lazily
    assert isinstance(vl, VLLMBackend) and vl.engine_kwargs["seed"] == 2 and vl._llm is None
