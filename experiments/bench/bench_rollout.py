"""Rollout throughput: the batched engine vs one sequence at a time, in the same run.

    .venv/bin/python experiments/bench/bench_rollout.py [--questions 8 --n 8 --seq-rollouts 16 --out bench.json]

Both arms run the same RolloutEngine, HF backend, tiny (untrained, 2.4M) Qwen2 and real tools
(python sandbox + bm25 over a small corpus); the sequential arm calls ``rollout([example], n=1)``
once per sample, so every generate call and tool call has a single row. Throughput counts the
tokens the model sampled (tool results excluded); the breakdown splits wall time into
generation (backend.generate), tools (toolset.execute) and engine overhead (parsing, result
encoding, bookkeeping, grading and behaviour labels). An untrained model emits garbage with
random lengths and few valid calls, so the tool share here is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from etagent import protocol  # noqa: E402
from etagent.backends.base import SamplingParams  # noqa: E402
from etagent.config.compose import compose_etagent  # noqa: E402
from etagent.backends.hf import HFBackend  # noqa: E402
from etagent.models.factory import ModelSpec, build_scratch_model, count_parameters  # noqa: E402
from etagent.models.tokenizer import build_tokenizer  # noqa: E402
from etagent.records import Example  # noqa: E402
from etagent.rollout.engine import RolloutEngine  # noqa: E402
from etagent.runenv import RunEnv  # noqa: E402
from etagent.tools.base import ToolSet  # noqa: E402
from etagent.tools.python_sandbox import PythonSandbox  # noqa: E402
from etagent.tools.search import build_search_tool  # noqa: E402
from etagent.utils.io import atomic_write_json  # noqa: E402


#: the default config's run environment (python + search grammar, built-in domains, grading)
ENV = RunEnv.from_config(compose_etagent())


def corpus_texts() -> list[str]:
    out = []
    for a in range(2, 40):
        b = a * 7 % 97
        out.append(f"What is {a}*{b}? <think>I multiply.</think>" + protocol.format_call("python", f"print({a}*{b})")
                   + ENV.grammar.format_result(str(a * b)) + protocol.format_answer(str(a * b), "The answer is "))
        out.append(f"Who founded city {a}? " + protocol.format_call("search", f"founder of city {a}")
                   + ENV.grammar.format_result(f"Doc 1(Title: City {a}) City {a} was founded by Person {b}.")
                   + protocol.format_answer(f"Person {b}"))
    return out


def run_arm(engine: RolloutEngine, examples: list[Example], n: int, params: SamplingParams, batched: bool, limit: int):
    totals = {"gen_s": 0.0, "tool_s": 0.0, "overhead_s": 0.0, "finalise_s": 0.0}
    trajs = []
    t0 = time.perf_counter()
    if batched:
        trajs = engine.rollout(examples, n, params)
        for k in totals:
            totals[k] += engine.last_stats.get(k, 0.0)
    else:
        jobs = [(ex, j) for ex in examples for j in range(n)][:limit]
        for k_job, (ex, j) in enumerate(jobs):
            trajs += engine.rollout([ex], 1, params.replace(seed=(params.seed or 0) + k_job))
            for k in totals:
                totals[k] += engine.last_stats.get(k, 0.0)
    wall = time.perf_counter() - t0
    model_tokens = sum(t.model_tokens for t in trajs)
    calls = sum(t.n_calls(ENV.grammar) for t in trajs)
    overhead = wall - totals["gen_s"] - totals["tool_s"]
    return {
        "rollouts": len(trajs), "wall_s": wall, "model_tokens": model_tokens,
        "response_tokens": sum(len(t.response_ids) for t in trajs), "tool_calls": calls,
        "model_tok_per_s": model_tokens / wall, "gen_s": totals["gen_s"], "tool_s": totals["tool_s"],
        "overhead_s": overhead, "finish": dict(sorted(_count(t.finish_reason for t in trajs).items())),
    }


def _count(xs):
    out: dict = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seq-rollouts", type=int, default=16, help="rollouts of the sequential arm (tokens/s is per token)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-response-tokens", type=int, default=256)
    ap.add_argument("--max-turn-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-impl", choices=("static", "dynamic"), default="static")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=str, default=None, help="write the figures as JSON here")
    ap.add_argument("--run-dir", type=str, default=None,
                    help="a finished run: use its seed policy, dev questions and corpus (a trained model "
                         "stops on tags like a real one; the default is an untrained model)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    run = Path(args.run_dir) if args.run_dir else None
    if run is not None:
        from etagent.models.factory import load_policy
        from etagent.records import read_jsonl

        model, tok = load_policy(run / "seed" / "final", dtype=ENV.dtype, device="cpu")
        examples = list(read_jsonl(run / "world" / "dev.jsonl", Example))[: args.questions]
    else:
        tok = build_tokenizer(corpus_texts(), tag_tokens=ENV.grammar.tag_tokens, vocab_size=512)
        model = build_scratch_model(ModelSpec(), len(tok), tok.eos_token_id, tok.pad_token_id, seed=args.seed)
        examples = [Example(id=f"q{i}", question=f"What is {i + 3}*{(i + 3) * 7 % 97}?",
                            answers=[str((i + 3) * ((i + 3) * 7 % 97))], domain="math", source="bench")
                    for i in range(args.questions)]
    params = SamplingParams(temperature=1.0, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"id": str(i), "title": f"City {i}", "text": f"City {i} was founded by Person {i * 7 % 97}."}) + "\n"
                                  for i in range(200)))
        if run is not None:
            corpus = Path(tmp) / "corpus.jsonl"
            corpus.write_text((run / "world" / "corpus.jsonl").read_text())
        tools = ToolSet({"python": PythonSandbox(pool_size=2, cpu_seconds=2, wall_seconds=5, max_output_chars=256),
                         "search": build_search_tool(backend="bm25", corpus_path=str(corpus),
                                                     top_k=3 if run is not None else 2,
                                                     style="plain" if run is not None else "search_r1")})
        try:
            backend = HFBackend(model, tok, batch_size=args.batch_size, cache_impl=args.cache_impl)
            engine = RolloutEngine(backend, tools, ENV.grader, tools.grammar, system_prompt=None,
                                   max_response_tokens=args.max_response_tokens, max_turn_tokens=args.max_turn_tokens,
                                   label_behaviour=True)
            engine.rollout(examples[:1], 2, params)  # warm-up (stop table, sandbox workers, kernels)
            seq = run_arm(engine, examples, args.n, params, batched=False, limit=args.seq_rollouts)
            bat = run_arm(engine, examples, args.n, params, batched=True, limit=0)
        finally:
            tools.close()
    speedup = bat["model_tok_per_s"] / seq["model_tok_per_s"]
    report = {"model_params": count_parameters(model), "vocab": len(tok), "threads": args.threads,
              "questions": args.questions, "n": args.n, "batched": bat, "sequential": seq, "speedup": speedup}
    print(f"tiny Qwen2 {report['model_params'] / 1e6:.2f}M params, vocab {len(tok)}, {args.threads} thread(s)")
    print(f"{'arm':<11}{'rollouts':>9}{'tokens':>8}{'calls':>7}{'wall s':>8}{'tok/s':>8}{'gen s':>8}{'tools s':>8}{'other s':>8}")
    for name, r in (("batched", bat), ("sequential", seq)):
        print(f"{name:<11}{r['rollouts']:>9}{r['model_tokens']:>8}{r['tool_calls']:>7}{r['wall_s']:>8.2f}"
              f"{r['model_tok_per_s']:>8.0f}{r['gen_s']:>8.2f}{r['tool_s']:>8.2f}{r['overhead_s']:>8.2f}")
    print(f"speed-up (model tokens/s, batched / sequential): {speedup:.1f}x (target >= 5x)")
    for name, r in (("batched", bat), ("sequential", seq)):
        w = r["wall_s"]
        print(f"{name}: generation {100 * r['gen_s'] / w:.0f}%, tools {100 * r['tool_s'] / w:.0f}%, "
              f"overhead {100 * r['overhead_s'] / w:.0f}%; finish {r['finish']}")
    if args.out:
        atomic_write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
