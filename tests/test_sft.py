"""SFT trainer: masking, bucketing, loss falls, LoRA merge, checkpoint/resume, time budget, config."""

from __future__ import annotations

import json
import logging
import random
from types import SimpleNamespace

import pytest
import torch

from etagent import protocol
from etagent.models.factory import ModelSpec, build_scratch_model, load_policy
from etagent.models.prompting import build_prompt_ids
from etagent.models.tokenizer import IM_END, build_tokenizer
from etagent.records import Trajectory
from etagent.train import SFTConfig, TrainSequence, from_text, from_trajectory, train_sft, truncate
from etagent.train.batching import collate, epoch_plan
from etagent.train.checkpoint import list_checkpoints
from etagent.report.report import truncation_warning
from etagent.train.summary import sft_budget_summary
from etagent.train.sft import LoraSettings, batch_nll_sum, masked_nll_sum, prepare_sequences
from run_env import GRAMMAR

ARCH = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128)


def _example(a: int, b: int) -> tuple[str, str]:
    q = f"What is {a}*{b}?"
    r = (f"<think>Use the tool.</think><python>print({a}*{b})</python>"
         + GRAMMAR.format_result(str(a * b)) + protocol.format_answer(str(a * b)))
    return q, r


PAIRS = [_example(a, b) for a, b in [(123, 45), (67, 890), (12, 34), (999, 9), (5, 6), (81, 7)]]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=[t for p in PAIRS for t in p] * 10, vocab_size=400)


@pytest.fixture(scope="module")
def sequences(tokenizer):
    return [from_text(tokenizer, build_prompt_ids(tokenizer, q), r, meta={"id": f"s{i}"}, grammar=GRAMMAR) for i, (q, r) in enumerate(PAIRS)]


def _model(tokenizer, seed: int = 0):
    return build_scratch_model(ModelSpec(arch=ARCH), len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, seed=seed)


class Recorder:
    """Tracker stand-in that keeps every row and can simulate a crash at one step."""

    def __init__(self, crash_at: int | None = None):
        self.rows: list[dict] = []
        self.crash_at = crash_at

    def log(self, metrics, step=None, stage="main"):
        if step == self.crash_at:
            raise Crash(step)
        self.rows.append({"step": step, "stage": stage, **metrics})

    def summary(self, values):
        pass


class Crash(Exception):
    pass


def _cfg(**kw) -> SFTConfig:
    base = dict(lr=3e-3, batch_size=4, warmup_steps=3, log_every=1, progress=False, checkpoint_every=0, seed=0)
    base.update(kw)
    return SFTConfig(**base)


# --------------------------------------------------------------------------- sequences


def test_from_text_masks_prompt_and_results_and_trains_the_end_token(tokenizer, sequences):
    q, r = PAIRS[0]
    seq = sequences[0]
    prompt = build_prompt_ids(tokenizer, q)
    assert seq.ids[: len(prompt)] == prompt and set(seq.mask[: len(prompt)]) == {0}
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert seq.ids[-1] == im_end and seq.mask[-1] == 1  # the model learns to stop after </answer>
    resp_ids, resp_mask = seq.ids[len(prompt):], seq.mask[len(prompt):]
    assert tokenizer.decode(resp_ids, skip_special_tokens=False) == r + IM_END
    trained = tokenizer.decode([i for i, m in zip(resp_ids, resp_mask) if m], skip_special_tokens=False)
    masked = tokenizer.decode([i for i, m in zip(resp_ids, resp_mask) if not m], skip_special_tokens=False)
    assert masked == GRAMMAR.format_result(str(123 * 45))  # exactly the injected block, tags included
    assert "<result>" not in trained and trained.endswith("</answer>" + IM_END)
    # no end token when the response was cut before its answer
    cut = from_text(tokenizer, prompt, "<python>print(1)</python>", grammar=GRAMMAR)
    assert cut.ids[-1] != im_end and len(cut) == len(prompt) + len(tokenizer.encode("<python>print(1)</python>", add_special_tokens=False))


def test_from_trajectory_keeps_sampled_ids(tokenizer):
    prompt = build_prompt_ids(tokenizer, PAIRS[1][0])
    ids, mask = GRAMMAR.encode_response(tokenizer, PAIRS[1][1])
    traj = Trajectory(id="t1", example_id="e1", group_id="e1", response_text=PAIRS[1][1],
                      prompt_ids=prompt, response_ids=ids, response_mask=mask)
    seq = from_trajectory(traj)
    assert seq.ids == prompt + ids and seq.mask == [0] * len(prompt) + mask and seq.meta["id"] == "t1"
    end = tokenizer.convert_tokens_to_ids(IM_END)
    with_end = from_trajectory(traj, end_id=end)
    assert with_end.ids == prompt + ids + [end] and with_end.mask[-1] == 1
    bad = Trajectory(id="t2", example_id="e1", group_id="e1", response_text="x", prompt_ids=prompt, response_ids=[1, 2], response_mask=[1])
    with pytest.raises(ValueError, match="t2"):
        from_trajectory(bad)


