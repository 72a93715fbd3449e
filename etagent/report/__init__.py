"""Run reports: report.md with tables and plots, and sweep comparison."""
