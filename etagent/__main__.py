"""`python -m etagent` / `etagent`: the Hydra entry point that runs the configured stages.

    python -m etagent                         # the embedded default pipeline
    python -m etagent preset=smoke            # same stages in about a minute
    python -m etagent resume=true             # continue the latest matching run
    python -m etagent -m experiment=et_agent,grpo_correctness seed=0,1,2   # a sweep
    python -m etagent --cfg job               # print the composed config
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from etagent.config import ConfigError, preflight, validate
from etagent.config.location import conf_dir


def _hydra_main(cfg: DictConfig) -> float | None:
    from etagent.pipeline.runner import run_pipeline

    try:
        validate(cfg)
    except ConfigError as exc:
        print(f"[etagent] config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        summary = run_pipeline(cfg)
    except ConfigError as exc:  # e.g. a resume whose config differs from the run's (keys listed)
        print(f"[etagent] {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # a scalar for Hydra sweepers (higher is better)
    return summary.get("objective") if isinstance(summary, dict) else None


def main() -> None:
    from etagent.utils.logs import calm_progress_bars

    calm_progress_bars()  # before anything imports tqdm: off a terminal, a bar redraws once a minute
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        from etagent.pipeline.registry import help_text

        print(help_text() + "\n")  # the stage list (etagent.pipeline.registry), then Hydra's own help
    # An absolute config dir: the checkout's conf/ or the wheel's copy (etagent.config.location).
    # A relative "../conf" resolved only from a checkout run as `python -m`, not the console script.
    try:  # a bad key or value fails here, composed, before Hydra makes a run directory
        preflight.check_argv(sys.argv[1:], str(conf_dir()))
    except ConfigError as exc:
        print(f"[etagent] config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")(_hydra_main)()


if __name__ == "__main__":
    main()
