"""Config helpers: start-up validation and instantiation of `_target_` nodes."""

from etagent.config.validate import ConfigError, validate
from etagent.config.build import build, build_partial

__all__ = ["ConfigError", "validate", "build", "build_partial"]
