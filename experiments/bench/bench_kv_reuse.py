"""KV reuse across tool turns: the HF backend's multi-turn rollouts with and without it, in the same run.

    .venv/bin/python experiments/bench/bench_kv_reuse.py --run-dir RUN [--questions 64 --n 1 --repeats 2 --out f.json]

With ``--run-dir``: the run's seed agent (``RUN/seed/final``), its dev questions and world
corpus, and its own tool, rollout and backend settings (``RUN/config.yaml``: system prompt,
budgets, token limits, batch size, cache), built by the pipeline's own builders. Without:
an untrained tiny Qwen2 (weights N(0, 0.2), so greedy decoding does not loop on one token)
plus a bigram bias (a forward hook on the logits: some last input ids push ``<python>`` /
``</python>`` / ``</answer>``) so rows make several tool calls, with real tools (python
sandbox + bm25); an untrained model rarely closes a call, and without tool turns there is
nothing to reuse. These figures only show that the bench works.

The two arms (``kv_reuse`` off / on, same settings otherwise) alternate ``--repeats``
times; each reports its best generation time (``backend.generate``), tokens prefilled and
reused, and model tokens/s. Greedy by default (the eval setting): both arms then produce
the same rollouts (checked and reported), so the speed-up compares equal work. With
``--temperature > 0`` (RL-like sampling) the samples differ between arms (the backend
batches rows by prefill length, which reuse changes), so compare tokens/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from etagent.backends.base import SamplingParams  # noqa: E402
from etagent.backends.hf import HFBackend  # noqa: E402
from etagent.utils.io import atomic_write_json  # noqa: E402


def tool_bias(model, tok) -> None:
    """Make an untrained model call tools: a bias on the logits that depends on the last input id only."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<python>", "</python>", "</answer>")}

    def hook(mod, args, kw, out):
        last = kw["input_ids"][:, -1]
        logits = out.logits[:, -1]
        logits[:, ids["<python>"]] += 30.0 * (last % 11 == 5)
        logits[:, ids["</python>"]] += 30.0 * ((last % 5 == 3) & (last != ids["<python>"]))
        logits[:, ids["</answer>"]] += 30.0 * (last % 29 == 1)

    model.register_forward_hook(hook, with_kwargs=True)


def from_run(run: Path, args):
    """(model, tokenizer, make_engine(backend), toolset, examples, backend kwargs) of a finished run."""
    from omegaconf import OmegaConf

    from etagent.pipeline import components as C
    from etagent.pipeline.context import RunContext

    for need in (run / "config.yaml", run / "seed" / "final" / "config.json", run / "world" / "dev.jsonl"):
        if not need.exists():
            raise SystemExit(f"--run-dir {run}: {need} missing (a run with the world and seed stages done)")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.paths.run_dir = str(run)
    cfg.paths.shared_dir = str(ROOT.parent / "shared")  # outside Hydra: no ${hydra:runtime.cwd}
    ctx = RunContext(cfg=cfg, run_dir=run, tracker=None)
    model, tok = C.load_policy(ctx, run / "seed" / "final")
    env = C.run_env(ctx)
    examples = C.load_split(ctx, "dev")[: args.questions]
    be_kw = {k: cfg.backend[k] for k in ("batch_size", "dtype", "cache_impl") if k in cfg.backend}
    return model, tok, (lambda be: C.make_engine(ctx, be, env.grader)), env, examples, be_kw


def untrained(args, tmp: Path):
    import json

    from bench_rollout import ENV, corpus_texts

    from etagent.models.factory import ModelSpec, build_scratch_model
    from etagent.models.tokenizer import build_tokenizer
    from etagent.records import Example
    from etagent.rollout.engine import RolloutEngine
    from etagent.tools.base import ToolSet
    from etagent.tools.python_sandbox import PythonSandbox
    from etagent.tools.search import build_search_tool

    tok = build_tokenizer(corpus_texts(), tag_tokens=ENV.grammar.tag_tokens, vocab_size=512)
    model = build_scratch_model(ModelSpec(), len(tok), tok.eos_token_id, tok.pad_token_id, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2, generator=g)
    tool_bias(model, tok)
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "title": f"City {i}", "text": f"City {i} was founded by "
                                          f"Person {i * 7 % 97}."}) + "\n" for i in range(200)))
    tools = ToolSet({"python": PythonSandbox(pool_size=2, cpu_seconds=2, wall_seconds=5, max_output_chars=256),
                     "search": build_search_tool(backend="bm25", corpus_path=str(corpus), top_k=2)})
    examples = [Example(id=f"q{i}", question=f"What is {i + 3}*{(i + 3) * 7 % 97}?" + " Think." * (i % 5),
                        answers=[str((i + 3) * ((i + 3) * 7 % 97))], domain="math", source="bench")
                for i in range(args.questions)]

    def engine(be):
        return RolloutEngine(be, tools, ENV.grader, tools.grammar, system_prompt=None,
                             max_response_tokens=args.max_response_tokens,
                             max_turn_tokens=args.max_turn_tokens, label_behaviour=False)

    return model, tok, engine, tools, examples, {"batch_size": args.batch_size, "cache_impl": args.cache_impl}


