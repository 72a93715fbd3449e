"""Group-relative efficiency reward (method-spec section 6), as tensor ops over groups.

Components per rollout, stacked as ``[P prompts, G rollouts, C]`` (:data:`COMPONENTS`):
correctness (math 0/1, QA F1 or EM), number of tool calls ``k``, response length ``L``,
format validity. The shaped reward of rollout i in its group is

    score_i = correctness_i * f_tool_i * f_len_i + format_penalty_i
    f_tool_i = 2 / (1 + exp(sigma_tool * (k_i - mean_k)))
    z_i      = (L_i - mean_L) / std_L     (population std; all 0 when std_L == 0)
    f_len_i  = 2 / (1 + exp(sigma_len * (z_i - mean_z)))
    format_penalty_i = -1 if the tag grammar is violated else 0

Correctness counts only from a well-formed answer block: the ``\\boxed{}`` of a closed
``<answer>`` block (:func:`etagent.grading.block_answer`), as in the official reward; a
response that boxes its answer in ``<think>`` or plain text gets correctness 0 (reward =
format penalty only). ``answer_extraction=official`` reads the answer as the released reward
does instead (an answer block must exist; then math takes the last ``\\boxed`` anywhere:
:func:`etagent.grading.official_reward_answer`); the RL engine grades with it. Which grammar
violations count is ``format_rules``: ``strict`` (etagent default: the official rules plus
``unknown_tag`` and ``text_after_answer``) or ``official`` (exactly the released
``validate_format``: :func:`etagent.protocol.official_format_errors`).
Calls are counted by paired tags of the run's grammar (official ``count_valid_tags``:
``Trajectory.n_calls``), so a configured tool's calls count too.

Both factors are 1 at the group mean, up to 2 below it, down to 0 above it. With
``mode="correctness"`` (the baseline, ``reward=correctness``) score = correctness +
format_penalty. ``2 / (1 + exp(x))`` is computed as ``2 * sigmoid(-x)`` (same value,
no overflow).

sigma schedule (:func:`sigma_schedule`, applied in one place: :meth:`RewardFn.sigmas`):
``linear_decay`` multiplies sigma by (T - t) / (T - 1) over the T steps of a stage (t = 1..T,
i.e. 1 at the first step, 0 at the last), as the official reward manager's
``efficiency_sigma_factor``; ``constant`` keeps it. The released stage scripts set sigma = 0
(shaping off): etagent makes sigma an explicit, logged config value instead.

:class:`RewardFn` is what the RL trainer calls (TRL's "any callable is a reward"):
``reward_fn(groups, step, total_steps, sigma0)`` -> :class:`ShapedReward` (components, shaped
rewards and the sigmas applied).

Departures from the official code: the length is the number of *model* tokens (tool
results excluded) by default (``length_source=model_tokens``; ``all_tokens`` is the
official count); QA correctness is the grading module's F1 (``qa_metric``), not the
space-deleting exact match of the official RL reward; an optional ``mask`` supports
groups of unequal size (entries outside it get reward 0 and are left out of the group
statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping, Sequence

import torch

from etagent import protocol
from etagent.grading import Grader, official_reward_answer
from etagent.records import Example, Trajectory

COMPONENTS: tuple[str, ...] = ("correctness", "n_calls", "length", "format_ok")
CORRECTNESS, N_CALLS, LENGTH, FORMAT_OK = range(len(COMPONENTS))
MODES = ("efficiency", "correctness")
SCHEDULES = ("linear_decay", "constant")
LENGTH_SOURCES = ("model_tokens", "all_tokens")
FORMAT_RULES = protocol.FORMAT_RULES


# --------------------------------------------------------------------------- tensors


def _as_pg(x: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=dtype) if not isinstance(x, torch.Tensor) else x.to(dtype)
    if t.dim() != 2:
        raise ValueError(f"reward: {name} must be shaped [prompts, group], got {tuple(t.shape)}")
    return t


def reward_components(
    correct: Any, n_calls: Any, model_tokens: Any, format_ok: Any, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Stack per-rollout inputs (nested lists or tensors, each [P, G]) into [P, G, C]."""
    parts = [
        _as_pg(correct, "correct", dtype),
        _as_pg(n_calls, "n_calls", dtype),
        _as_pg(model_tokens, "model_tokens", dtype),
        _as_pg(format_ok, "format_ok", dtype),
    ]
    shape = parts[0].shape
    for name, p in zip(COMPONENTS, parts):
        if p.shape != shape:
            raise ValueError(f"reward: {name} has shape {tuple(p.shape)}, expected {tuple(shape)}")
    return torch.stack(parts, dim=-1)


