"""Where etagent's Hydra configs live: the checkout's ``conf/`` or the copy a wheel carries.

``conf/`` at the repository root is the only copy in git. A source checkout (and an editable
install of one) composes it directly, so an edit there takes effect on the next run. A regular
install (``pip install .``, a wheel) has no checkout beside the package: the build maps ``conf/``
into the package as ``etagent/conf`` (``setup.py``), and that copy is used. Hydra's own
``--config-dir`` / ``--config-path`` still add or replace a directory on top of this.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../etagent
#: The repository's ``conf/`` (a checkout: ``pyproject.toml`` sits beside it).
CHECKOUT_CONF = PACKAGE_DIR.parent / "conf"
#: The copy a non-editable install carries (package data of ``etagent.conf``).
PACKAGED_CONF = PACKAGE_DIR / "conf"


def conf_dir() -> Path:
    """The directory holding ``config.yaml``: the checkout's ``conf/`` first, else the packaged copy."""
    if (CHECKOUT_CONF / "config.yaml").is_file() and (PACKAGE_DIR.parent / "pyproject.toml").is_file():
        return CHECKOUT_CONF
    if (PACKAGED_CONF / "config.yaml").is_file():
        return PACKAGED_CONF
    raise FileNotFoundError(
        f"etagent's Hydra config is missing: neither {CHECKOUT_CONF}/config.yaml (a source checkout) "
        f"nor {PACKAGED_CONF}/config.yaml (an installed wheel) exists; reinstall etagent "
        "(pip install <repo> or pip install -e <repo>)"
    )
