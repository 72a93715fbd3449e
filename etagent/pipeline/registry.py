"""The one list of pipeline stages: name, module and a one-line help, in run order.

The runner, the config validator (``etagent.config.validate.STAGES``), the report and the
CLI help all read this list, so adding a stage is a ``stage_<name>.py`` module with a
``run(ctx) -> dict`` function plus one line here (and the name in ``conf/config.yaml``'s
default ``stages`` if it runs by default). Modules are imported only when a stage runs:
validating a config must stay cheap (no torch import). Data only: the config validator and the
report read it, so it imports nothing of etagent but the error type (layer ``base``,
docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str  # dotted path of the module whose ``run(ctx)`` runs the stage
    help: str

    @property
    def run(self) -> Callable[[Any], dict | None]:
        return importlib.import_module(self.module).run


def _spec(name: str, help: str) -> StageSpec:
    return StageSpec(name, f"etagent.pipeline.stage_{name}", help)


#: Run order: each stage reads only what earlier stages wrote.
REGISTRY: tuple[StageSpec, ...] = (
    _spec("world", "task splits, search corpus, teacher trajectories, tokenizer, initial model"),
    _spec("seed", "the seed agent (SFT on the flawed teacher; a pretrained model is its own seed)"),
    _spec("flywheel", "self-evolving data flywheel: sample, split, propose, verify, merge (Part I)"),
    _spec("ase", "action-space exploration SFT on the flywheel's selection (Part II-a)"),
    _spec("rl", "Pareto sampling + curriculum RL (Part II-b/c)"),
    _spec("eval", "every policy of the run on the test split"),
    _spec("report", "report.md, plots and results tables"),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in REGISTRY)
_BY_NAME = {s.name: s for s in REGISTRY}


def get(name: str, key: str = "stages") -> StageSpec:
    """The stage called ``name``; an unknown one raises a ConfigError naming ``key``."""
    try:
        return _BY_NAME[str(name)]
    except KeyError:
        from etagent.config.errors import ConfigError

        raise ConfigError(f"{key}: unknown stage {name!r} (known: {list(STAGE_NAMES)})") from None


def help_text() -> str:
    """The stage list for the CLI help, in run order."""
    width = max(len(n) for n in STAGE_NAMES)
    lines = [f"  {s.name:<{width}}  {s.help}" for s in REGISTRY]
    return "== Stages (run in this order; `stages=[...]` picks a subset) ==\n" + "\n".join(lines)
