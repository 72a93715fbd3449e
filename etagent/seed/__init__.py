"""Seed agent data: the scripted flawed teacher that writes seed SFT trajectories."""

from .teacher import FLAWS, FlawedTeacher, FlawRates, summarize, write_teacher_trajectories

__all__ = ["FLAWS", "FlawRates", "FlawedTeacher", "summarize", "write_teacher_trajectories"]