def _check_components(components: torch.Tensor) -> None:
    if components.dim() != 3 or components.shape[-1] != len(COMPONENTS):
        raise ValueError(f"reward: components must be [P, G, {len(COMPONENTS)}], got {tuple(components.shape)}")


def _group_mean(x: torch.Tensor, m: torch.Tensor, cnt: torch.Tensor) -> torch.Tensor:
    return (x * m).sum(-1, keepdim=True) / cnt


def shaping_factors(
    components: torch.Tensor, sigma_tool: float, sigma_len: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_tool, f_len), each [P, G], from components [P, G, C]."""
    _check_components(components)
    k, length = components[..., N_CALLS], components[..., LENGTH]
    m = torch.ones_like(k) if mask is None else mask.to(k.dtype)
    cnt = m.sum(-1, keepdim=True).clamp_min(1.0)
    f_tool = 2.0 * torch.sigmoid(-sigma_tool * (k - _group_mean(k, m, cnt)))
    mean_l = _group_mean(length, m, cnt)
    std_l = torch.sqrt(_group_mean((length - mean_l) ** 2, m, cnt))
    # why: identical lengths carry no signal; official sets every z to 0 then
    z = torch.where(std_l > 0, (length - mean_l) / torch.where(std_l > 0, std_l, 1.0), 0.0) * m
    f_len = 2.0 * torch.sigmoid(-sigma_len * (z - _group_mean(z, m, cnt)))
    return f_tool * m, f_len * m


def shape_rewards(
    components: torch.Tensor,
    sigma_tool: float,
    sigma_len: float,
    mode: str = "efficiency",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Shaped reward [P, G] (see module docstring)."""
    if mode not in MODES:
        raise ValueError(f"reward.mode must be one of {MODES}, got {mode!r}")
    _check_components(components)
    correct = components[..., CORRECTNESS]
    penalty = components[..., FORMAT_OK] - 1.0  # -1 when the grammar is invalid, else 0
    m = torch.ones_like(correct) if mask is None else mask.to(correct.dtype)
    if mode == "correctness":
        return (correct + penalty) * m
    f_tool, f_len = shaping_factors(components, sigma_tool, sigma_len, mask)
    return (correct * f_tool * f_len + penalty) * m


