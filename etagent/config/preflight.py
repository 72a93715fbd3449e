"""Compose-time validation for the command line: a bad key or value fails before any run starts.

Hydra 1.3 has no compose hook (``Callback.on_compose_config`` arrived in 1.4) and ``--cfg job``
runs no callbacks, so ``python -m etagent`` composes the job config itself first, with Hydra's
Compose API and the same overrides, and runs :func:`etagent.config.validate` on it: on every job
of a ``-m`` sweep (the cartesian product of its choice/range sweeps). A :class:`ConfigError`
stops the command before Hydra creates a run or sweep directory; anything else Hydra itself
reports as usual when it composes next. The job start validates again (programmatic runs).
"""

from __future__ import annotations

import itertools
import os
from typing import Iterable

from etagent.config.validate import ConfigError, validate


def _parse(argv: list[str]):
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

    return get_args_parser().parse_args(argv)


def sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """The override lists of a multirun's jobs (``a=1,2 b=x,y`` -> 4 lists), as Hydra's basic
    sweeper builds them; None when a sweep is not a plain choice/range (another sweeper's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes: list[list[str]] = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if not o.is_sweep_override():
            axes.append([o.input_line])
        elif o.is_discrete_sweep():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            return None
    return [list(job) for job in itertools.product(*axes)]


def check(config_dir: str, config_name: str, jobs: Iterable[list[str]], sweep: bool = False) -> None:
    """Compose and validate each job's config; raise :class:`ConfigError` naming job and key."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="etagent"):
        for overrides in jobs:
            try:
                cfg = compose(config_name=config_name, overrides=overrides)
            except Exception:  # noqa: BLE001 - Hydra's own errors: Hydra reports them itself
                return
            try:
                validate(cfg)
            except ConfigError as exc:
                where = f" (sweep job: {' '.join(overrides)})" if sweep else ""
                raise ConfigError(f"{exc}{where}") from None


def check_argv(argv: list[str], config_dir: str, config_name: str = "config") -> None:
    """Validate what ``python -m etagent <argv>`` would run or print; raise :class:`ConfigError`.

    Help, info and shell completion are left alone; so is an extra ``--config-dir`` /
    ``--config-path`` (its configs validate at job start)."""
    try:
        args = _parse(argv)
    except (ImportError, SystemExit):  # an unknown Hydra version or bad flags: Hydra answers
        return
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_dir or args.config_path:
        return
    name = args.config_name or config_name
    if args.multirun:
        try:
            jobs = sweep_jobs(list(args.overrides))
        except Exception:  # noqa: BLE001 - a malformed override: Hydra reports it
            return
        if jobs is None:
            return
    else:
        jobs = [list(args.overrides)]
    check(os.path.abspath(config_dir), name, jobs, sweep=bool(args.multirun))
