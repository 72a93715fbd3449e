"""Tiny tokenizer and model: save/load round trips, prompt layout, model configs."""

from __future__ import annotations

import pytest
import torch

from etagent import protocol
from etagent.models.factory import ModelSpec, build_scratch_model, count_parameters, load_policy
from etagent.models.prompting import build_prompt_ids, build_prompt_text
from etagent.models.tokenizer import IM_END, build_tokenizer, load_tokenizer, save_tokenizer, stop_token_ids
from run_env import GRAMMAR

QUESTIONS = ["What is 123*45?", "Who founded Velmora Labs?", "What is 7+5?"]
RESPONSES = [
    "<think>Too long to do in my head.</think><python>print(123*45)</python>"
    + GRAMMAR.format_result("5535") + protocol.format_answer("5535"),
    "<search>Velmora Labs founder</search>"
    + GRAMMAR.format_result("Velmora Labs was founded by Ada Quenn in 1931.")
    + "<think>The passage names her.</think>" + protocol.format_answer("Ada Quenn"),
    "<think>7+5=12</think>" + protocol.format_answer("12"),
]
TEXTS = QUESTIONS + RESPONSES
TINY_ARCH = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=TEXTS * 10, vocab_size=400)


def test_tokenizer_round_trip(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert len(loaded) == len(tokenizer)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    probes = TEXTS + ["unseen words 98765 <answer>\\boxed{x}</answer>", build_prompt_text(tokenizer, QUESTIONS[0])]
    for text in probes:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert loaded.encode(text, add_special_tokens=False) == ids
        assert loaded.decode(ids, skip_special_tokens=False) == tokenizer.decode(ids, skip_special_tokens=False) == text
    assert loaded.eos_token_id == tokenizer.eos_token_id and loaded.pad_token_id == tokenizer.pad_token_id
    assert stop_token_ids(loaded) == stop_token_ids(tokenizer)
    assert build_prompt_ids(loaded, QUESTIONS[1]) == build_prompt_ids(tokenizer, QUESTIONS[1])


def test_tags_are_atomic_and_survive_decode(tokenizer):
    for tag in GRAMMAR.tag_tokens:
        ids = tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, tag
        # skip_special_tokens must not drop protocol tags (parsing decoded ids relies on them)
        assert tokenizer.decode(ids, skip_special_tokens=True) == tag
    digits = tokenizer.convert_ids_to_tokens(tokenizer.encode("98765", add_special_tokens=False))
    assert digits == ["987", "65"]  # chunks of at most three digits (the copy rule below)


def test_prompt_is_chatml(tokenizer):
    text = build_prompt_text(tokenizer, QUESTIONS[0], system_prompt="sys")
    assert text == f"<|im_start|>system\nsys{IM_END}\n<|im_start|>user\n{QUESTIONS[0]}{IM_END}\n<|im_start|>assistant\n"
    ids = build_prompt_ids(tokenizer, QUESTIONS[0])
    assert tokenizer.decode(ids, skip_special_tokens=False) == build_prompt_text(tokenizer, QUESTIONS[0])
    assert tokenizer.convert_tokens_to_ids(IM_END) in stop_token_ids(tokenizer)


def test_model_save_load_identical_logits(tokenizer, tmp_path):
    spec = ModelSpec(name="t", size="tiny", arch=TINY_ARCH)
    model = build_scratch_model(spec, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, seed=1)
    model.eval()
    model.save_pretrained(tmp_path)
    save_tokenizer(tokenizer, tmp_path)
    loaded, tok = load_policy(tmp_path, device="cpu", dtype="float32")
    ids = torch.tensor([build_prompt_ids(tok, QUESTIONS[0]) + tok.encode(RESPONSES[0], add_special_tokens=False)])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert type(loaded) is type(model)
    assert loaded.config.tie_word_embeddings and count_parameters(loaded) == count_parameters(model)
    # same seed -> same weights (scratch builds are reproducible)
    again = build_scratch_model(spec, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_default_tiny_size_is_about_2m_params(tokenizer):
    model = build_scratch_model(ModelSpec(), 512, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert 1.5e6 < count_parameters(model) < 3.5e6


def test_model_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="model.kind"):
        ModelSpec(kind="remote")
    with pytest.raises(ValueError, match="model.path"):
        ModelSpec(kind="pretrained")
    with pytest.raises(ValueError, match="model.size"):
        ModelSpec(size="huge")


@pytest.mark.parametrize(
    "name,kind,path",
    [("tiny", "scratch", None), ("small", "scratch", None),
     ("qwen2.5-0.5b-instruct", "pretrained", "Qwen/Qwen2.5-0.5B-Instruct"),
     ("qwen2.5-1.5b-instruct", "pretrained", "Qwen/Qwen2.5-1.5B-Instruct"),
     ("qwen2.5-7b-instruct", "pretrained", "Qwen/Qwen2.5-7B-Instruct")],
)
def test_model_configs_compose(name, kind, path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from conftest import CONF
    from etagent.config import validate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=None, overrides=[f"+model={name}"])
    validate(cfg)
    spec = instantiate(cfg.model)
    assert isinstance(spec, ModelSpec) and spec.kind == kind and spec.path == path and spec.name == name
    assert spec.use_system_prompt == (kind == "pretrained")
    assert spec.dtype == ("bfloat16" if kind == "pretrained" else "float32")


# ----------------------------------------------------------------- the copy rule (issue 12)


def _copy_rule_tok():
    texts = ["Where was Zorvan Kell born? Zorvan Kell was born in Tavel in 1950.", "What is 12 * 34?"] * 10
    return build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=texts, vocab_size=300, atomic_words=["Zorvan", "Kell", "Tavel"])


def test_name_words_are_one_id_wherever_they_appear():
    tok = _copy_rule_tok()
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("Zorvan", "Kell", "Tavel")}
    for text in ("Where was Zorvan Kell born?", "<search>Zorvan Kell</search>", "\\boxed{Zorvan Kell}",
                 "(Zorvan Kell)", "Zorvan Kell.", "born in Tavel in"):
        got = tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))
        for w in ("Zorvan", "Kell", "Tavel"):
            if w in text:
                assert w in got, (text, got)  # the bare word, never a space-prefixed variant
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # whole words only: a longer word that contains a name is not split around it
    assert "Zorvan" not in tok.convert_ids_to_tokens(tok.encode("Zorvanix", add_special_tokens=False))
    assert len(set(ids.values())) == 3


def test_numbers_are_chunks_of_at_most_three_digits_left_to_right():
    tok = _copy_rule_tok()

    def pieces(text):
        return tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))

    assert pieces("906528") == ["906", "528"]
    assert pieces("1991") == ["199", "1"]
    assert pieces("7") == ["7"]
    # chunks never seen in training are still single ids (the table is complete)
    assert pieces("857") == ["857"] and pieces("000") == ["000"]
    # the same chunks in a question, in code, in a result and in an answer
    chunks = ["906", "528"]
    for text in ("What is 906528?", "print(906528)", "<result>\n906528\n</result>", "\\boxed{906528}"):
        got = pieces(text)
        i = got.index("906")
        assert got[i : i + 2] == chunks, (text, got)
    with pytest.raises(ValueError, match="digit_chunk"):
        build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=["x"], vocab_size=300, digit_chunk=0)
