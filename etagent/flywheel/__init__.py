"""Part I of ET-Agent: the self-evolving data flywheel (and ASE, Part II-a).

``loop.run_flywheel`` drives rounds; ``strategies`` holds the four operations;
``verify`` gates every edit; ``evolvers`` decides who writes hints/rewrites; ``pool``
stores de-duplicated data with provenance; ``report`` writes the round table and plot;
``ase.run_ase`` fine-tunes the seed policy on the pool.
"""

from etagent.flywheel.loop import FlywheelConfig, run_flywheel
from etagent.flywheel.pool import Pool

__all__ = ["FlywheelConfig", "Pool", "run_flywheel"]
