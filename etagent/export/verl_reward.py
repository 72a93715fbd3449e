"""ET-Agent reward for verl: ``custom_reward_function`` entry points over etagent's own code.

verl loads this file by path (``custom_reward_function.path=<repo>/etagent/export/verl_reward.py``)
and calls one of:

* :func:`compute_score` -- ``custom_reward_function.name=compute_score`` with the
  ``naive`` (per-sample) reward manager. One rollout alone has no group, so its score is
  the ``reward=correctness`` baseline: ``correctness + format_penalty`` (both shaping
  factors are 1 at the mean of a group of one). verl 0.9.1 (per-sample reward loop only):
  train with it and ``algorithm.adv_estimator=etagent`` (:mod:`etagent.export.verl_plugin`),
  which shapes the components it returns within each group; tested against verl itself.
* :func:`compute_score_batch` -- ``custom_reward_function.name=compute_score_batch`` with
  ``reward_model.reward_manager=batch`` (older verl releases that have a batch manager; 0.9.1
  has none): scores every rollout of the batch, groups them by
  ``extra_info.index`` (the n rollouts of one prompt share it) and applies the
  group-relative ET-Agent shaping (:func:`shape_group_scores`).
* :func:`shape_group_scores` -- the shaping alone over component dicts/arrays (for a custom
  reward manager or advantage estimator).

Correctness counts only from a well-formed ``<answer>..\\boxed{..}..</answer>`` (as the
RL reward); ``format_rules`` (``strict`` | ``official``, a ``reward_kwargs`` entry) picks the
grammar rules of the format penalty, as ``reward.format_rules`` does in etagent's RL, and
``answer_extraction`` (``strict`` | ``official``: the released reward's reader) the answer, as
``reward.answer_extraction``.

Nothing is re-implemented here: components come from
:func:`etagent.rl.reward.score_components` and shaping from
:func:`etagent.rl.reward.shape_rewards`. verl calls these functions without a run, so the run
environment is built explicitly from etagent's config composed with ``overrides`` (a
``reward_kwargs`` entry, Hydra syntax, e.g. ``["tools=with_calculator"]``; default: the default
config): the grammar of its ``tools`` (a configured tool's calls count), the grader of its task's
answer domains (``task.domains``: a new domain's rule grades its rows) and ``grading``. The
domain of a row is ``domain`` (``reward_kwargs``), else its ``data_source`` (the exporter's
names, the paper benchmarks, or a domain's own name). etagent must be importable in verl's
workers (``pip install -e <repo>``).

Length (``model_tokens``), in order of precedence: a ``model_tokens`` keyword, or
``extra_info["model_tokens"]`` (an agent loop that knows its response mask can put it
there); else, with ``tokenizer_path`` (a ``reward_kwargs`` entry), the exact count of
model tokens of the re-encoded text with ``<result>`` blocks masked; else an
approximation: whitespace-separated pieces outside ``<result>`` blocks. The shaping only
uses z-scores of lengths within a group, so a consistent approximation ranks siblings
the same way in most cases, but it is not the paper's token count.

Departures: sigma is constant within a verl run (``reward_kwargs.sigma_tool/sigma_len``);
verl does not pass the training step to reward functions, so the per-stage linear decay
of :func:`etagent.rl.reward.sigma_schedule` is not applied (run one verl job per stage
with the sigma you want, or 0 to switch shaping off as the official scripts do).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any, Mapping, Sequence

import torch

from etagent.data.benchmarks import normalize_answers
from etagent.records import MATH, QA, Example
from etagent.rl.reward import RewardFn, reward_components, score_components, shape_rewards

#: data_source -> domain: the exporter's names, the domains themselves, the paper benchmarks.
DOMAIN_BY_SOURCE: dict[str, str] = {
    "math_effi_rl": MATH,
    "qa_effi_rl": QA,
    MATH: MATH,
    QA: QA,
    **{b: MATH for b in ("aime24", "amc23", "math500")},
    **{b: QA for b in ("2wiki", "hotpotqa", "musique", "bamboogle")},
}
#: the reward config's defaults (conf/reward = etagent.rl.reward.RewardFn's, tests/test_config_drift.py)
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(RewardFn)
                             if f.default is not dataclasses.MISSING}
COMPONENT_KEYS = ("correctness", "n_calls", "model_tokens", "format_ok")


@lru_cache(maxsize=8)
def run_env(overrides: tuple[str, ...] = ()) -> Any:
    """The run environment (grammar, grader) of etagent's config composed with ``overrides``,
    once per process and overrides (nothing is built but the config)."""
    from etagent.config.compose import compose_etagent
    from etagent.runenv import RunEnv

    return RunEnv.from_config(compose_etagent(overrides))


def domain_of(data_source: str, domain: str | None, domains: Mapping[str, Any]) -> str:
    """The grading domain of a verl ``data_source`` (``domain`` overrides): one of ``domains``
    (the run's grader's)."""
    if domain is not None:
        if domain not in domains:
            raise ValueError(f"verl_reward: domain must be one of {sorted(domains)} (task.domains), got {domain!r}")
        return domain
    ds = str(data_source)
    found = DOMAIN_BY_SOURCE.get(ds, ds)
    if found in domains:
        return found
    raise ValueError(
        f"verl_reward: unknown data_source {ds!r}; expected one of {sorted(set(DOMAIN_BY_SOURCE) | set(domains))} "
        "(or pass domain=<a task.domains name> through custom_reward_function.reward_kwargs)"
    )


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _info(extra_info: Any) -> Mapping[str, Any]:
    return extra_info if isinstance(extra_info, Mapping) else {}


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    qa_metric: str = _DEFAULTS["qa_metric"],
    domain: str | None = None,
    model_tokens: int | None = None,
    tokenizer_path: str | None = None,
    format_rules: str = _DEFAULTS["format_rules"],
    answer_extraction: str = _DEFAULTS["answer_extraction"],
    overrides: Sequence[str] = (),
    **kwargs: Any,
) -> dict[str, float]:
    """Score one rollout (verl ``custom_reward_function`` signature).

    ``ground_truth``: a gold string or a list/array of aliases (``reward_model.ground_truth``).
    ``overrides``: etagent config overrides whose tools and task domains the run uses (module docstring).
    Returns ``score`` (correctness + format_penalty) and the raw components:
    ``correctness`` (math 0/1, QA F1 or EM), ``acc`` (= correctness, the key verl's
    validation metrics look for), ``n_calls``, ``model_tokens``, ``format_ok`` (1.0/0.0),
    ``format_penalty`` (-1.0 or 0.0). Extra ``kwargs`` (e.g. ``sigma_*`` meant for the batch
    function) are accepted and ignored.
    """
    comps = _components(data_source, solution_str, ground_truth, extra_info, qa_metric=qa_metric,
                        domain=domain, model_tokens=model_tokens, tokenizer_path=tokenizer_path,
                        format_rules=format_rules, answer_extraction=answer_extraction, overrides=overrides)
    score = shape_group_scores([comps], group_key=None, mode="correctness")[0]
    return dict(comps, score=score)


def _components(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any,
    *,
    qa_metric: str,
    domain: str | None,
    model_tokens: int | None,
    tokenizer_path: str | None,
    format_rules: str,
    answer_extraction: str,
    overrides: Sequence[str],
) -> dict[str, float]:
    info = _info(extra_info)
    env = run_env(tuple(str(o) for o in overrides))
    try:
        answers = normalize_answers(ground_truth)
    except ValueError as exc:
        raise ValueError(f"verl_reward: bad ground_truth for index {info.get('index')!r}: {exc}") from None
    example = Example(
        id=f"{data_source}-{info.get('index', '?')}",
        question=str(info.get("question") or ""),
        answers=answers,
        domain=domain_of(data_source, domain, env.grader.domains),
        source=str(data_source),
        split=str(info.get("split") or "train"),
    )
    if model_tokens is None and info.get("model_tokens") is not None:
        model_tokens = int(info["model_tokens"])
    tok = _tokenizer(tokenizer_path) if (model_tokens is None and tokenizer_path) else None
    c = score_components(solution_str or "", example, grader=env.grader.with_metric(qa_metric), grammar=env.grammar,
                         model_tokens=model_tokens, tokenizer=tok, format_rules=format_rules,
                         answer_extraction=answer_extraction)
    fmt = 1.0 if c["format_ok"] else 0.0
    return {
        "correctness": float(c["correctness"]),
        "acc": float(c["correctness"]),
        "n_calls": float(c["n_calls"]),
        "model_tokens": float(c["length"]),
        "format_ok": fmt,
        "format_penalty": fmt - 1.0,
    }


def _group_id(item: Mapping[str, Any], group_key: str, i: int) -> Any:
    if group_key in item:
        g = item[group_key]
    elif group_key in _info(item.get("extra_info")):
        g = item["extra_info"][group_key]
    else:
        raise ValueError(f"shape_group_scores: item {i} has no {group_key!r} (nor extra_info[{group_key!r}])")
    return g.item() if hasattr(g, "item") else g  # numpy scalars -> hashable Python values


def _as_items(batch: Any) -> list[Mapping[str, Any]]:
    if isinstance(batch, Mapping):  # columns: {"correctness": [...], "n_calls": [...], ...}
        cols = {k: list(v) for k, v in batch.items()}
        sizes = {len(v) for v in cols.values()}
        if len(sizes) > 1:
            raise ValueError(f"shape_group_scores: columns have different lengths {sorted(sizes)}")
        n = sizes.pop() if sizes else 0
        return [{k: v[i] for k, v in cols.items()} for i in range(n)]
    return list(batch)


def shape_group_scores(
    batch: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    group_key: str | None = "index",
    *,
    sigma_tool: float = _DEFAULTS["sigma_tool"],
    sigma_len: float = _DEFAULTS["sigma_len"],
    mode: str = _DEFAULTS["mode"],
) -> list[float]:
    """Group-relative ET-Agent scores of a batch, in batch order.

    ``batch``: per-rollout dicts (or a dict of equal-length columns) with
    ``correctness``, ``n_calls``, ``model_tokens``, ``format_ok`` and the group id under
    ``group_key`` (top level or inside ``extra_info``); ``group_key=None`` makes the whole
    batch one group. Groups may differ in size (masked in the group statistics).
    """
    items = _as_items(batch)
    if not items:
        return []
    for i, it in enumerate(items):
        missing = [k for k in COMPONENT_KEYS if k not in it]
        if missing:
            raise ValueError(f"shape_group_scores: item {i} lacks {missing}")
    order: dict[Any, list[int]] = {}
    for i, it in enumerate(items):
        order.setdefault(0 if group_key is None else _group_id(it, group_key, i), []).append(i)
    groups = list(order.values())
    width = max(len(g) for g in groups)

    def col(key: str) -> list[list[float]]:
        return [[float(items[i][key]) for i in g] + [0.0] * (width - len(g)) for g in groups]

    comps = reward_components(*(col(k) for k in COMPONENT_KEYS), dtype=torch.float64)
    mask = torch.tensor([[1.0] * len(g) + [0.0] * (width - len(g)) for g in groups], dtype=torch.float64)
    shaped = shape_rewards(comps, float(sigma_tool), float(sigma_len), mode, mask)
    out = [0.0] * len(items)
    for row, g in enumerate(groups):
        for col_i, i in enumerate(g):
            out[i] = float(shaped[row, col_i])
    return out


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    *,
    group_key: str = "index",
    sigma_tool: float = _DEFAULTS["sigma_tool"],
    sigma_len: float = _DEFAULTS["sigma_len"],
    mode: str = _DEFAULTS["mode"],
    qa_metric: str = _DEFAULTS["qa_metric"],
    domain: str | None = None,
    tokenizer_path: str | None = None,
    format_rules: str = _DEFAULTS["format_rules"],
    answer_extraction: str = _DEFAULTS["answer_extraction"],
    overrides: Sequence[str] = (),
    return_dict: bool = True,
    **kwargs: Any,
) -> list[dict[str, float]] | list[float]:
    """verl ``batch`` reward-manager entry point: shaped scores grouped by ``extra_info[group_key]``.

    Each dict has ``score`` (shaped) plus the components of :func:`compute_score`;
    ``return_dict=False`` returns the bare scores (older verl batch managers turn a dict
    into 0.0).
    """
    n = len(solution_strs)
    if not (len(data_sources) == len(ground_truths) == n):
        raise ValueError(
            f"compute_score_batch: {len(data_sources)} data_sources, {n} solutions, {len(ground_truths)} ground truths"
        )
    infos = list(extra_infos) if extra_infos is not None else [None] * n
    if len(infos) != n:
        raise ValueError(f"compute_score_batch: {len(infos)} extra_infos for {n} solutions")
    items = []
    for i in range(n):
        c = _components(data_sources[i], solution_strs[i], ground_truths[i], infos[i], qa_metric=qa_metric,
                        domain=domain, model_tokens=None, tokenizer_path=tokenizer_path, format_rules=format_rules,
                        answer_extraction=answer_extraction, overrides=overrides)
        c["extra_info"] = infos[i]
        items.append(c)
    scores = shape_group_scores(items, group_key, sigma_tool=sigma_tool, sigma_len=sigma_len, mode=mode)
    if not return_dict:
        return scores
    return [{k: v for k, v in it.items() if k != "extra_info"} | {"score": s} for it, s in zip(items, scores)]
