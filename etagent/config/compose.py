"""etagent's config composed outside a Hydra run: for code that verl (or a command line) starts
without a run, which still needs the run's grammar, grader and tools (``etagent.runenv.RunEnv``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from etagent.config.location import conf_dir


def compose_etagent(overrides: Sequence[str] = ()) -> Any:
    """etagent's ``conf/config.yaml`` composed with ``overrides`` (Hydra syntax).

    ``paths.run_dir`` (where a search cache may go) defaults to ``./etagent_verl`` and
    ``paths.shared_dir`` to ``$ETAGENT_SHARED`` or ``../shared``, since there is no Hydra run.
    A Hydra instance the caller holds (verl's driver) is restored afterwards.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = conf_dir()  # the checkout's conf/ or an installed wheel's copy; names both when missing
    ov = [str(o) for o in overrides]
    keys = {o.lstrip("+~").split("=", 1)[0] for o in ov}
    defaults = {
        "paths.run_dir": str(Path.cwd() / "etagent_verl"),
        "paths.shared_dir": os.environ.get("ETAGENT_SHARED", str(Path.cwd().parent / "shared")),
    }
    ov = [f"{k}={v}" for k, v in defaults.items() if k not in keys] + ov
    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None  # verl's driver may hold its own Hydra
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return compose(config_name="config", overrides=ov)
    except Exception as exc:
        raise ValueError(f"cannot compose etagent's config with overrides {ov}: {exc}") from exc
    finally:
        gh.clear()
        if saved is not None:
            gh.initialize(saved)
