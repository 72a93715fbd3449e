"""Stage `report`: report.md with tables per stage and plots, in the run directory."""

from __future__ import annotations

from etagent.pipeline.context import RunContext


def run(ctx: RunContext) -> dict:
    from etagent.report.report import write_report

    path = write_report(ctx.run_dir)
    return {"report": str(path)}
