"""Builders shared by stages: example splits, tools, backends, rollout engines, SFT configs.

Stages never instantiate components themselves; they call these, so the wiring between
config groups lives in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from etagent.config import build
from etagent.pipeline.context import RunContext
from etagent.records import Example, read_jsonl


def load_split(ctx: RunContext, split: str) -> list[Example]:
    """Examples of a split as written by the `world` stage (falls back to the task)."""
    key = f"examples:{split}"
    if key not in ctx.cache:
        f = ctx.world_dir / f"{split}.jsonl"
        if f.exists():
            ctx.cache[key] = list(read_jsonl(f, Example))
        elif split == "dev" and (ctx.world_dir / "test.jsonl").exists():
            ctx.cache[key] = []  # benchmarks ship only a test split; dev evaluation is skipped
        else:
            raise FileNotFoundError(f"{f} missing: run the `world` stage first")
    return [e for e in ctx.cache[key]]


def examples_by_id(ctx: RunContext) -> dict[str, Example]:
    out: dict[str, Example] = {}
    for split in ("train", "dev", "test"):
        try:
            out.update({e.id: e for e in load_split(ctx, split)})
        except FileNotFoundError:
            pass
    return out


def tool_grammar(ctx: RunContext):
    """The tag grammar of the configured tools (``tools``), read from their classes without
    building them (equal to ``make_toolset(ctx).grammar``)."""
    from etagent.tools import config_grammar

    return config_grammar(ctx.cfg.get("tools") or {})


def system_prompt(ctx: RunContext) -> str | None:
    """The configured system prompt (`prompts.system`, null = the one derived from the configured
    tools), if the model uses one."""
    if not bool(ctx.cfg.model.get("use_system_prompt", False)):
        return None
    configured = ctx.cfg.get("prompts", {}).get("system")
    return str(configured) if configured else tool_grammar(ctx).system_prompt


def check_search_corpus(ctx: RunContext) -> None:
    """Fail before any work when a corpus-backed search (bm25 | dense) has no corpus file,
    naming the key to set (benchmark tasks write no corpus; the world stage writes one)."""
    from etagent.config.validate import ConfigError

    search = ctx.cfg.get("tools", {}).get("search")
    if search is None or str(search.get("backend")) not in ("bm25", "dense"):
        return
    raw = str(OmegaConf.to_container(search, resolve=False).get("corpus_path") or "")
    path = search.get("corpus_path")
    if (ctx.world_dir / "corpus.jsonl").exists() and raw in ("", "${paths.run_dir}/world/corpus.jsonl"):
        return  # make_toolset uses this run's world corpus
    if not path or not Path(str(path)).is_file():
        raise ConfigError(
            f"tools.search.corpus_path: no search corpus at {path!r} (backend={search.get('backend')}; only the "
            "embedded world writes one): set tools.search.corpus_path to a JSONL corpus, or use "
            "tools.search.backend=cache (tools.search.cache_file) or http (tools.search.url)")


def make_toolset(ctx: RunContext):
    """The tool set; on the embedded world the search corpus is this run's `world/corpus.jsonl`."""
    from etagent.tools import build_toolset

    check_search_corpus(ctx)
    tools_cfg = OmegaConf.to_container(ctx.cfg.tools, resolve=False)
    corpus = ctx.world_dir / "corpus.jsonl"
    search = tools_cfg.get("search") if isinstance(tools_cfg, dict) else None
    if isinstance(search, dict) and corpus.exists() and "corpus_path" in search:
        configured = str(search.get("corpus_path") or "")
        if configured in ("", "${paths.run_dir}/world/corpus.jsonl") or Path(configured) == corpus:
            search["corpus_path"] = str(corpus)  # the default: this run's world (also after init_from/resume)
            if "cache_path" in search and search.get("cache_path"):
                search["cache_path"] = str(ctx.world_dir / "search_cache.sqlite")
        else:  # an explicit corpus is honoured, never silently replaced by the world's
            import logging

            logging.getLogger(__name__).warning(
                "tools.search.corpus_path=%s is used instead of the task's corpus %s", configured, corpus)
    node = OmegaConf.create(tools_cfg)
    node._set_parent(ctx.cfg)  # keep ${...} interpolations resolvable against the root
    return build_toolset(node)


def make_backend(ctx: RunContext, policy: Any, tokenizer: Any = None):
    """A generation backend for a policy (a loaded model for `hf`, a path for vllm/openai)."""
    target = str(ctx.cfg.backend._target_)
    if target.endswith("HFBackend"):
        return build(ctx.cfg.backend, "backend", model=policy, tokenizer=tokenizer)
    if target.endswith("VLLMBackend"):
        return build(ctx.cfg.backend, "backend", model=str(policy), tokenizer=tokenizer)
    # a server: it already serves the policy under `backend.model`; we only tokenise
    return build(ctx.cfg.backend, "backend", tokenizer=tokenizer)


def is_hf(ctx: RunContext) -> bool:
    return str(ctx.cfg.backend._target_).endswith("HFBackend")


def load_policy(ctx: RunContext, path: Path):
    from etagent.models.factory import load_policy as _load

    return _load(path, dtype=str(ctx.cfg.model.get("dtype", "float32")), device=str(ctx.cfg.device))


def policy_backend(ctx: RunContext, path: Path):
    """(backend, model or None) for a policy checkpoint: the hf backend shares an in-process
    model; vllm/openai load or serve the checkpoint themselves, so only the tokenizer is read."""
    if is_hf(ctx):
        model, tok = load_policy(ctx, path)
        return make_backend(ctx, model, tok), model
    from etagent.models.tokenizer import load_tokenizer

    return make_backend(ctx, path, load_tokenizer(path)), None


def grading_policy(ctx: RunContext, qa_metric: str | None = None):
    """The run's one :class:`etagent.grading.GradingPolicy` (config ``grading``); a stage
    passes its own ``qa_metric`` (``reward.qa_metric``, ``eval.qa_metric``), which default to
    ``grading.qa_metric``."""
    from etagent.grading import QA_SUCCESS_THRESHOLD, GradingPolicy

    g = ctx.cfg.get("grading") or {}
    return GradingPolicy(qa_metric=str(qa_metric or g.get("qa_metric") or "f1"),
                         qa_threshold=float(g.get("qa_threshold", QA_SUCCESS_THRESHOLD)))


def make_engine(ctx: RunContext, backend: Any, toolset: Any, policy: Any = None, **stage: Any):
    """A rollout engine grading with ``policy`` (default: :func:`grading_policy`). ``stage``: the
    calling stage's own engine settings over the ``rollout`` group's (``budget``,
    ``answer_extraction``: e.g. ``eval.budget``, ``flywheel.budget``)."""
    return build(ctx.cfg.rollout, "rollout", backend=backend, toolset=toolset,
                 grader=policy if policy is not None else grading_policy(ctx), system_prompt=system_prompt(ctx),
                 **stage)


def sft_config(ctx: RunContext, which: str):
    """SFT config for `seed` or `ase`: the `train` group with that stage's overrides."""
    return build(ctx.cfg.train, f"train ({which})", **(ctx.cfg.get(f"{which}_sft") or {}))
