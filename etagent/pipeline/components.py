"""Builders shared by stages: the run environment, example splits, backends, rollout engines, SFT configs.

:func:`run_env` builds the run's :class:`etagent.runenv.RunEnv` once per run (grammar, grader
with the task's domain rules, the lazily built tool set over this run's world corpus, backend
kind, dtype) and every builder here hands its pieces on explicitly. The wiring between config
groups that several stages share lives here; a stage builds its own group's component itself
(``build(ctx.cfg.flywheel)``, ``build(ctx.cfg.eval)``, ...), passing what it needs from the
environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from etagent.config import build
from etagent.pipeline.context import RunContext
from etagent.records import Example, read_jsonl
from etagent.runenv import RunEnv

_ENV_KEY = "run_env"


def run_env(ctx: RunContext) -> RunEnv:
    """The run's environment, built once (kept in ``ctx.cache``; the runner closes it at the end)."""
    env = ctx.cache.get(_ENV_KEY)
    if env is None:
        env = ctx.cache[_ENV_KEY] = RunEnv.from_config(ctx.cfg, toolset_factory=lambda: make_toolset(ctx))
        ctx.closers.append(env.close)
    return env


def load_split(ctx: RunContext, split: str) -> list[Example]:
    """Examples of a split as written by the `world` stage; their domains must be the task's."""
    key = f"examples:{split}"
    if key not in ctx.cache:
        f = ctx.world_dir / f"{split}.jsonl"
        if f.exists():
            examples = list(read_jsonl(f, Example))
            domains = run_env(ctx).grader.domains
            bad = next((e for e in examples if e.domain not in domains), None)
            if bad is not None:
                raise ValueError(f"{f}: example {bad.id!r} has domain {bad.domain!r}, not one of the task's "
                                 f"domains {sorted(domains)} (task.domains)")
            ctx.cache[key] = examples
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
    """A new tool set (stages use the run's, ``run_env(ctx).toolset``, built by this on first use);
    on the embedded world the search corpus is this run's `world/corpus.jsonl`."""
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
    """A generation backend for a policy: a loaded model for `hf`, a checkpoint path for `vllm`;
    a server already serves the policy under `backend.model`, so it only tokenises."""
    kind = run_env(ctx).backend_kind
    if kind == "hf":
        return build(ctx.cfg.backend, "backend", model=policy, tokenizer=tokenizer)
    if kind == "vllm":
        return build(ctx.cfg.backend, "backend", model=str(policy), tokenizer=tokenizer)
    return build(ctx.cfg.backend, "backend", tokenizer=tokenizer)


def load_policy(ctx: RunContext, path: Path):
    """(model, tokenizer) of a checkpoint, with the run's dtype and device."""
    from etagent.models.factory import load_policy as _load

    env = run_env(ctx)
    return _load(path, dtype=env.dtype, device=env.device)


def policy_backend(ctx: RunContext, path: Path):
    """(backend, model or None) for a policy checkpoint: the hf backend shares an in-process
    model; vllm/openai load or serve the checkpoint themselves, so only the tokenizer is read."""
    if run_env(ctx).backend_kind == "hf":
        model, tok = load_policy(ctx, path)
        return make_backend(ctx, model, tok), model
    from etagent.models.tokenizer import load_tokenizer

    return make_backend(ctx, path, load_tokenizer(path)), None


def make_engine(ctx: RunContext, backend: Any, grader: Any, **stage: Any):
    """A rollout engine over the run's tool set and grammar, grading with ``grader`` (the run's,
    ``run_env(ctx).grader``, or a stage's derivation of it: its ``qa_metric``, a judge). ``stage``:
    the calling stage's own engine settings over the ``rollout`` group's (``budget``,
    ``answer_extraction``: e.g. ``eval.budget``, ``flywheel.budget``)."""
    env = run_env(ctx)
    return build(ctx.cfg.rollout, "rollout", backend=backend, toolset=env.toolset, grader=grader, grammar=env.grammar,
                 system_prompt=env.system_prompt, **stage)


def sft_config(ctx: RunContext, which: str):
    """SFT config for `seed` or `ase`: the `train` group with that stage's overrides."""
    return build(ctx.cfg.train, f"train ({which})", **(ctx.cfg.get(f"{which}_sft") or {}))
