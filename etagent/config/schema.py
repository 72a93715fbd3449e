"""Typed schemas of the top-level config nodes that are not components (no ``_target_``).

Components are typed by their targets (dataclass fields or constructor parameters, checked by
:mod:`etagent.config.validate`); these nodes are read field by field by the pipeline, so their
keys and types are declared here. ``seed_sft`` / ``ase_sft`` are partial overrides of the
``train`` node and are checked against the ``train`` target instead (see ``OVERRIDES_OF``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

QAMetric = Literal["f1", "em"]


@dataclasses.dataclass
class RootSchema:
    """The scalar keys of ``conf/config.yaml`` (stages: :data:`etagent.config.validate.STAGES`)."""

    run_name: str = "etagent"
    seed: int = 0
    resume: Any = False  # bool or a run directory path
    device: Literal["auto", "cpu", "cuda"] = "auto"
    stages: list = dataclasses.field(default_factory=list)
    export: Literal["verl"] | None = None
    init_from: Any = None
    init_stages: list = dataclasses.field(default_factory=lambda: ["world", "seed"])


@dataclasses.dataclass
class GradingSchema:
    """``grading``: the run's success policy (with ``task.domains``: etagent.grading.Grader, built by
    etagent.runenv.RunEnv)."""

    qa_metric: QAMetric = "f1"
    qa_threshold: float = 0.75


@dataclasses.dataclass
class PromptsSchema:
    """``prompts``: prompt text overrides."""

    system: str | None = None  # null = the configured tools' grammar prompt (etagent.protocol.Grammar.system_prompt)


@dataclasses.dataclass
class PathsSchema:
    """``paths``: where a run reads and writes (interpolations, resolved by Hydra)."""

    run_dir: str = ""
    shared_dir: str = ""
    benchmarks_dir: str = ""


#: Top-level nodes without a ``_target_`` and their schema.
SECTIONS: dict[str, type] = {"grading": GradingSchema, "prompts": PromptsSchema, "paths": PathsSchema}
#: Top-level nodes that override some keys of a component node (checked against its target).
OVERRIDES_OF: dict[str, str] = {"seed_sft": "train", "ase_sft": "train"}
#: Top-level nodes that hold a collection of components (one ``_target_`` node or null each).
COLLECTIONS = ("tools",)
