"""``report.md`` for one run directory: configuration, wall times, metric tables, plots.

:func:`write_report` reads whatever the run produced (see :mod:`etagent.report.rundata`;
skipped stages are reported as such, never an error), draws the PNGs under
``<run>/plots/`` and writes ``<run>/report.md`` atomically with relative image links.
The flywheel's own round table and plot (``flywheel/rounds.{md,png}``, written by
:mod:`etagent.flywheel.report`) are embedded, not redrawn. Baselines are the runs or
metrics files listed in the run's ``eval.compare``. The output holds no timestamps, so
the same run directory always gives the same report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from etagent.evaluation.metrics import FLAWS, TABLE_COLUMNS, metrics_table_markdown
from etagent.report import plots
from etagent.report.rundata import (
    STAGES,
    RunData,
    load_policies,
    load_run,
    pareto_points,
    policy_label,
    rl_series,
    sft_series,
)
from etagent.utils.io import atomic_write_text, read_json

PLOTS_DIR = "plots"
PLOT_FILES = {
    "radar": "radar.png",
    "dimensions": "dimensions.png",
    "tool_calls": "tool_calls_by_stage.png",
    "behaviour": "behaviour_by_stage.png",
    "rl_curves": "rl_curves.png",
    "pareto": "pareto_fronts.png",
    "sft_loss": "sft_loss.png",
}


# --------------------------------------------------------------------------- configuration


def _select(cfg: Mapping[str, Any], dotted: str) -> Any:
    """Value at a dotted path; interpolations resolved where OmegaConf can (raw string otherwise)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, str) and "${" in node:
        from omegaconf import OmegaConf

        try:
            v = OmegaConf.select(OmegaConf.create(dict(cfg)), dotted, throw_on_resolution_failure=True)
            return node if v is None else v
        except Exception:  # noqa: BLE001 - hydra:/oc.env resolvers are absent outside the app
            return node
    return node


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)


def _details(cfg: Mapping[str, Any], group: str, keys: tuple[str, ...]) -> str:
    parts = []
    for k in keys:
        v = _select(cfg, f"{group}.{k}")
        if v is not None and v != "" and v != {}:
            parts.append(f"{k}={_short(v)}")
    return ", ".join(parts)


_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("model", "model", ("name", "kind", "path", "size", "dtype")),
    ("task", "task", ("name", "n_train", "n_dev", "n_test", "limit")),
    ("seed agent", "seed_agent", ("samples_per_example",)),
    ("flywheel", "flywheel", ("strategies", "max_rounds", "samples_per_question", "questions_per_round")),
    ("sampling", "sampling", ("count", "qa_threshold", "filter_mixed")),
    ("reward", "reward", ("mode", "sigma_tool", "sigma_len", "schedule", "length_source")),
    ("rl", "rl", ("group_size", "prompts_per_step", "lr", "kl_coef", "max_steps")),
    ("eval", "eval", ("split", "max_examples", "n_samples", "temperature", "qa_metric")),
)
_STAGE_OF = {"seed_agent": "seed", "flywheel": "flywheel", "sampling": "rl", "reward": "rl", "rl": "rl",
             "schedule": "rl"}