def test_truncation_keeps_start_and_trainer_drops_empty_sequences(sequences):
    seq = sequences[0]
    short = truncate(seq, 10)
    assert short.ids == seq.ids[:10] and short.mask == seq.mask[:10] and short.meta["truncated_from"] == len(seq)
    assert truncate(seq, None) is seq
    kept, dropped = prepare_sequences(sequences, max_len=10, vocab_size=10_000)  # 10 tokens = prompt only
    assert kept == [] and dropped == len(sequences)
    with pytest.raises(ValueError, match="vocabulary"):
        prepare_sequences(sequences, max_len=1000, vocab_size=5)
    with pytest.raises(ValueError, match="mask"):
        TrainSequence([1, 2], [1])


def test_epoch_plan_is_a_seeded_bucketed_permutation():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(61)]
    plan = epoch_plan(lengths, batch_size=8, seed=3, epoch=0, bucket_batches=100)
    assert sorted(i for b in plan for i in b) == list(range(61))  # every index once, nothing dropped
    assert plan == epoch_plan(lengths, 8, 3, 0, 100)
    assert plan != epoch_plan(lengths, 8, 3, 1, 100) and plan != epoch_plan(lengths, 8, 4, 0, 100)
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in plan)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # one window: batches never interleave lengths
    flat = epoch_plan(lengths, 8, 3, 0, bucket_batches=1)
    assert sorted(i for b in flat for i in b) == list(range(61))


# --------------------------------------------------------------------------- loss and masking


def test_masked_labels_do_not_change_loss_and_get_zero_gradient(tokenizer, sequences):
    torch.manual_seed(0)
    model = _model(tokenizer)
    batch = collate([sequences[0], sequences[3]], [0, 3], tokenizer.pad_token_id)
    assert batch.input_ids.shape[1] == max(len(sequences[0]), len(sequences[3]))
    captured = {}

    def hook(_module, _inputs, output):
        output.last_hidden_state.register_hook(lambda g: captured.__setitem__("grad", g))

    handle = model.model.register_forward_hook(hook)
    loss = batch_nll_sum(model, batch, bf16=False)
    loss.backward()
    handle.remove()
    grad = captured["grad"]  # d loss / d final hidden states, [B, T, H] (the head runs on trained rows only)
    with torch.no_grad():  # same loss as the full-logits computation
        full = masked_nll_sum(model(input_ids=batch.input_ids).logits, batch.input_ids, batch.loss_mask)
    assert torch.allclose(loss.detach(), full, rtol=1e-5)
    predicts_trained = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    predicts_trained[:, :-1] = batch.loss_mask[:, 1:].bool()  # logits[t] predict ids[t+1]
    assert torch.all(grad[~predicts_trained] == 0)  # prompt, tool results, pads, last position: exactly zero
    assert torch.all(grad[predicts_trained].abs().sum(-1) > 0)

    # Altering masked labels (same logits) leaves the loss bit-identical; altering a trained one does not.
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids).logits
    ids, mask = batch.input_ids, batch.loss_mask
    base = masked_nll_sum(logits, ids, mask)
    altered = ids.clone()
    altered[mask == 0] = (altered[mask == 0] + 7) % len(tokenizer)
    assert torch.equal(masked_nll_sum(logits, altered, mask), base)
    pos = int(mask[0].nonzero()[0])
    altered = ids.clone()
    altered[0, pos] = (altered[0, pos] + 1) % len(tokenizer)
    assert not torch.equal(masked_nll_sum(logits, altered, mask), base)
    assert int(mask[:, 1:].sum()) == batch.n_loss_tokens == sequences[0].n_loss_tokens + sequences[3].n_loss_tokens

    # Right padding changes nothing: the batch loss is the sum of the per-sequence losses.
    with torch.no_grad():
        alone = sum(batch_nll_sum(model, collate([sequences[i]], [i], tokenizer.pad_token_id), False) for i in (0, 3))
        together = batch_nll_sum(model, batch, False)
    assert torch.allclose(alone, together, rtol=1e-5)


def test_sft_loss_falls(tokenizer, sequences, tmp_path):
    torch.manual_seed(0)
    rec = Recorder()
    model = train_sft(_model(tokenizer), tokenizer, sequences * 4, _cfg(max_steps=30), tmp_path, tracker=rec, stage="seed")
    losses = [r["loss"] for r in rec.rows]
    assert [r["step"] for r in rec.rows] == list(range(1, 31)) and {r["stage"] for r in rec.rows} == {"seed"}
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    lrs = [r["lr"] for r in rec.rows]
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(3e-3) and lrs[-1] < lrs[10]  # warm-up then cosine
    summary = json.loads((tmp_path / "final" / "sft_summary.json").read_text())
    assert summary["steps"] == 30 and summary["stopped"] == "completed"
    loaded, tok = load_policy(tmp_path / "final", device="cpu", dtype="float32")
    ids = torch.tensor([sequences[0].ids])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert tok.get_vocab() == tokenizer.get_vocab()


