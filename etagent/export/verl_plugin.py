"""verl plugin: the ``etagent`` advantage estimator (ET-Agent's group-relative reward shaping).

verl 0.9.1 scores one sample at a time (its reward-loop managers ``naive``/``dapo``/``gdpo``/
``limited`` call ``compute_score`` per rollout; there is no batch manager), so the shaping
that needs a rollout's siblings cannot live in the reward function. It lives here, in an
advantage estimator registered through verl's own registry
(``verl.trainer.ppo.core_algos.register_adv_est``), selected with
``algorithm.adv_estimator=etagent``:

1. per-sample components come from :func:`etagent.export.verl_reward.compute_score`'s
   result dict, which verl's reward loop stores as per-sample reward keys
   (``correctness``, ``n_calls``, ``model_tokens``, ``format_ok``) -- the way verl's GDPO
   estimator reads its reward keys;
2. :func:`etagent.export.verl_reward.shape_group_scores` shapes them within each group
   (verl's ``uid``: the n rollouts of one prompt), with ``algorithm.etagent.sigma_tool`` /
   ``sigma_len`` / ``mode`` (defaults: etagent's ``reward`` config);
3. the shaped score replaces the token-level reward and verl's own GRPO estimator
   (``compute_grpo_outcome_advantage``) normalises it within the group, as in the paper.

Loading: verl imports this module on ``import verl`` through the ``verl.plugins`` entry point
that ``pip install etagent`` declares (or set ``VERL_USE_EXTERNAL_MODULES=etagent.export.verl_plugin``,
which fails loudly where an entry point would fail quietly).

Hand-off (verl <= 0.9.1): ``verl.trainer.ppo.ray_trainer.compute_advantage`` passes the
per-sample reward keys (``non_tensor_batch``, ``batch``) to the ``gdpo`` estimator only. This
module wraps that one function, when ``ray_trainer`` is imported, so ``etagent`` gets them
too; every other estimator goes to verl's function untouched. The keys exist in verl's
legacy trainer (``trainer.use_v1=false``); the v1 trainer hands an estimator ``uid`` and
tensors only, and the estimator then stops with an error saying so.

Departure: sigma is constant within a verl job (verl does not pass the step), i.e. no
per-stage linear decay (:func:`etagent.rl.reward.sigma_schedule`); run one job per stage.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
from typing import Any, Mapping

import numpy as np
import torch
from verl.trainer.ppo import core_algos

from etagent.export.verl_reward import _DEFAULTS, COMPONENT_KEYS, shape_group_scores

NAME = "etagent"
_RAY_TRAINER = "verl.trainer.ppo.ray_trainer"


def _settings(config: Any) -> dict[str, Any]:
    node = config.get(NAME, None) if config is not None and hasattr(config, "get") else None
    node = dict(node) if isinstance(node, Mapping) or hasattr(node, "items") else {}
    unknown = sorted(set(node) - {"sigma_tool", "sigma_len", "mode"})
    if unknown:
        raise ValueError(f"algorithm.{NAME}: unknown key(s) {unknown}; expected sigma_tool, sigma_len, mode")
    return {
        "sigma_tool": float(node.get("sigma_tool", _DEFAULTS["sigma_tool"])),
        "sigma_len": float(node.get("sigma_len", _DEFAULTS["sigma_len"])),
        "mode": str(node.get("mode", _DEFAULTS["mode"])),
    }


def shaped_scores(non_tensor_batch: Mapping[str, Any], index: Any, config: Any = None) -> list[float]:
    """ET-Agent shaped score of every sample, grouped by ``index`` (verl's ``uid``)."""
    missing = [k for k in COMPONENT_KEYS if k not in non_tensor_batch]
    if missing:
        raise ValueError(
            f"adv_estimator={NAME}: per-sample reward key(s) {missing} not in the batch (have "
            f"{sorted(non_tensor_batch)}). Score with etagent/export/verl_reward.py:compute_score "
            "(it returns them) and run verl's legacy trainer (trainer.use_v1=false), which keeps them."
        )
    cols = {k: [float(v) for v in np.asarray(non_tensor_batch[k]).tolist()] for k in COMPONENT_KEYS}
    cols["group"] = [g.item() if hasattr(g, "item") else g for g in np.asarray(index, dtype=object).tolist()]
    return shape_group_scores(cols, group_key="group", **_settings(config))


@core_algos.register_adv_est(NAME)
def compute_etagent_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
    non_tensor_batch: Mapping[str, Any] | None = None,
    batch: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages of the ET-Agent shaped scores (module docstring)."""
    if non_tensor_batch is None or batch is None:
        raise ValueError(
            f"adv_estimator={NAME} needs the per-sample reward keys; import etagent.export.verl_plugin "
            "before verl.trainer.ppo.ray_trainer (the verl.plugins entry point does) so compute_advantage "
            "passes them, as it does for gdpo"
        )
    scores = torch.tensor(shaped_scores(non_tensor_batch, index, config), dtype=torch.float32)
    # the shaped score sits where verl puts the outcome reward: the last valid response token
    prompt_len = batch["prompts"].size(1)
    last = batch["attention_mask"][:, prompt_len:].sum(dim=1) - 1
    rewards = torch.zeros_like(response_mask, dtype=torch.float32)
    rewards[torch.arange(rewards.size(0)), last] = scores.to(rewards.device)
    return core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=rewards, response_mask=response_mask, index=index, epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, config=config,
    )


def _wrap_compute_advantage(module: Any) -> None:
    """Give ``etagent`` the reward keys ``compute_advantage`` hands only to ``gdpo`` (verl <= 0.9.1)."""
    original = module.compute_advantage
    if getattr(original, "_etagent_handoff", False):
        return

    @functools.wraps(original)
    def compute_advantage(data, adv_estimator, *args, **kwargs):
        if str(getattr(adv_estimator, "value", adv_estimator)) != NAME:
            return original(data, adv_estimator, *args, **kwargs)
        config = kwargs.get("config", args[4] if len(args) > 4 else None)
        norm = kwargs.get("norm_adv_by_std_in_grpo", args[3] if len(args) > 3 else True)
        if "response_mask" not in data.batch.keys():
            data.batch["response_mask"] = module.compute_response_mask(data)
        adv, ret = core_algos.get_adv_estimator_fn(NAME)(
            token_level_rewards=data.batch["token_level_rewards"], response_mask=data.batch["response_mask"],
            index=data.non_tensor_batch["uid"], norm_adv_by_std_in_grpo=norm, config=config,
            non_tensor_batch=data.non_tensor_batch, batch=data.batch,
        )
        data.batch["advantages"] = adv
        data.batch["returns"] = ret
        return data

    compute_advantage._etagent_handoff = True
    module.compute_advantage = compute_advantage


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Wraps ``ray_trainer.compute_advantage`` right after that module executes (it is heavy:
    importing it here would slow every verl process that loads plugins)."""

    def find_spec(self, name, path=None, target=None):
        if name != _RAY_TRAINER:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            _wrap_compute_advantage(module)

        spec.loader.exec_module = exec_and_wrap
        return spec


if _RAY_TRAINER in sys.modules:
    _wrap_compute_advantage(sys.modules[_RAY_TRAINER])
elif not any(isinstance(f, _WrapOnImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _WrapOnImport())