def config_rows(rd: RunData) -> list[tuple[str, str, str]]:
    """(setting, choice, details) for the choices that define the run."""
    cfg, ch = rd.config, rd.choices
    stages = list(cfg.get("stages") or [])
    rows: list[tuple[str, str, str]] = []
    for label, group, keys in _GROUPS:
        if group not in cfg and group not in ch:
            continue
        node = cfg.get(group)
        choice = ch.get(group) or (str(node.get("name")) if isinstance(node, Mapping) and node.get("name") else "")
        if not choice and isinstance(node, Mapping) and node.get("_target_"):
            choice = str(node["_target_"]).rsplit(".", 1)[-1]
        detail = _details(cfg, group, keys)
        if stages and _STAGE_OF.get(group) and _STAGE_OF[group] not in stages:
            detail = "(stage not run) " + detail
        rows.append((label, choice or "-", detail))
        if group == "reward":  # the schedule sits next to the reward it decays
            sched = cfg.get("schedule")
            if isinstance(sched, Mapping):
                st = sched.get("stages") or []
                steps = [s.get("steps") for s in st if isinstance(s, Mapping)]
                d = f"{len(st)} RL stage(s), steps={_short(steps)}, eval_before={sched.get('eval_before')}"
                if sched.get("merge_stages"):
                    d += ", merged into one stage (merge_stages)"
                if sched.get("start") not in (None, "ase"):
                    d += f", RL from `{sched.get('start')}`"
                if stages and "rl" not in stages:
                    d = "(stage not run) " + d
                rows.append(("schedule", ch.get("schedule", "-"), d))
    for label, key in (("experiment", "experiment"), ("preset", "preset"), ("logger", "logger")):
        if ch.get(key) not in (None, "null", "None"):
            rows.append((label, ch[key], ""))
    if "seed" in cfg:
        rows.append(("seed", _short(cfg["seed"]), "global RNG seed"))
    if stages:
        rows.append(("stages", " -> ".join(map(str, stages)), ""))
    if rd.overrides:
        rows.append(("overrides", "`" + " ".join(rd.overrides) + "`", ""))
    return rows