def run_arm(make_engine, model, tok, be_kw: dict, reuse: bool, examples, n: int, params: SamplingParams):
    be = HFBackend(model, tok, kv_reuse=reuse, **be_kw)
    eng = make_engine(be)
    t0 = time.perf_counter()
    trajs = eng.rollout(examples, n, params)
    wall = time.perf_counter() - t0
    model_tokens = sum(t.model_tokens for t in trajs)
    return {"wall_s": wall, "gen_s": eng.last_stats["gen_s"], "tool_s": eng.last_stats["tool_s"],
            "model_tokens": model_tokens, "model_tok_per_s": model_tokens / max(eng.last_stats["gen_s"], 1e-9),
            "prefill_tokens": be.stats["prefill_tokens"], "reused_tokens": be.stats["reused_tokens"],
            "tool_calls": sum(t.n_calls(eng.grammar) for t in trajs), "rollouts": len(trajs),
            "generate_calls": eng.last_stats["generate_calls"]}, [(t.response_ids, t.finish_reason) for t in trajs]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=str, default=None, help="a run with a seed agent (default: untrained model)")
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--n", type=int, default=1, help="samples per question")
    ap.add_argument("--repeats", type=int, default=2, help="alternating (off, on) pairs; the best time of each arm counts")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64, help="untrained model only (a run uses its backend config)")
    ap.add_argument("--cache-impl", choices=("static", "dynamic"), default=None,
                    help="override the cache (default: the run's, static without a run)")
    ap.add_argument("--max-response-tokens", type=int, default=256, help="untrained model only")
    ap.add_argument("--max-turn-tokens", type=int, default=64, help="untrained model only")
    ap.add_argument("--out", type=str, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = SamplingParams(temperature=args.temperature, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if args.run_dir:
            model, tok, make_engine, tools, examples, be_kw = from_run(Path(args.run_dir), args)
        else:
            args.cache_impl = args.cache_impl or "static"
            model, tok, make_engine, tools, examples, be_kw = untrained(args, tmp)
        if args.cache_impl:
            be_kw["cache_impl"] = args.cache_impl
        try:
            run_arm(make_engine, model, tok, be_kw, True, examples[:2], 1, params)  # warm-up: stop table, workers
            arms: dict[str, list[dict]] = {"no_reuse": [], "reuse": []}
            outputs = {}
            for _ in range(args.repeats):
                for name, reuse in (("no_reuse", False), ("reuse", True)):
                    stats, outs = run_arm(make_engine, model, tok, be_kw, reuse, examples, args.n, params)
                    arms[name].append(stats)
                    outputs.setdefault(name, outs)
        finally:
            tools.close()
    best = {k: min(v, key=lambda s: s["gen_s"]) for k, v in arms.items()}
    speedup = best["no_reuse"]["gen_s"] / best["reuse"]["gen_s"]
    identical = outputs["no_reuse"] == outputs["reuse"]
    calls = best["reuse"]["tool_calls"] / max(best["reuse"]["rollouts"], 1)
    report = {"model": "run seed agent" if args.run_dir else "untrained tiny + tool bias", "run_dir": args.run_dir,
              "questions": len(examples), "n": args.n, "temperature": args.temperature, "threads": args.threads,
              "backend": be_kw, "arms": arms, "best": best, "speedup_gen": speedup,
              "speedup_wall": best["no_reuse"]["wall_s"] / best["reuse"]["wall_s"],
              "identical_outputs": identical, "calls_per_rollout": calls}
    print(f"{report['model']}: {len(examples)} questions x {args.n}, T={args.temperature}, {args.threads} thread(s), "
          f"backend {be_kw}; {calls:.2f} tool calls per rollout")
    print(f"{'arm':<10}{'gen s':>8}{'wall s':>8}{'tools s':>8}{'tok/s':>8}{'prefill':>9}{'reused':>9}{'calls':>7}")
    for name, r in best.items():
        print(f"{name:<10}{r['gen_s']:>8.2f}{r['wall_s']:>8.2f}{r['tool_s']:>8.2f}{r['model_tok_per_s']:>8.0f}"
              f"{r['prefill_tokens']:>9}{r['reused_tokens']:>9}{r['tool_calls']:>7}")
    print(f"speed-up of generation with KV reuse: {speedup:.2f}x (wall {report['speedup_wall']:.2f}x; target >= 1.5x); "
          f"identical outputs: {identical}" + ("" if args.temperature == 0 else " (sampling: they may differ)"))
    if args.out:
        atomic_write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
