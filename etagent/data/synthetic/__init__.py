"""Embedded synthetic task suite: arithmetic + a fictional knowledge world with exact tool plans."""

from .knowledge_world import World, build_world
from .suite import DEFAULT_MIX, DEFAULT_WORLD, QTYPES, SPLITS, SyntheticTask

__all__ = ["SyntheticTask", "World", "build_world", "QTYPES", "SPLITS", "DEFAULT_MIX", "DEFAULT_WORLD"]
