"""KV reuse across tool turns (hf backend): same greedy rollouts with and without it, stale states fall back.

The tiny Qwen2 is randomly initialised (weights N(0, 0.2) so greedy decoding does not loop
on one token) and a bigram bias on its logits (a forward hook: some last input ids push
``<python>`` / ``</python>`` / ``</answer>``) makes it call tools several times per row, as
a trained seed agent would. The bias depends on the input ids only, so it is the same with
and without reuse; everything else is the transformer's own logits.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

from etagent.backends.base import STOP, SamplingParams
from etagent.backends.hf import HFBackend, KVState
from etagent.models.factory import ModelSpec, build_scratch_model
from etagent.models.prompting import build_prompt_ids
from etagent.models.tokenizer import build_tokenizer
from etagent.records import Example
from etagent.rollout.branching import EntropyBrancher
from etagent.rollout.engine import RolloutEngine
from etagent.tools.base import ToolResult, ToolSet
from etagent.tools.python_sandbox import PythonSandbox
from run_env import GRADER, GRAMMAR

TEXTS = ["What is 6*7? <think>multiply</think><python>print(6*7)</python><result>\n42\n</result>"
         "<answer>The answer is \\boxed{42}</answer>"] * 40
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=TEXTS, vocab_size=300)


def _biased_model(tok, seed: int = 0):
    model = build_scratch_model(ModelSpec(), len(tok), tok.eos_token_id, tok.pad_token_id, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2, generator=g)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<python>", "</python>", "</answer>")}

    def bias(mod, args, kw, out):  # bigram bias: a function of the last input id only
        last = kw["input_ids"][:, -1]
        logits = out.logits[:, -1]
        logits[:, ids["<python>"]] += 30.0 * (last % 11 == 5)
        logits[:, ids["</python>"]] += 30.0 * ((last % 5 == 3) & (last != ids["<python>"]))
        logits[:, ids["</answer>"]] += 30.0 * (last % 13 == 1)

    model.register_forward_hook(bias, with_kwargs=True)
    return model


@pytest.fixture(scope="module")
def model(tok):
    return _biased_model(tok)


class Echo:
    spec = PythonSandbox.spec
    name = "python"

    def run_batch(self, queries):  # results of different lengths
        return [ToolResult("ok", "x" * (len(q) % 9), 0.0) for q in queries]

    def close(self):
        pass


EXAMPLES = [Example(id=f"q{i}", question="What is " + "6*7 " * (i % 4 + 1) + "plus " * (i // 4) + "?",
                    answers=["42"], domain="math", source="t") for i in range(6)]


def _rollout(model, tok, reuse: bool, cache_impl: str, batch_size: int = 8, max_mb: float = 1024, **engine_kw):
    n = engine_kw.pop("n", 2)
    be = HFBackend(model, tok, batch_size=batch_size, cache_impl=cache_impl, kv_reuse=reuse, kv_reuse_max_mb=max_mb)
    tools = ToolSet({"python": Echo()})
    eng = RolloutEngine(be, tools, GRADER, tools.grammar, system_prompt=None, max_response_tokens=160, max_turn_tokens=40,
                        **engine_kw)
    trajs = eng.rollout(EXAMPLES, n, GREEDY)
    return trajs, be


def _same(a, b):
    assert [t.id for t in a] == [t.id for t in b]
    for x, y in zip(a, b):
        assert x.response_ids == y.response_ids and x.response_mask == y.response_mask
        assert x.finish_reason == y.finish_reason
        assert [(c.kind, c.query, c.status, c.result) for c in x.tool_calls] == \
               [(c.kind, c.query, c.status, c.result) for c in y.tool_calls]
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4)


@pytest.mark.parametrize("cache_impl", ["static", "dynamic"])
def test_greedy_rollouts_identical_with_and_without_reuse(tok, model, cache_impl):
    # batch 8 < 12 rows: several chunks per call
    ref, be_ref = _rollout(model, tok, False, cache_impl)
    got, be = _rollout(model, tok, True, cache_impl)
    _same(ref, got)
    calls = [len(t.tool_calls) for t in got]
    assert sum(c >= 2 for c in calls) >= 6 and len({len(t.response_ids) for t in got}) >= 3  # multi-call, mixed lengths
    assert len(set(Counter(t.finish_reason for t in got))) >= 2
    # reuse really happened and cut the prefill; without it every turn re-read the whole prefix
    assert be_ref.stats["reused_tokens"] == 0 and be.stats["reused_tokens"] > 0
    assert be.stats["prefill_tokens"] + be.stats["reused_tokens"] == be_ref.stats["prefill_tokens"]
    assert be.stats["prefill_tokens"] < 0.5 * be_ref.stats["prefill_tokens"]


def test_memory_cap_mixes_rows_with_and_without_state(tok, model):
    ref, _ = _rollout(model, tok, False, "static")
    got, be = _rollout(model, tok, True, "static", max_mb=1.0)  # ~1 MB: a couple of rows keep a state per call
    _same(ref, got)
    full, be_full = _rollout(model, tok, True, "static")
    assert 0 < be.stats["reused_tokens"] < be_full.stats["reused_tokens"]
    none, be0 = _rollout(model, tok, True, "dynamic", max_mb=0)
    _same(ref, none)
    assert be0.stats["reused_tokens"] == 0 and not be0._kv_store


def test_branching_forks_with_reuse(tok, model):
    def run(reuse):
        brancher = EntropyBrancher(initial_rollouts=1, beam=2, branch_prob=1.0, entropy_weight=0.0, seed=0)
        return _rollout(model, tok, reuse, "static", strategy="branching", branching=brancher, n=3)

    ref, _ = run(False)
    got, be = run(True)
    forks = [t for t in got if "parent" in t.meta]
    assert forks and be.stats["reused_tokens"] > 0
    _same(ref, got)


def _turn(be, prefixes, states=None):
    return [o[0] for o in be.generate(prefixes, SamplingParams(temperature=0.0, max_new_tokens=40, stop=GRAMMAR.stop_strings),
                                      states)]


def test_stale_or_foreign_states_fall_back_to_a_full_prefill(tok, model):
    be = HFBackend(model, tok, batch_size=4)
    prompts = [build_prompt_ids(tok, q.question) for q in EXAMPLES[:3]]
    first = _turn(be, prompts, [None] * 3)
    assert all(c.finish_reason == STOP for c in first)
    assert all(isinstance(c.state, KVState) and c.state.length == len(p) + len(c.ids) - 1 for p, c in zip(prompts, first))
    result = tok.encode("<result>\nok\n</result>", add_special_tokens=False)
    nxt = [p + c.ids + result for p, c in zip(prompts, first)]
    fresh = HFBackend(model, tok, batch_size=4)
    want = _turn(fresh, nxt)  # a full prefill on a backend that never saw these rows

    def check(got, reused):
        assert [c.ids for c in got] == [c.ids for c in want] and [c.finish_reason for c in got] == [c.finish_reason for c in want]
        for c, w in zip(got, want):
            assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(w.logprobs), atol=1e-4)
        assert be.stats["reused_tokens"] - before == reused

    # a prefix that no longer starts with the stored ids (a fork that took another path): full prefill
    states = [c.state for c in first]
    bad = [list(x) for x in nxt]
    bad[1][len(prompts[1])] = (bad[1][len(prompts[1])] + 1) % len(tok)
    before = be.stats["reused_tokens"]
    want_bad = _turn(fresh, bad)
    got = _turn(be, bad, states)
    assert [c.ids for c in got] == [c.ids for c in want_bad]
    assert be.stats["reused_tokens"] - before == states[0].length + states[2].length
    # those states were consumed by that call: passing them again (stale) reuses nothing, same output
    before = be.stats["reused_tokens"]
    check(_turn(be, nxt, states), 0)
    # a state of another backend, or a non-state, is ignored
    other = HFBackend(model, tok, batch_size=4)
    other_states = [c.state for c in _turn(other, prompts, [None] * 3)]
    before = be.stats["reused_tokens"]
    check(_turn(be, nxt, [other_states[0], "junk", None]), 0)
    # a state made under other weights (an in-place update in between): full prefill on the new weights
    m2 = copy.deepcopy(model)
    be2 = HFBackend(m2, tok, batch_size=4)
    st = [c.state for c in _turn(be2, prompts, [None] * 3)]
    with torch.no_grad():
        for p in m2.parameters():
            p.mul_(1.01)
    want2 = _turn(HFBackend(m2, tok), nxt)
    got2 = _turn(be2, nxt, st)
    assert be2.stats["reused_tokens"] == 0 and [c.ids for c in got2] == [c.ids for c in want2]
    # states=None (a caller that does not continue) keeps nothing
    assert all(c.state is None for c in _turn(be, prompts)) and not be._kv_store


def test_options_and_config(tok, model):
    from hydra.utils import instantiate

    with pytest.raises(ValueError, match="kv_reuse_max_mb"):
        HFBackend(model, tok, kv_reuse_max_mb=-1)
    with pytest.raises(ValueError, match="2 states for 1 prefixes"):
        HFBackend(model, tok).generate([[1, 2]], GREEDY, [None, None])
    off = HFBackend(model, tok, kv_reuse=False)
    assert all(c.state is None for c in _turn(off, [build_prompt_ids(tok, "What is 6*7?")], [None]))
    cfg = OmegaConf.load("conf/backend/hf.yaml")
    be = instantiate(cfg, model=model, tokenizer=tok)
    assert be.kv_reuse is bool(cfg.kv_reuse) and be.kv_max_bytes == int(cfg.kv_reuse_max_mb * 2**20)
    be = instantiate(cfg, model=model, tokenizer=tok, kv_reuse=False, kv_reuse_max_mb=3)
    assert be.kv_reuse is False and be.kv_max_bytes == 3 * 2**20
