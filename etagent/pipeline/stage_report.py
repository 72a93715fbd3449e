"""Stage `report`: report.md with tables per stage and plots, and the tidy results tables, in the run directory."""

from __future__ import annotations

import logging

from etagent.pipeline.context import RunContext

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> dict:
    from etagent.report.report import what_changed, write_report
    from etagent.report.rundata import load_run

    path = write_report(ctx.run_dir)
    log.info("%s", what_changed(load_run(ctx.run_dir)).replace("**", ""))
    return {"report": str(path)}