def _config_section(rd: RunData) -> str:
    rows = config_rows(rd)
    out = ["## Configuration", ""]
    if not rows:
        return "## Configuration\n\n_No config.yaml in this run directory._\n"
    out += ["| setting | choice | details |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    f = rd.run_dir / "config.yaml"
    if f.exists():
        out += ["", "<details><summary>Full composed config (config.yaml)</summary>", "", "```yaml",
                f.read_text(encoding="utf-8").rstrip(), "```", "", "</details>"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- tables


def _one_line(summary: Any, limit: int = 8) -> str:
    if not isinstance(summary, Mapping):
        return ""
    parts = []
    for k, v in summary.items():
        if isinstance(v, bool) or isinstance(v, int):
            parts.append(f"{k}={v}")
        elif isinstance(v, float):
            parts.append(f"{k}={v:.3g}")
        elif isinstance(v, str) and len(v) < 40:
            parts.append(f"{k}={v}")
    return ", ".join(parts[:limit]).replace("|", "/")


def _wall_section(rd: RunData) -> str:
    planned = list(rd.config.get("stages") or [])
    names = [s for s in STAGES if s in planned or s in rd.stages] + [s for s in planned if s not in STAGES]
    lines = ["## Wall time per stage", "", "| stage | wall s | summary |", "|---|---:|---|"]
    for s in names:
        m = rd.stages.get(s)
        if m is None:
            status = "not finished" if s in planned else "not run"
            # the report stage writes its marker after this file: it is running right now
            lines.append(f"| {s} | - | {'(this report)' if s == 'report' else status} |")
        else:
            lines.append(f"| {s} | {float(m.get('wall_s', 0.0)):.1f} | {_one_line(m.get('summary'))} |")
    total = rd.summary.get("wall_s")
    if total is None and rd.stages:
        total = sum(float(m.get("wall_s", 0.0)) for m in rd.stages.values())
    if total is not None:
        lines.append(f"| **total** | **{float(total):.1f}** | |")
    return "\n".join(lines) + "\n"


def load_baselines(rd: RunData) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The runs/metrics files named by ``eval.compare`` -> (label -> overall metrics, warnings)."""
    entries = (rd.config.get("eval") or {}).get("compare") or []
    out: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for entry in entries:
        p = Path(str(entry))
        cands = [p] if p.is_absolute() else [p, rd.run_dir / p]
        p = next((c for c in cands if c.exists()), None)
        if p is None:
            warnings.append(f"baseline `{entry}` not found")
            continue
        try:
            if p.is_dir():
                pols = load_policies(p)
                if not pols:
                    warnings.append(f"baseline `{entry}` has no evaluated policy")
                    continue
                final = list(pols)[-1]
                out[f"{p.name}/{policy_label(final)}"] = pols[final]["overall"]
                continue
            data = read_json(p)
            if isinstance(data, dict) and isinstance(data.get("policies"), list) and data.get("overall"):
                final = data["policies"][-1]
                out[f"{p.parent.parent.name}/{policy_label(final)}"] = data["overall"][final]
            elif isinstance(data, dict) and isinstance(data.get("overall"), dict):
                name = str(data.get("policy") or p.parent.name)
                run = p.parent.parent.parent.name if p.parent.parent.name == "eval" else p.parent.name
                out[f"{run}/{policy_label(name)}"] = data["overall"]
            else:
                warnings.append(f"baseline `{entry}`: not a metrics.json or eval/summary.json")
        except ValueError as exc:
            warnings.append(f"baseline `{entry}`: {exc}")
    return out, warnings


def _labelled(rd: RunData) -> dict[str, dict[str, Any]]:
    return {policy_label(p): m for p, m in rd.overall().items()}


def _metrics_section(rd: RunData, baselines: Mapping[str, Mapping[str, Any]], warnings: list[str]) -> str:
    out = ["## Evaluation by stage", ""]
    if not rd.policies:
        return "## Evaluation by stage\n\n_No evaluated policy (the `eval` stage did not run or finish)._\n"
    split = _select(rd.config, "eval.split") or "test"
    out.append(f"Every policy of the run on the `{split}` split (fractions in %; TP = correct per call; "
               "Len x1000 = correctness per 1000 model tokens; behaviour rates = share of trajectories).")
    out += ["", metrics_table_markdown(_labelled(rd))]
    if baselines:
        final = rd.final_policy
        own = {policy_label(final): rd.policies[final]["overall"]} if final else {}
        out += ["### Baselines (eval.compare)", "", metrics_table_markdown({**own, **baselines})]
    out += [f"- note: {w}" for w in warnings] + ([""] if warnings else [])
    for d in rd.domains():
        rows = {policy_label(p): m["by_domain"][d] for p, m in rd.policies.items() if d in m.get("by_domain", {})}
        out += [f"### Domain: {d}", "", metrics_table_markdown(rows)]
    for p, m in rd.policies.items():  # several benchmarks: one row each + their macro average (paper table)
        if m.get("by_benchmark"):
            out += [f"### Benchmarks: {policy_label(p)}", "", metrics_table_markdown(m["by_benchmark"])]
    return "\n".join(out) + "\n"


def _intervals(rd: RunData) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """(policy, metric) -> 95% interval on the whole split, from the run's tidy table."""
    try:
        from etagent.report.results import load_results

        df = load_results(rd.run_dir)
    except (OSError, ValueError, ImportError):
        return {}
    df = df[df.domain == "all"]
    df = df[df.benchmark == df.benchmark.iloc[0]] if len(df) else df
    out = {}
    for r in df.itertuples(index=False):
        lo = None if r.ci_low != r.ci_low else float(r.ci_low)  # NaN -> None
        hi = None if r.ci_high != r.ci_high else float(r.ci_high)
        out[(r.policy, r.metric)] = (lo, hi)
    return out


def what_changed(rd: RunData) -> str:
    """One line: first policy -> final policy on the headline metrics, each change marked as
    outside or within the first policy's 95% interval (Wilson for shares, normal for means)."""
    from etagent.report.stats import change_outside

    pols = rd.overall()
    if not pols:
        return "No evaluated policy in this run."
    names = list(pols)
    if len(names) == 1:
        return f"Only one policy evaluated ({policy_label(names[0])})."
    a, b = pols[names[0]], pols[names[-1]]
    cis = _intervals(rd)
    outside_any = False

    def pair(key: str, label: str, scale: float, fmt: str, unit: str = "") -> str | None:
        nonlocal outside_any
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            return None
        text = f"{label} {format(x * scale, fmt)}{unit} -> {format(y * scale, fmt)}{unit}"
        lo, hi = cis.get((names[0], key), (None, None))
        out = change_outside(y, lo, hi)
        if out is None:
            return text
        outside_any |= out
        ci = f"{format(lo * scale, fmt)}-{format(hi * scale, fmt)}{unit}"
        return text + (f" (outside CI {ci})" if out else f" (within CI {ci})")

    parts = [pair("correctness", "correctness", 100, ".1f", "%"), pair("efficiency", "efficiency", 100, ".1f", "%"),
             pair("mean_calls", "calls/question", 1, ".2f"), pair("model_tokens_mean", "tokens", 1, ".0f"),
             pair("redundant_rate", "redundant", 100, ".1f", "%"),
             pair("insufficient_rate", "insufficient", 100, ".1f", "%")]
    line = (f"**What changed** ({policy_label(names[0])} -> {policy_label(names[-1])}): "
            + "; ".join(p for p in parts if p) + ".")
    if cis:
        line += (f" CI = 95% interval of {policy_label(names[0])} (Wilson for shares, mean ± 1.96 se otherwise); "
                 + ("a change within it is not distinguishable from noise on this split."
                    if not outside_any else "only changes outside it stand out from noise on this split."))
    return line


def _table(rows: Mapping[str, Mapping[str, Any]], first: str) -> str:
    cols = list(dict.fromkeys(k for r in rows.values() if isinstance(r, Mapping) for k in r))
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        if isinstance(r, Mapping):
            lines.append(f"| {name} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, dict)):
        return "…"
    return str(v).replace("|", "/")


def _teacher_section(rd: RunData) -> str:
    if not rd.teacher_stats:
        return ""
    return ("## Seed data: flawed teacher\n\nShares of the scripted teacher's trajectories by domain "
            "(the seed agent imitates these).\n\n" + _table(rd.teacher_stats, "domain"))


def _flywheel_section(rd: RunData) -> str:
    fdir = rd.run_dir / "flywheel"
    md, png = fdir / "rounds.md", fdir / "rounds.png"
    if not md.exists() and not rd.flywheel_rows and not png.exists():
        return ""
    out = ["## Flywheel rounds", ""]
    if md.exists():
        text = md.read_text(encoding="utf-8").strip()
        text = re.sub(r"\A# [^\n]*\n+", "", text)  # its title duplicates this section's
        out.append(re.sub(r"^(#+)", r"#\1", text, flags=re.M))  # demote its sub-headings below ours
    elif rd.flywheel_rows:
        from etagent.flywheel.report import markdown_table

        out.append(markdown_table(rd.flywheel_rows))
    if png.exists():
        out += ["", "![flywheel rounds](flywheel/rounds.png)"]
    return "\n".join(out) + "\n"


_RL_COLS = ("name", "n_sampled", "n_selected", "selected_by", "sample_correct_mean", "sample_tool_calls_mean",
            "sample_mixed_share", "steps", "reward_mean_first", "reward_mean_last")


def _rl_section(rd: RunData) -> str:
    rl = rd.run_dir / "rl"
    rows: dict[str, dict[str, Any]] = {}
    if rl.is_dir():
        dirs = sorted((d for d in rl.glob("stage_*") if (d / ".done.json").exists()),
                      key=lambda d: int(re.sub(r"\D", "", d.name) or 0))
        for d in dirs:
            m = read_json(d / ".done.json")
            s = m.get("summary") or {}
            rows[d.name] = {**{k: s.get(k) for k in _RL_COLS if k in s}, "wall_s": m.get("wall_s")}
    if not rows:
        return ""
    return "## RL stages\n\nPer stage: re-sampled questions, selected by the sampler, GRPO steps, mean reward.\n\n" + \
        _table(rows, "stage")


# --------------------------------------------------------------------------- plots


def calls_by_policy(rd: RunData, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Label -> {"all": mean calls, <domain>: mean calls} for :func:`plots.tool_calls_by_stage`."""
    out = {}
    for p, m in rd.policies.items():
        row = {"all": m["overall"].get("mean_calls")}
        row.update({d: dm.get("mean_calls") for d, dm in (m.get("by_domain") or {}).items()})
        out[prefix + policy_label(p)] = row
    return out


def behaviour_by_policy(rd: RunData, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Label -> {flaw: rate} for :func:`plots.behaviour_by_stage`."""
    return {prefix + policy_label(p): {f: m["overall"].get(f"{f}_rate") for f in FLAWS} for p, m in rd.policies.items()}


def interval_rows(rd: RunData) -> list[dict[str, Any]]:
    """Rows for :func:`plots.dimension_dots`: each policy's whole-split value and 95% interval."""
    try:
        from etagent.report.results import load_results

        df = load_results(rd.run_dir)
    except (OSError, ValueError, ImportError):
        return []
    if df.empty:
        return []
    df = df[(df.domain == "all") & (df.benchmark == df.benchmark.iloc[0])]
    nan = lambda v: None if v != v else float(v)  # noqa: E731
    return [{"label": policy_label(r.policy), "metric": r.metric, "value": float(r.value), "lo": nan(r.ci_low),
             "hi": nan(r.ci_high)} for r in df.itertuples(index=False)]


def make_plots(rd: RunData, baselines: Mapping[str, Mapping[str, Any]], plots_dir: Path) -> dict[str, Path]:
    """Draw every plot the run has data for; returns name -> path (names of ``PLOT_FILES``)."""
    out: dict[str, Path] = {}
    labelled = _labelled(rd)
    if labelled or baselines:
        out["radar"] = plots.radar({**labelled, **baselines}, plots_dir / PLOT_FILES["radar"],
                                   title="Five dimensions: stages and baselines")
    dots = interval_rows(rd)
    if dots:
        out["dimensions"] = plots.dimension_dots(dots, plots_dir / PLOT_FILES["dimensions"],
                                                 title=f"Every policy on the {rd.config.get('eval', {}).get('split', 'test')} split")
    if labelled:
        out["tool_calls"] = plots.tool_calls_by_stage(calls_by_policy(rd), plots_dir / PLOT_FILES["tool_calls"])
        out["behaviour"] = plots.behaviour_by_stage(behaviour_by_policy(rd), plots_dir / PLOT_FILES["behaviour"])
    series = rl_series(rd)
    if series:
        out["rl_curves"] = plots.rl_curves(series, plots_dir / PLOT_FILES["rl_curves"])
    fronts = pareto_points(rd)
    if fronts:
        out["pareto"] = plots.pareto_fronts(fronts, plots_dir / PLOT_FILES["pareto"])
    sft = sft_series(rd)
    if sft:
        out["sft_loss"] = plots.loss_curves(sft, plots_dir / PLOT_FILES["sft_loss"])
    return out


_PLOT_TEXT = {
    "radar": ("Five-dimension radar", "Correctness, efficiency, conciseness, successful execution and reasoning "
              "length; each axis runs from 0 to its printed maximum; an axis equal to another for every policy "
              "is merged into it."),
    "dimensions": ("Every dimension with its 95% interval", "Wilson interval for shares of 0/1 outcomes, "
                   "mean ± 1.96 se for per-trajectory means; overlapping bars mean the test split cannot tell "
                   "the policies apart."),
    "tool_calls": ("Tool calls per question by stage", ""),
    "behaviour": ("Ineffective behaviours by stage", ""),
    "rl_curves": ("RL training curves", "Per GRPO step: reward and correctness of the rollouts, tool calls, "
                  "model tokens, KL, entropy, clip fraction, behaviour rates, the shaping sigmas and the spread "
                  "of the shaping factors within groups (their mean is ~1 by construction); RL stages end to end "
                  "(dotted lines)."),
    "pareto": ("Pareto selection per RL stage", "Each sampled question in the sampler's objective space; "
               "the non-dominated front and the questions GRPO trained on are marked."),
    "sft_loss": ("SFT loss", ""),
}


def _plots_section(made: Mapping[str, Path], run_dir: Path) -> str:
    out = ["## Plots", ""]
    for key, (title, text) in _PLOT_TEXT.items():
        if key in made:
            rel = made[key].relative_to(run_dir).as_posix()
            out += [f"### {title}", ""] + ([text, ""] if text else []) + [f"![{title}]({rel})", ""]
        elif key == "rl_curves":
            out += [f"### {title}", "", "_No RL log lines in this run (the `rl` stage did not run)._", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- entry point


def truncation_warning(rd: RunData) -> str | None:
    """A loud headline when a wall-clock safety cap cut a training stage short: its numbers
    are then not those of the configured step budget, and need not reproduce elsewhere."""
    cut = [(name, m["summary"]) for name, m in rd.stages.items()
           if isinstance(m.get("summary"), Mapping) and m["summary"].get("stopped") == "time_budget"]
    if not cut:
        return None
    what = "; ".join(f"`{name}` stopped at step {int(sm.get('steps', 0))}/{int(sm.get('total_steps', 0))}"
                     for name, sm in cut)
    return (f"> **WARNING: truncated run.** A wall-clock cap (`max_minutes`) fired: {what}. The results below "
            "are not those of the configured step budget and need not reproduce on another machine.\n")


def render_report(rd: RunData, made: Mapping[str, Path], baselines: Mapping[str, Mapping[str, Any]],
                  warnings: list[str]) -> str:
    title = rd.config.get("run_name") or "etagent"
    parts = [f"# ET-Agent run report: {title}", "", truncation_warning(rd),
             f"Run directory: `{rd.run_dir.name}`. Regenerate with `python -m etagent.report.report <run_dir>`.",
             "", what_changed(rd), "", _config_section(rd), _wall_section(rd), _metrics_section(rd, baselines, warnings),
             _rl_section(rd), _teacher_section(rd), _flywheel_section(rd), _plots_section(made, rd.run_dir)]
    text = "\n".join(p for p in parts if p is not None)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"  # skipped sections leave no blank runs


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.md`` (+ ``plots/*.png``); returns the report path."""
    rd = load_run(run_dir)
    baselines, warnings = load_baselines(rd)
    if rd.policies:  # the tidy tables first (results.{parquet,csv}, questions.{parquet,csv}): plots read them
        from etagent.report.results import write_run_results

        write_run_results(rd.run_dir)
    made = make_plots(rd, baselines, rd.run_dir / PLOTS_DIR)
    path = rd.run_dir / "report.md"
    atomic_write_text(path, render_report(rd, made, baselines, warnings))
    return path


def metrics_frame(runs: Mapping[str, RunData] | list[RunData], domain: str | None = None):
    """pandas DataFrame, one row per (run, policy), columns = the table's metric keys (raw values)."""
    import pandas as pd

    runs = list(runs.values()) if isinstance(runs, Mapping) else list(runs)
    keys = [k for k, *_ in TABLE_COLUMNS]
    rows = []
    for rd in runs:
        for p, m in rd.policies.items():
            src = m["overall"] if domain is None else (m.get("by_domain") or {}).get(domain)
            if src is not None:
                rows.append({"run": rd.name, "policy": policy_label(p), **{k: src.get(k) for k in keys}})
    return pd.DataFrame(rows, columns=["run", "policy", *keys])


def main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m etagent.report.report RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    for d in args:
        print(write_report(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
