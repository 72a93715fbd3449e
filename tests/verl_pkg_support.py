"""Shared pieces of the tests against the real verl package (tests/test_verl_pkg_*.py).

They run in the second venv that scripts/setup_verl.sh builds (.venv-verl, verl 0.9.1);
scripts/test.sh runs them there. ``tiny_policy`` saves a tiny Qwen2 policy, taught on two
tool-using trajectories so greedy decoding makes real tool calls, with its tokenizer and
ChatML template -- what verl loads from ``actor_rollout_ref.model.path``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from etagent import protocol
from etagent.models.factory import ModelSpec, build_scratch_model
from etagent.models.prompting import build_prompt_ids
from etagent.models.tokenizer import build_tokenizer
from etagent.records import Example
from run_env import GRAMMAR

MATH = Example(id="m1", question="What is 6*7?", answers=["42"], domain="math", source="t")
QA = Example(id="q1", question="Who wrote Dune?", answers=["Frank Herbert"], domain="qa", source="t")
DOCS = [{"id": "0", "title": "Dune", "text": "Dune was written by Frank Herbert."},
        {"id": "1", "title": "Emma", "text": "Emma was written by Jane Austen."}]
# what the policy learns to write (the results are the real tools' outputs, found at build time)
SCRIPTS = {MATH.id: [("python", "print(6*7)")], QA.id: [("search", "Dune author")]}
ANSWERS = {MATH.id: "The answer is \\boxed{42}", QA.id: "\\boxed{Frank Herbert}"}


def verl_config(overrides: list[str]):
    """verl's own ``ppo_trainer`` config (as ``python -m verl.trainer.main_ppo`` composes it)."""
    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    conf = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    try:
        with initialize_config_dir(config_dir=conf, version_base=None):
            return compose(config_name="ppo_trainer", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def write_corpus(path: Path) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return path


def trajectory_text(ex: Example, results: list[str]) -> str:
    """The response the policy is taught: think, calls with their results, answer."""
    calls = "".join(protocol.format_call(k, q) + GRAMMAR.format_result(r) for (k, q), r in zip(SCRIPTS[ex.id], results))
    return f"<think>use a tool</think>{calls}<answer>{ANSWERS[ex.id]}</answer>"


def tiny_policy(out: Path, toolset, steps: int = 120) -> Path:
    """Save a tiny policy that greedily reproduces :func:`trajectory_text` for MATH and QA."""
    results = {ex.id: [r.output.strip() for r in toolset.execute(list(SCRIPTS[ex.id]))] for ex in (MATH, QA)}
    texts = [trajectory_text(ex, results[ex.id]) for ex in (MATH, QA)]
    corpus = texts + [GRAMMAR.system_prompt, MATH.question, QA.question] + [d["text"] for d in DOCS]
    tok = build_tokenizer(tag_tokens=GRAMMAR.tag_tokens, texts=corpus * 20, vocab_size=400)
    torch.manual_seed(0)
    model = build_scratch_model(ModelSpec(), len(tok), tok.eos_token_id, tok.pad_token_id, seed=0)
    seqs = []
    for ex, text in zip((MATH, QA), texts):
        prompt = build_prompt_ids(tok, ex.question, GRAMMAR.system_prompt)
        ids = prompt + tok.encode(text, add_special_tokens=False)
        labels = [-100] * len(prompt) + ids[len(prompt):]
        seqs.append((torch.tensor([ids]), torch.tensor([labels])))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        loss = 0.0
        for ids, labels in seqs:
            batch_loss = model(input_ids=ids, labels=labels).loss
            batch_loss.backward()
            loss += float(batch_loss)
        opt.step()
        opt.zero_grad()
    assert loss < 0.05, f"tiny policy did not learn its trajectories (loss {loss:.3f})"
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
