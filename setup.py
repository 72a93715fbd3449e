"""Packaging hook for what pyproject.toml cannot say: ship the top-level ``conf/`` in the wheel.

``conf/`` stays at the repository root (researchers edit it; it is the only copy in git); the
build maps it to the package ``etagent.conf``, so a wheel installs it as ``etagent/conf/``
(its YAML files are package data: ``[tool.setuptools.package-data]``).
``etagent.config.location`` picks the checkout's ``conf/`` or that copy at run time.
Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, find_packages, setup

# Config groups (conf/model, conf/hydra/launcher, ...) are listed as namespace packages too, so
# setuptools treats their directories as intended data, not as packages left out by mistake.
CONF_PACKAGES = ["etagent.conf", *(f"etagent.conf.{p}" for p in find_namespace_packages(where="conf"))]

setup(
    packages=[*find_packages(include=["etagent", "etagent.*"]), *CONF_PACKAGES],
    package_dir={"etagent.conf": "conf"},
)
