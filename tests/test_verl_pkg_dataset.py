"""verl 0.9.1's own RLHFDataset reads etagent's exported parquet (and the authors' file).

Every row survives verl's prompt-length filter (it drops rows it cannot tokenise), its
``raw_prompt`` renders -- through the Continuous-Token builder verl's agent loops use -- to
exactly the prompt ids etagent's rollout builds, and the reward fields come back intact.
"""

from __future__ import annotations

import pytest
from verl.utils import hf_tokenizer
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder
from verl_pkg_support import verl_config

from etagent.export.verl import DATA_SOURCES, export_verl, read_verl
from etagent.models.prompting import build_prompt_ids
from etagent.models.tokenizer import build_tokenizer
from etagent.records import Example
from run_env import GRAMMAR

EXAMPLES = [
    Example(id="m1", question="What is 6*7?", answers=["42"], domain="math", source="t"),
    Example(id="m2", question="Compute 2^10 - 1.", answers=["1023"], domain="math", source="t"),
    Example(id="q1", question="Who wrote Dune?", answers=["Frank Herbert", "Herbert"], domain="qa", source="t"),
    Example(id="q2", question="Where is the Eiffel Tower?", answers=["Paris"], domain="qa", source="t"),
]


def _dataset(path, tok_dir, tmp, max_len: int):
    cfg = verl_config([f"actor_rollout_ref.model.path={tok_dir}", "actor_rollout_ref.rollout.name=vllm",
                       f"data.max_prompt_length={max_len}", "data.return_raw_chat=true",
                       "data.filter_overlong_prompts=true", "data.filter_overlong_prompts_workers=1",
                       f"+data.cache_dir={tmp / 'verl_cache'}"])
    tok = hf_tokenizer(str(tok_dir))  # verl's own tokenizer loader
    return RLHFDataset([str(path)], tok, cfg.data), tok


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = [e.question for e in EXAMPLES] + [GRAMMAR.system_prompt]
    build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=texts * 10, vocab_size=300).save_pretrained(d)
    return d


def test_rlhf_dataset_loads_exported_parquet(tmp_path, tok_dir):
    path = tmp_path / "train.parquet"
    export_verl(EXAMPLES, path, start_index=5, system_prompt=GRAMMAR.system_prompt)
    ds, tok = _dataset(path, tok_dir, tmp_path, max_len=1024)
    assert len(ds) == len(EXAMPLES)  # nothing dropped by verl's filter
    builder = create_continuous_token_builder(tok, hf_model_type="qwen2")
    for i, ex in enumerate(EXAMPLES):
        row = ds[i]
        assert [m["role"] for m in row["raw_prompt"]] == ["system", "user"]
        ids = builder.build_initial_tokens(list(row["raw_prompt"]))
        assert ids and ids == build_prompt_ids(tok, ex.question, GRAMMAR.system_prompt)
        assert row["data_source"] == DATA_SOURCES[ex.domain] and row["ability"] == ex.domain
        assert list(row["reward_model"]["ground_truth"]) == ex.answers and row["reward_model"]["style"] == "rule"
        info = row["extra_info"]
        assert (info["index"], info["question"], info["split"]) == (5 + i, ex.question, "train")
        assert row["index"] == 5 + i  # what verl groups rollouts by and the reward's group key
    assert [e.id for e in read_verl(path)] == [e.id for e in EXAMPLES]


def test_rlhf_dataset_filter_is_real(tmp_path, tok_dir):
    """The length filter above did run: a budget below the prompt length drops every row."""
    path = tmp_path / "train.parquet"
    export_verl(EXAMPLES, path, system_prompt=GRAMMAR.system_prompt)
    ds, _ = _dataset(path, tok_dir, tmp_path, max_len=8)
    assert len(ds) == 0


def test_rlhf_dataset_loads_reference_parquet(tmp_path, tok_dir, shared_dir):
    ref = shared_dir / "benchmarks" / "verl_valid_reference.parquet"
    ds, _ = _dataset(ref, tok_dir, tmp_path, max_len=100_000)
    rows = read_verl(ref)
    assert len(ds) == len(rows) > 0
    for i in (0, len(rows) - 1):
        assert list(ds[i]["reward_model"]["ground_truth"]) == rows[i].answers
