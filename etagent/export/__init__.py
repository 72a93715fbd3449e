"""Hand-off to external RL engines (verl): parquet export and a loadable reward module.

* :mod:`etagent.export.verl` -- Pareto-selected questions -> verl RL parquet
  (schema of the authors' ``verl_valid_reference.parquet``), and back.
* :mod:`etagent.export.verl_reward` -- ``compute_score`` for verl's
  ``custom_reward_function`` and the group-relative ET-Agent shaping over a batch.
* ``python -m etagent.export verl --run-dir RUN --out FILE`` -- the command line.

Imports stay lazy: the reward module pulls in torch and math-verify, the exporter pyarrow.
"""

from __future__ import annotations

__all__ = ["export_verl", "export_from_run", "read_verl", "compute_score", "shape_group_scores"]


def __getattr__(name: str):
    if name in ("export_verl", "export_from_run", "read_verl"):
        from etagent.export import verl

        return getattr(verl, name)
    if name in ("compute_score", "shape_group_scores"):
        from etagent.export import verl_reward

        return getattr(verl_reward, name)
    raise AttributeError(f"module 'etagent.export' has no attribute {name!r}")