def sigma_schedule(sigma0: float, step: int, total_steps: int, kind: str = "linear_decay") -> float:
    """sigma at 0-based ``step`` of a stage of ``total_steps`` steps.

    ``linear_decay``: sigma0 * (T - t) / (T - 1) with t = step + 1 (sigma0 at the first
    step, 0 at the last; a one-step stage keeps sigma0). ``constant``: sigma0.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"reward.schedule must be one of {SCHEDULES}, got {kind!r}")
    if total_steps < 1:
        raise ValueError(f"reward: total_steps must be >= 1, got {total_steps}")
    if kind == "constant" or total_steps == 1:
        return float(sigma0)
    t = min(max(step + 1, 1), total_steps)
    return float(sigma0) * (total_steps - t) / (total_steps - 1)


# --------------------------------------------------------------------------- one rollout


def _approx_model_tokens(response_text: str, grammar: protocol.Grammar) -> int:
    """Whitespace tokens outside ``<result>`` blocks (only when no tokenizer/length given)."""
    return sum(len(s.render().split()) for s in grammar.parse(response_text).segments if s.kind != protocol.RESULT)


def score_components(
    response_text: str,
    example: Example,
    *,
    grader: Grader,
    grammar: protocol.Grammar,
    model_tokens: int | None = None,
    tokenizer: Any = None,
    format_rules: str = "strict",
    answer_extraction: str = "strict",
) -> dict[str, Any]:
    """Components of one rollout from its text (the verl reward and tests use this).

    ``grader`` and ``grammar``: the run's (the grader with the reward's ``qa_metric``);
    answer-block-only credit (``answer_extraction=official``: the released reward's reader).
    The length is ``model_tokens`` if given, else the model-token count of ``tokenizer`` (tool
    results masked), else a whitespace-token approximation outside result blocks.
    """
    parsed = grammar.parse(response_text)
    if answer_extraction not in ("strict", "official"):
        raise ValueError(f"answer_extraction must be 'strict' or 'official', got {answer_extraction!r}")
    if answer_extraction == "official":
        answer = official_reward_answer(response_text, example.domain)
        correctness = grader.grade(example, answer)
    else:
        answer, correctness = grader.grade_text(example, response_text, grammar)
    if format_rules == "official":  # the released validator reads the text (the run's tool tags)
        format_ok = not protocol.official_format_errors(response_text, grammar.tool_tags)
    else:
        format_ok = not protocol.rule_errors([e.code for e in parsed.errors], format_rules)
    if model_tokens is None:
        if tokenizer is not None:
            model_tokens = protocol.model_token_length(grammar.encode_response(tokenizer, response_text)[1])
        else:
            model_tokens = _approx_model_tokens(response_text, grammar)
    return {
        "correctness": float(correctness),
        "n_calls": parsed.num_calls,
        "length": int(model_tokens),
        "format_ok": format_ok,
        "answer": answer,
    }


def group_score(
    responses: Sequence[str],
    example: Example,
    *,
    grader: Grader,
    grammar: protocol.Grammar,
    sigma_tool: float,
    sigma_len: float,
    mode: str = "efficiency",
    lengths: Sequence[int] | None = None,
    tokenizer: Any = None,
    format_rules: str = "strict",
) -> list[dict[str, Any]]:
    """Shaped scores of one group of responses to ``example`` (one dict per response)."""
    comps = [
        score_components(
            r, example, grader=grader, grammar=grammar, model_tokens=None if lengths is None else lengths[i],
            tokenizer=tokenizer, format_rules=format_rules,
        )
        for i, r in enumerate(responses)
    ]
    t = reward_components(
        [[c["correctness"] for c in comps]],
        [[c["n_calls"] for c in comps]],
        [[c["length"] for c in comps]],
        [[float(c["format_ok"]) for c in comps]],
        dtype=torch.float64,
    )
    scores = shape_rewards(t, sigma_tool, sigma_len, mode)[0].tolist()
    return [dict(c, score=s) for c, s in zip(comps, scores)]


# --------------------------------------------------------------------------- config


def trajectory_length(traj: Trajectory, length_source: str = "model_tokens") -> int:
    if length_source == "model_tokens":
        return traj.model_tokens
    if length_source == "all_tokens":
        return len(traj.response_ids)
    raise ValueError(f"reward.length_source must be one of {LENGTH_SOURCES}, got {length_source!r}")


@dataclass
class ShapedReward:
    """One call of :class:`RewardFn`: what the trainer optimises and logs."""

    components: torch.Tensor  # [P, G, C] (:data:`COMPONENTS`)
    rewards: torch.Tensor  # [P, G] shaped
    sigma_tool: float  # the sigmas applied at this step (0 for mode=correctness: no shaping)
    sigma_len: float


@dataclass(kw_only=True)
class RewardFn:
    """The ``reward`` config group: ``reward=efficiency`` (paper) or ``reward=correctness``.

    ``grammar`` (the run's) counts the tool calls of f_tool, so every configured tool's calls
    count. The trainer calls the object: ``reward_fn(groups, step, total_steps, sigma0)``.
    """

    grammar: protocol.Grammar = field(repr=False, compare=False)
    mode: Literal["efficiency", "correctness"] = "efficiency"
    sigma_tool: float = 0.2
    sigma_len: float = 0.5
    schedule: Literal["linear_decay", "constant"] = "linear_decay"
    length_source: Literal["model_tokens", "all_tokens"] = "model_tokens"
    qa_metric: Literal["f1", "em"] = "f1"
    format_rules: Literal["strict", "official"] = "strict"
    # how the RL engine reads the credited answer: strict (closed answer block's \boxed) | official
    # (released reward: an answer block must exist, then math takes the last \boxed anywhere)
    answer_extraction: Literal["strict", "official"] = "strict"

    def __post_init__(self) -> None:
        if not isinstance(self.grammar, protocol.Grammar):
            raise TypeError(f"reward: grammar must be the run's etagent.protocol.Grammar, got {type(self.grammar).__name__}")
        checks = {
            "answer_extraction": (self.answer_extraction, ("strict", "official")),
            "mode": (self.mode, MODES),
            "schedule": (self.schedule, SCHEDULES),
            "length_source": (self.length_source, LENGTH_SOURCES),
            "qa_metric": (self.qa_metric, ("f1", "em")),
            "format_rules": (self.format_rules, FORMAT_RULES),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"reward.{key} must be one of {allowed}, got {value!r}")
        for key in ("sigma_tool", "sigma_len"):
            v = float(getattr(self, key))
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"reward.{key} must be a finite number >= 0, got {v!r}")

    def settings(self) -> dict[str, Any]:
        """The config values (what a run summary records)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "grammar"}

    @property
    def engine_extraction(self) -> str:
        """The RL rollout engine's ``answer_extraction`` for this reward."""
        return "official_reward" if self.answer_extraction == "official" else "strict"

    def sigmas(self, step: int, total_steps: int, sigma0: Mapping[str, float | None] | None = None
               ) -> tuple[float, float]:
        """(sigma_tool, sigma_len) applied at 0-based ``step`` of a ``total_steps`` stage (log them):
        the schedule of ``sigma0`` (a stage's own ``sigma_tool``/``sigma_len``; None entries keep
        this reward's), none at all for ``mode=correctness``."""
        if self.mode == "correctness":
            return 0.0, 0.0  # no shaping: log what is actually applied
        s0 = dict(sigma0 or {})
        s_tool = self.sigma_tool if s0.get("sigma_tool") is None else float(s0["sigma_tool"])
        s_len = self.sigma_len if s0.get("sigma_len") is None else float(s0["sigma_len"])
        return (sigma_schedule(s_tool, step, total_steps, self.schedule),
                sigma_schedule(s_len, step, total_steps, self.schedule))

    def format_ok(self, traj: Trajectory) -> bool:
        """No format error under ``format_rules``: ``strict`` from the stored codes, ``official`` by the
        released validator on the text with the run's tool tags."""
        if self.format_rules == "official":
            return not protocol.official_format_errors(traj.response_text, self.grammar.tool_tags)
        return not protocol.rule_errors(traj.format_errors, self.format_rules)

    def components(self, groups: Sequence[Sequence[Trajectory]]) -> torch.Tensor:
        """[P, G, C] from graded trajectories (``traj.score`` already set by the rollout)."""
        sizes = {len(g) for g in groups}
        if len(sizes) > 1:
            raise ValueError(f"reward: groups must have equal size, got sizes {sorted(sizes)}")
        return reward_components(
            [[t.score for t in g] for g in groups],
            [[t.n_calls(self.grammar) for t in g] for g in groups],  # paired tags (official count)
            [[trajectory_length(t, self.length_source) for t in g] for g in groups],
            [[float(self.format_ok(t)) for t in g] for g in groups],
        )

    def shape(self, components: torch.Tensor, sigma_tool: float, sigma_len: float,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        """Shaped rewards [P, G] of ``components`` at the given sigmas (this reward's mode)."""
        return shape_rewards(components, sigma_tool, sigma_len, self.mode, mask)

    def __call__(self, groups: Sequence[Sequence[Trajectory]], step: int = 0, total_steps: int = 1,
                 sigma0: Mapping[str, float | None] | None = None) -> ShapedReward:
        """Shaped rewards of one step's ``[P][G]`` graded trajectories (one tensor op)."""
        sigma_tool, sigma_len = self.sigmas(step, total_steps, sigma0)
        comps = self.components(groups)
        return ShapedReward(comps, self.shape(comps, sigma_tool, sigma_len), sigma_tool, sigma_len)
