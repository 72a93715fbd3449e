"""SFT throughput: etagent's training step vs the first landing's padded loop, in the same run.

    .venv/bin/python experiments/bench/bench_sft.py [--steps 40 --batch 32 --threads 2 --out bench.json]

Data: the embedded world's teacher trajectories (the seed agent's real SFT data: a small
synthetic task is generated, its teacher written with the real tools, the tokenizer built
with the project's rule). Model: the default tiny Qwen2. Every arm trains a fresh copy of the
same initial weights on the same micro-batches for ``--steps`` optimizer steps after
``--warmup`` untimed steps, and reports real (non-pad) tokens per second.

Arms (ratios are against ``first_landing``):
* ``no_bucketing`` -- shuffled fixed-size batches right-padded to the longest sequence, logits
  for every position (a reference: what bucketing saved);
* ``first_landing`` -- the first landing's loop: length-bucketed batches
  (``train.bucket_batches``), logits for every position, loss on the trained ones;
* ``current`` -- what ``etagent.train.sft`` does now (bucketing + the output head on trained
  positions only; see ``batch_nll_sum``).

Never run it beside another torch job: two jobs on 2 cores slow each 3-5x and the ratio
becomes noise.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from etagent.data.synthetic import SyntheticTask  # noqa: E402
from etagent.models.factory import ModelSpec, build_scratch_model  # noqa: E402
from etagent.models.prompting import build_prompt_ids  # noqa: E402
from etagent.models.tokenizer import build_tokenizer  # noqa: E402
from etagent.seed.teacher import write_teacher_trajectories  # noqa: E402
from etagent.tools.base import ToolSet  # noqa: E402
from etagent.tools.python_sandbox import PythonSandbox  # noqa: E402
from etagent.tools.search import build_search_tool  # noqa: E402
from etagent.train.batching import collate, epoch_plan  # noqa: E402
from etagent.train.sequences import from_text  # noqa: E402
from etagent.train.sft import batch_nll_sum, masked_nll_sum  # noqa: E402
from etagent.utils.io import atomic_write_json  # noqa: E402


def seed_data(n_train: int):
    from bench_rollout import ENV  # the default config's run environment

    task = SyntheticTask(seed=0, n_train=n_train, n_dev=10, n_test=10, domains=ENV.grader.domains)
    with tempfile.TemporaryDirectory() as d:
        corpus = task.write(d)["corpus"]
        tools = ToolSet({"python": PythonSandbox(pool_size=2),
                         "search": build_search_tool(backend="bm25", corpus_path=corpus, cache_path=None, top_k=3)})
        try:
            examples = task.load("train")
            rows = write_teacher_trajectories(examples, tools, seed=0)
        finally:
            tools.close()
    texts = [r["response_text"] for r in rows] + [e.question for e in examples] + [r["text"] for r in task.corpus_records()]
    tok = build_tokenizer(texts, tag_tokens=ENV.grammar.tag_tokens, vocab_size=1024, atomic_words=task.lexicon())
    by_id = {e.id: e for e in examples}
    seqs = [from_text(tok, build_prompt_ids(tok, by_id[r["example_id"]].question, None), r["response_text"],
                      grammar=ENV.grammar) for r in rows]
    return tok, seqs


def full_logits_nll(model, batch) -> torch.Tensor:
    """The first landing's step: logits for every position, then the masked loss."""
    logits = model(input_ids=batch.input_ids, use_cache=False).logits
    return masked_nll_sum(logits, batch.input_ids, batch.loss_mask)


def run_arm(name: str, model, seqs, plan, pad_id: int, loss_fn, steps: int, warmup: int) -> dict:
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens, t_run = 0, 0.0
    losses = []
    for k, idx in enumerate(plan[: warmup + steps]):
        batch = collate([seqs[i] for i in idx], idx, pad_id)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nll = loss_fn(model, batch)
        (nll / batch.n_loss_tokens).backward()
        opt.step()
        dt = time.perf_counter() - t0
        if k >= warmup:
            tokens += batch.n_tokens
            t_run += dt
            losses.append(float(nll.detach()) / batch.n_loss_tokens)
    return {"arm": name, "steps": steps, "tokens": tokens, "seconds": round(t_run, 3),
            "tok_per_s": round(tokens / t_run, 1), "last_loss": round(losses[-1], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok, seqs = seed_data(args.n_train)
    model = build_scratch_model(ModelSpec(), len(tok), tok.eos_token_id, tok.pad_token_id, seed=0)
    lengths = [len(s) for s in seqs]
    n = args.warmup + args.steps
    plain = epoch_plan(lengths, args.batch, seed=0, epoch=0, bucket_batches=1)[:n]
    bucketed = epoch_plan(lengths, args.batch, seed=0, epoch=0, bucket_batches=32)[:n]
    pad = tok.pad_token_id
    current = lambda m, b: batch_nll_sum(m, b, bf16=False)  # noqa: E731
    arms = [run_arm("no_bucketing", model, seqs, plain, pad, full_logits_nll, args.steps, args.warmup),
            run_arm("first_landing", model, seqs, bucketed, pad, full_logits_nll, args.steps, args.warmup),
            run_arm("current", model, seqs, bucketed, pad, current, args.steps, args.warmup)]
    base = arms[1]["tok_per_s"]
    print(f"{'arm':<14} {'tok/s':>9} {'x first_landing':>16}   (threads={torch.get_num_threads()}, batch={args.batch}, "
          f"{args.steps} timed steps)")
    for a in arms:
        a["ratio"] = round(a["tok_per_s"] / base, 2)
        print(f"{a['arm']:<14} {a['tok_per_s']:>9.0f} {a['ratio']:>15.2f}x")
    if args.out:
        atomic_write_json(args.out, {"arms": arms, "threads": torch.get_num_threads(), "batch": args.batch})


if __name__ == "__main__":
    main()
