"""Reinforcement learning: Pareto question selection, reward shaping, GRPO, curriculum."""
