"""Run reports: report.md with tables and plots (report, plots), tidy results tables with 95% intervals
(results, stats), sweep comparison (compare), notebook drill-down helpers (analysis, trajview)."""
