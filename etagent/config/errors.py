"""The config error type, on its own so that every layer may raise it (the stage list, the tools,
the run environment) without importing the validator."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key."""
