"""Stage `world`: task splits, search corpus, teacher trajectories, tokenizer and initial model.

On the embedded default (``task=synthetic``, ``model=tiny|small``) everything is built
here from the seed: the suite and its corpus, the flawed teacher's trajectories for the
training split (tool results produced by the real tools), a byte-level BPE tokenizer
trained on that text, and a freshly initialised Qwen2 saved with ``save_pretrained``.
With a pretrained model and a benchmark task, this stage only writes the example files.

Departure from the paper: there is no world to build for Qwen2.5-7B-Instruct; the
teacher stands in for the instruct model's natural (flawed) tool use.
"""

from __future__ import annotations

from pathlib import Path

from etagent.config import build
from etagent.pipeline import components
from etagent.pipeline.context import RunContext
from etagent.records import write_jsonl
import json

from etagent.utils.io import atomic_write_json, atomic_write_text, read_jsonl_dicts


def run(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    wdir = ctx.world_dir
    task = build(cfg.task, "task")
    summary: dict = {"task": str(cfg.task.get("name", "task"))}
    if hasattr(task, "write"):
        task.write(str(wdir))  # resumable: skips when its manifest matches
    else:
        for split in getattr(task, "splits", ("test",)):
            write_jsonl(wdir / f"{split}.jsonl", task.load(split))
    for split in ("train", "dev", "test"):
        f = wdir / f"{split}.jsonl"
        summary[f"n_{split}"] = sum(1 for _ in open(f)) if f.exists() else 0
    if not ctx.scratch_model:
        return summary

    env = components.run_env(ctx)
    train = components.load_split(ctx, "train")
    teacher_file = wdir / "teacher.jsonl"
    if not teacher_file.exists():
        # a user task (task=jsonl) brings its own demonstrations: the flawed teacher needs tool plans
        teacher = task.seed_agent(env.grader) if hasattr(task, "seed_agent") else build(cfg.seed_agent, "seed_agent")
        texts = teacher.write(train, env.toolset)
        atomic_write_text(teacher_file, "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts))
    teacher_rows = read_jsonl_dicts(teacher_file)
    from etagent.seed.teacher import summarize

    stats = summarize(teacher_rows)
    atomic_write_json(wdir / "teacher_stats.json", stats)
    tok_dir, model_dir = wdir / "tokenizer", wdir / "model_init"
    if not (model_dir / "config.json").exists():
        from etagent.models.factory import ModelSpec, build_scratch_model, count_parameters
        from etagent.models.tokenizer import build_tokenizer

        spec: ModelSpec = build(cfg.model, "model")
        corpus = [r["text"] for r in read_jsonl_dicts(wdir / "corpus.jsonl")] if (wdir / "corpus.jsonl").exists() else []
        questions = [e.question for split in ("train", "dev") for e in components.load_split(ctx, split)]
        texts = [r["response_text"] for r in teacher_rows] + questions + corpus
        lexicon = task.lexicon() if hasattr(task, "lexicon") else []
        tok = build_tokenizer(texts, tag_tokens=env.grammar.tag_tokens, vocab_size=spec.vocab_size,
                              atomic_words=lexicon)
        model = build_scratch_model(spec, len(tok), tok.eos_token_id, tok.pad_token_id, seed=int(cfg.seed))
        tok.save_pretrained(str(tok_dir))
        tmp = model_dir.with_name(model_dir.name + ".tmp")
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        _replace_dir(tmp, model_dir)
        summary["params"] = count_parameters(model)
        summary["vocab"] = len(tok)
    summary["teacher_redundant_call_share"] = stats["all"]["redundant_call_share"]
    summary["teacher_wrong_rate"] = stats["all"]["wrong_rate"]
    return summary


def _replace_dir(tmp: Path, final: Path) -> None:
    import shutil

    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
