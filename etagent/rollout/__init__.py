"""Multi-turn tool-integrated rollouts (``RolloutEngine``) and optional entropy branching."""

from etagent.rollout.branching import EntropyBrancher
from etagent.rollout.engine import RolloutEngine

__all__ = ["EntropyBrancher", "RolloutEngine"]
