"""etagent's reward through verl 0.9.1's own reward loading and advantage code.

Per sample: verl's RewardLoopWorker loads ``etagent/export/verl_reward.py:compute_score``
from ``reward.custom_reward_function`` (``get_custom_reward_fn``) into its ``naive`` manager
and scores each rollout as the agent loop hands it over (ids, ``tool_extra_fields``).
Groups: verl's ``compute_advantage`` with ``algorithm.adv_estimator=etagent`` (registered by
the plugin that ``import verl`` loads from etagent's ``verl.plugins`` entry point) shapes
the per-sample reward keys within each ``uid`` group. Both must equal etagent's RewardFn
on the same responses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.trainer.ppo import core_algos, ray_trainer
from verl_pkg_support import verl_config

import etagent.export.verl_reward as verl_reward
from etagent.export.verl import DATA_SOURCES
from etagent.models.prompting import build_prompt_ids
from etagent.models.tokenizer import build_tokenizer
from etagent.records import Example
from etagent.rl.reward import RewardFn, reward_components, score_components
from run_env import ENV, GRAMMAR

REWARD_PY = Path(verl_reward.__file__)
MATH = Example(id="m1", question="What is 6*7?", answers=["42"], domain="math", source="t")
QA = Example(id="q1", question="Who wrote Dune?", answers=["Frank Herbert"], domain="qa", source="t")
PY = "<python>print(6*7)</python>" + GRAMMAR.format_result("42")
SE = "<search>Dune author</search>" + GRAMMAR.format_result("Dune was written by Frank Herbert.")
GROUPS = [  # four rollouts per question: calls, lengths, correctness and format differ
    (MATH, [
        f"<think>multiply</think>{PY}<answer>The answer is \\boxed{{42}}</answer>",
        f"<think>multiply six by seven carefully</think>{PY}{PY}<answer>\\boxed{{42}}</answer>",
        "<think>guess</think><answer>\\boxed{41}</answer>",
        "The answer is \\boxed{42} <code>x</code>",
    ]),
    (QA, [
        f"<think>look it up</think>{SE}<answer>\\boxed{{Frank Herbert}}</answer>",
        f"<think>look it up twice</think>{SE}{SE}<answer>\\boxed{{Herbert}}</answer>",
        "<think>from memory</think><answer>\\boxed{Frank Herbert}</answer>",
        f"<think>search</think>{SE}<answer>\\boxed{{Isaac Asimov}}</answer>",
    ]),
]
SIGMA_TOOL, SIGMA_LEN = 0.3, 0.5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verl_reward")
    texts = [r for _, rs in GROUPS for r in rs] + [MATH.question, QA.question]
    tok = build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=texts * 10, vocab_size=300)
    tok.save_pretrained(tmp / "tok")
    cfg = verl_config([
        f"actor_rollout_ref.model.path={tmp / 'tok'}", "actor_rollout_ref.rollout.name=vllm",
        f"reward.custom_reward_function.path={REWARD_PY}", "reward.custom_reward_function.name=compute_score",
        "reward.reward_manager.name=naive", "algorithm.adv_estimator=etagent",
        f"+algorithm.etagent.sigma_tool={SIGMA_TOOL}", f"+algorithm.etagent.sigma_len={SIGMA_LEN}",
    ])
    return tok, cfg


def _sample(tok, ex: Example, text: str, index: int) -> DataProto:
    """One rollout as verl's agent loop hands it to the reward loop."""
    prompt = build_prompt_ids(tok, ex.question, None)
    ids, mask = GRAMMAR.encode_response(tok, text)
    seq = torch.tensor([prompt + ids])
    batch = TensorDict({
        "prompts": torch.tensor([prompt]), "responses": torch.tensor([ids]), "input_ids": seq,
        "attention_mask": torch.ones_like(seq), "position_ids": torch.arange(seq.shape[1])[None],
        "response_mask": torch.tensor([mask]),
    }, batch_size=1)
    info = {"index": index, "question": ex.question, "split": "train", "need_tools_kwargs": True}
    extra = {"turn_scores": [], "tool_rewards": [], "model_tokens": sum(mask)}
    non_tensor = {
        "data_source": np.array([DATA_SOURCES[ex.domain]], dtype=object),
        "reward_model": np.array([{"ground_truth": np.array(ex.answers), "style": "rule"}], dtype=object),
        "extra_info": np.array([info], dtype=object),
        "tool_extra_fields": np.array([extra], dtype=object),
        "__num_turns__": np.array([3]),
    }
    return DataProto(batch=batch, non_tensor_batch=non_tensor)


def _expected(tok, ex: Example, texts: list[str], mode: str, sigma_tool=0.0, sigma_len=0.0) -> list[float]:
    """etagent's RewardFn on one group (exact model-token lengths, as the agent loop reports)."""
    comps = [score_components(t, ex, model_tokens=sum(GRAMMAR.encode_response(tok, t)[1]), **ENV) for t in texts]
    t = reward_components([[c["correctness"] for c in comps]], [[c["n_calls"] for c in comps]],
                          [[c["length"] for c in comps]], [[float(c["format_ok"]) for c in comps]],
                          dtype=torch.float64)
    fn = RewardFn(grammar=GRAMMAR, mode=mode, sigma_tool=sigma_tool, sigma_len=sigma_len, schedule="constant")
    return fn.shape(t, *fn.sigmas(0, 1))[0].tolist()