def test_lora_trains_only_adapters_and_merges(tokenizer, sequences, tmp_path):
    base = _model(tokenizer)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    lora = LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = train_sft(base, tokenizer, sequences * 2, _cfg(max_steps=8, lr=1e-2, lora=lora), tmp_path)
    assert type(model).__name__ == "Qwen2ForCausalLM"  # merged and unwrapped: no peft left
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        if ".q_proj.weight" in k or ".v_proj.weight" in k:
            assert not torch.equal(after[k], v), k  # merged adapters moved the targets
        else:
            assert torch.equal(after[k], v), k  # everything else untouched
    summary = json.loads((tmp_path / "final" / "sft_summary.json").read_text())
    assert summary["trainable_params"] == ARCH["num_hidden_layers"] * 2 * 4 * (64 + 64)  # A and B of q and v
    assert not (tmp_path / "final" / "adapter_config.json").exists()
    loaded, _ = load_policy(tmp_path / "final", device="cpu", dtype="float32")
    ids = torch.tensor([sequences[1].ids])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("use_lora", [False, True])
def test_resume_matches_an_uninterrupted_run(tokenizer, sequences, tmp_path, use_lora):
    lora = LoraSettings(enabled=use_lora, r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"])
    # 12 sequences, micro-batch 4, accumulation 2: steps cross epoch boundaries mid-step.
    cfg = _cfg(max_steps=20, grad_accum=2, checkpoint_every=5, keep_checkpoints=2, lora=lora)
    data = sequences * 2

    full = Recorder()
    ref = train_sft(_model(tokenizer), tokenizer, data, cfg, tmp_path / "a", tracker=full)

    crashing = Recorder(crash_at=12)
    with pytest.raises(Crash):
        train_sft(_model(tokenizer), tokenizer, data, cfg, tmp_path / "b", tracker=crashing)
    ckpts = list_checkpoints(tmp_path / "b" / "checkpoints")
    assert [p.name for p in ckpts] == ["step-000005", "step-000010"]  # older ones pruned, newest complete
    assert not (tmp_path / "b" / "final").exists()
    resumed = Recorder()
    # Full fine-tuning restores every weight (a different init must not matter); LoRA needs the same base.
    out = train_sft(_model(tokenizer, seed=0 if use_lora else 99), tokenizer, data, cfg, tmp_path / "b", tracker=resumed)

    assert [r["step"] for r in resumed.rows] == list(range(11, 21))  # continues the step count
    assert [r["loss"] for r in resumed.rows] == [r["loss"] for r in full.rows[10:]]  # same batches, same order
    assert [r["lr"] for r in resumed.rows] == [r["lr"] for r in full.rows[10:]]
    for (k, a), b in zip(ref.state_dict().items(), out.state_dict().values()):
        assert torch.equal(a, b), k
    if use_lora:  # a checkpoint of adapters cannot be resumed onto another base model
        with pytest.raises(Crash):
            train_sft(_model(tokenizer), tokenizer, data, cfg, tmp_path / "c", tracker=Recorder(crash_at=7))
        with pytest.raises(ValueError, match="base_weights"):
            train_sft(_model(tokenizer, seed=5), tokenizer, data, cfg, tmp_path / "c")


def test_resume_refuses_changed_data(tokenizer, sequences, tmp_path):
    cfg = _cfg(max_steps=6, checkpoint_every=2)
    with pytest.raises(Crash):
        train_sft(_model(tokenizer), tokenizer, sequences, cfg, tmp_path, tracker=Recorder(crash_at=3))
    with pytest.raises(ValueError, match="cannot resume"):
        train_sft(_model(tokenizer), tokenizer, sequences[:-1], cfg, tmp_path)
    # resume=False starts over (old checkpoints removed)
    rec = Recorder()
    train_sft(_model(tokenizer), tokenizer, sequences[:-1], cfg, tmp_path, tracker=rec, resume=False)
    assert rec.rows[0]["step"] == 1
    with pytest.raises(ValueError, match="final"):  # a finished run on other data is not silently reused
        train_sft(_model(tokenizer), tokenizer, sequences, cfg, tmp_path)


def test_time_budget_stops_cleanly_then_resume_finishes(tokenizer, sequences, tmp_path, caplog):
    cfg = _cfg(epochs=2, max_minutes=1e-9)
    train_sft(_model(tokenizer), tokenizer, sequences, cfg, tmp_path)
    summary = json.loads((tmp_path / "final" / "sft_summary.json").read_text())
    assert summary["stopped"] == "time_budget" and summary["steps"] < summary["total_steps"] == 4
    assert list_checkpoints(tmp_path / "checkpoints")  # saved where it stopped
    load_policy(tmp_path / "final", device="cpu", dtype="float32")  # a usable model even when cut short
    # the pipeline's stage summary, log and report headline say the run is truncated
    with caplog.at_level(logging.WARNING, logger="etagent"):
        budget = sft_budget_summary(tmp_path / "final", "seed")
    assert budget == {"steps": summary["steps"], "total_steps": 4, "stopped": "time_budget"}
    assert "TRUNCATED" in caplog.text and f"step {summary['steps']} of 4" in caplog.text
    warning = truncation_warning(SimpleNamespace(stages={"seed": {"summary": budget}, "world": {"summary": {}}}))
    assert "truncated run" in warning and f"`seed` stopped at step {summary['steps']}/4" in warning

    rec = Recorder()
    model = train_sft(_model(tokenizer), tokenizer, sequences, _cfg(epochs=2), tmp_path, tracker=rec)
    summary = json.loads((tmp_path / "final" / "sft_summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["steps"] == 4 and rec.rows[-1]["step"] == 4
    assert rec.rows[-1]["epoch"] == pytest.approx(2.0)
    done = sft_budget_summary(tmp_path / "final", "seed")
    assert done["stopped"] == "completed"
    assert truncation_warning(SimpleNamespace(stages={"seed": {"summary": done}})) is None

    # finished: a second call loads the result instead of training again
    again = Recorder()
    loaded = train_sft(_model(tokenizer), tokenizer, sequences, _cfg(epochs=2), tmp_path, tracker=again)
    assert again.rows == []
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_train_config_composes_into_sftconfig():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from conftest import CONF
    from etagent.config import validate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=None, overrides=["+train=default", "+seed=7", "train.lora.enabled=true"])
    validate(cfg)
    sft = instantiate(cfg.train)
    assert isinstance(sft, SFTConfig) and sft.seed == 7 and sft.lr == 1.5e-3 and sft.batch_size == 32
    assert isinstance(sft.lora, LoraSettings) and sft.lora.enabled and "q_proj" in sft.lora.target_modules
    assert SFTConfig.coerce(cfg.train) == sft
    with pytest.raises(ValueError, match="train.bf16"):
        SFTConfig(bf16="maybe")
    with pytest.raises(ValueError, match="train.lora"):
        SFTConfig(lora={"rank": 4})


def test_bf16_autocast_and_gradient_checkpointing_train(tokenizer, sequences, tmp_path):
    from etagent.tracking import Tracker
    from etagent.utils.io import read_jsonl_dicts

    model = train_sft(_model(tokenizer), tokenizer, sequences, _cfg(max_steps=3, bf16=True, gradient_checkpointing=True),
                      tmp_path / "out", tracker=Tracker(tmp_path / "run"), stage="ase/round1")
    rows = read_jsonl_dicts(tmp_path / "run" / "metrics" / "ase_round1.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["stage"] == "ase/round1" for r in rows)
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["loss_tokens"] > 0 for r in rows)
    assert next(model.parameters()).dtype == torch.float32  # autocast: fp32 master weights
    assert not model.training


def test_the_recipe_pieces_are_what_train_sft_runs(tokenizer, sequences, tmp_path):
    """setup -> step ... -> evaluate -> save, driven by hand, gives train_sft's model and summary;
    a finished run's setup loads it instead of training again."""
    from etagent.train.sft import SFTRecipe

    ref = train_sft(_model(tokenizer), tokenizer, sequences * 2, _cfg(max_steps=5), tmp_path / "a")
    recipe = SFTRecipe(_model(tokenizer), tokenizer, sequences * 2, _cfg(max_steps=5), tmp_path / "b")
    assert recipe.setup() and recipe.step_no == 0 and recipe.total_steps == 5
    losses = []
    while not recipe.done:
        losses.append(recipe.step()["loss"])
    assert len(losses) == 5 and recipe.evaluate()["steps"] == 5 and recipe.evaluate()["stopped"] == "completed"
    model = recipe.save()
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))
    a, b = (json.loads((tmp_path / d / "final" / "sft_summary.json").read_text()) for d in ("a", "b"))
    assert {k: v for k, v in a.items() if k != "elapsed_s"} == {k: v for k, v in b.items() if k != "elapsed_s"}
    again = SFTRecipe(_model(tokenizer), tokenizer, sequences * 2, _cfg(max_steps=5), tmp_path / "b")
    assert again.setup() is False and all(torch.equal(x, y) for x, y in zip(again.model.state_dict().values(),
                                                                           model.state_dict().values()))