def test_reward_loop_scores_each_sample_like_etagent(env):
    tok, cfg = env
    worker = RewardLoopWorker(cfg)  # loads verl_reward.py through get_custom_reward_fn
    assert type(worker.reward_manager).__name__ == "NaiveRewardManager"
    for k, (ex, texts) in enumerate(GROUPS):
        outs = [worker.loop.run_until_complete(worker.compute_score(_sample(tok, ex, t, k))) for t in texts]
        want = _expected(tok, ex, texts, mode="correctness")  # a lone sample has no group shaping
        assert [o["reward_score"] for o in outs] == pytest.approx(want)
        for o, t in zip(outs, texts):
            info = o["reward_extra_info"]
            c = score_components(t, ex, **ENV)
            assert info["correctness"] == c["correctness"] and info["acc"] == c["correctness"]
            assert info["n_calls"] == c["n_calls"] and info["format_ok"] == float(c["format_ok"])
            assert info["model_tokens"] == sum(GRAMMAR.encode_response(tok, t)[1])  # the loop's exact count


def test_etagent_estimator_shapes_groups_like_reward_fn(env):
    tok, cfg = env
    assert "etagent" in core_algos.ADV_ESTIMATOR_REGISTRY  # loaded by `import verl` (entry point)
    worker = RewardLoopWorker(cfg)
    samples, infos, uids, want = [], [], [], []
    for k, (ex, texts) in enumerate(GROUPS):
        for t in texts:
            s = _sample(tok, ex, t, k)
            infos.append(worker.loop.run_until_complete(worker.compute_score(s))["reward_extra_info"])
            samples.append(s)
            uids.append(f"uid-{k}")
        want += _expected(tok, ex, texts, mode="efficiency", sigma_tool=SIGMA_TOOL, sigma_len=SIGMA_LEN)
    # the batch as verl's trainer has it before compute_advantage (responses right-padded)
    width = max(s.batch["responses"].shape[1] for s in samples)
    plen = max(s.batch["prompts"].shape[1] for s in samples)
    resp = torch.zeros(len(samples), width, dtype=torch.long)
    rmask = torch.zeros_like(resp)
    attn = torch.zeros(len(samples), plen + width, dtype=torch.long)
    scores = torch.zeros(len(samples), width)
    for i, (s, info) in enumerate(zip(samples, infos)):
        n = s.batch["responses"].shape[1]
        resp[i, :n], rmask[i, :n] = s.batch["responses"][0], s.batch["response_mask"][0]
        attn[i, plen - s.batch["prompts"].shape[1]: plen + n] = 1
        scores[i, n - 1] = info["score"]
    batch = DataProto(
        batch=TensorDict({"prompts": torch.zeros(len(samples), plen, dtype=torch.long), "responses": resp,
                          "response_mask": rmask, "attention_mask": attn, "token_level_rewards": scores},
                         batch_size=len(samples)),
        non_tensor_batch={"uid": np.array(uids, dtype=object),
                          **{k: np.array([info[k] for info in infos]) for k in infos[0]}},
    )
    from etagent.export.verl_plugin import shaped_scores

    assert shaped_scores(batch.non_tensor_batch, batch.non_tensor_batch["uid"], cfg.algorithm) == pytest.approx(want)
    out = ray_trainer.compute_advantage(batch, adv_estimator=cfg.algorithm.adv_estimator, num_repeat=4,
                                        norm_adv_by_std_in_grpo=True, config=cfg.algorithm)
    # verl's GRPO normalisation of the shaped scores, broadcast over the model tokens
    for g in range(len(GROUPS)):
        s = torch.tensor(want[4 * g: 4 * g + 4])
        adv = (s - s.mean()) / (s.std() + 1e-6)
        for j in range(4):
            i = 4 * g + j
            got = out.batch["advantages"][i]
            assert torch.allclose(got, adv[j].float() * rmask[i].float(), atol=1e-5)
    # the shaping is doing something here: shaped scores differ from the per-sample ones
    assert [info["score"] for info in infos] != pytest.approx(want)


def test_estimator_without_reward_keys_says_why(env):
    _, cfg = env
    fn = core_algos.get_adv_estimator_fn("etagent")
    with pytest.raises(ValueError, match="per-sample reward keys"):
        fn(token_level_rewards=torch.zeros(2, 3), response_mask=torch.ones(2, 3), index=np.array(["a", "a"]),
           config=cfg.algorithm)
    with pytest.raises(ValueError, match=r"reward key\(s\) \['correctness'"):
        fn(token_level_rewards=torch.zeros(2, 3), response_mask=torch.ones(2, 3), index=np.array(["a", "a"]),
           config=cfg.algorithm, non_tensor_batch={"uid": np.array(["a", "a"])}, batch={})
