"""Report plots (matplotlib Agg, PNG written atomically). Each function takes plain dicts.

* :func:`tool_calls_by_stage`  mean tool calls per question by policy, overall and per domain.
* :func:`behaviour_by_stage`   share of trajectories with each ineffective behaviour by policy.
* :func:`rl_curves`            RL training curves per step: reward and correctness, tool calls,
  model tokens, KL, entropy, clip fraction, behaviour rates and the *spread* of the shaping
  factors f_tool / f_len (min-max band and within-group std; their mean is ~1 by
  construction). RL stages are laid end to end on one step axis (each stage's trainer
  restarts its step count), separated by dotted lines.
* :func:`loss_curves`          SFT loss per fine-tuning stage.
* :func:`dimension_dots`       one panel per metric: a dot per policy (or sweep group) with its
  95% interval (or mean ± std and each seed's value as a small dot).
* :func:`radar`                the paper-style five-dimension radar, legible: outlines only
  (no overlapping fills), one line style and marker per run, each axis scaled to its own
  maximum (printed), an axis identical to another for every run merged into it, optional
  ± std whiskers.
* :func:`pareto_fronts`        per RL stage, every sampled question in the sampler's objective
  space (variance of tool calls x variance of correctness), front 1 and the selection marked. Figures are built with
the object API (``matplotlib.figure.Figure``), never pyplot, so calling these from a notebook
leaves its backend and open figures alone.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from etagent.evaluation.metrics import FLAWS
from etagent.utils.io import atomic_write_bytes

BEHAVIOURS = FLAWS  # the behaviour labels, in the metrics tables' order
Points = Sequence[tuple[int, float]]


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    # no Software tag: the same data gives the same bytes across matplotlib patch versions
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _grouped_bars(ax, per_stage: Mapping[str, Mapping[str, float | None]], series: Sequence[str], scale: float) -> None:
    names = list(per_stage)
    width = 0.8 / max(len(series), 1)
    for j, s in enumerate(series):
        vals = [per_stage[n].get(s) for n in names]
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, [0.0 if v is None else scale * float(v) for v in vals], width, label=s)
        ax.bar_label(bars, labels=["-" if v is None else f"{scale * float(v):.2g}" for v in vals], fontsize=6)
    ax.set_xticks(range(len(names)), names)


def tool_calls_by_stage(per_stage: Mapping[str, Mapping[str, float | None]], path: str | Path) -> Path:
    """Bars of mean tool calls per question; ``per_stage[policy] = {"all": x, "math": y, ...}``."""
    if not per_stage:
        raise ValueError("tool_calls_by_stage: nothing to plot")
    series = list(dict.fromkeys(k for m in per_stage.values() for k in m))
    fig = Figure(figsize=(1.3 * len(per_stage) + 3, 3.4))
    ax = fig.subplots()
    _grouped_bars(ax, per_stage, series, 1.0)
    ax.set_ylabel("tool calls / question")
    ax.set_title("Tool calls per question by stage")
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)


def behaviour_by_stage(per_stage: Mapping[str, Mapping[str, float | None]], path: str | Path) -> Path:
    """Grouped bars (%); ``per_stage[policy] = {"redundant": rate, "insufficient": ..., ...}``."""
    if not per_stage:
        raise ValueError("behaviour_by_stage: nothing to plot")
    series = [b for b in BEHAVIOURS if any(b in m for m in per_stage.values())] or list(BEHAVIOURS)
    fig = Figure(figsize=(1.6 * len(per_stage) + 3, 3.4))
    ax = fig.subplots()
    _grouped_bars(ax, per_stage, series, 100.0)
    ax.set_ylabel("% of trajectories")
    ax.set_title("Ineffective behaviours by stage")
    ax.legend(frameon=False, ncol=4, fontsize=8)
    return _save(fig, path)


def _concat(stages: Mapping[str, Points], offsets: Mapping[str, int]) -> dict[str, tuple[list[int], list[float]]]:
    return {s: ([x + offsets[s] for x, _ in pts], [y for _, y in pts]) for s, pts in stages.items() if pts}


def _offsets(series: Mapping[str, Mapping[str, Points]]) -> dict[str, int]:
    """Shift of each RL stage on the shared step axis: stage k starts right after stage k-1 ends."""
    order: list[str] = []
    lo: dict[str, int] = {}
    hi: dict[str, int] = {}
    for stages in series.values():
        for s, pts in stages.items():
            if s not in order:
                order.append(s)
            for x, _ in pts:
                lo[s], hi[s] = min(lo.get(s, x), x), max(hi.get(s, x), x)
    out, at = {}, 0
    for i, s in enumerate(order):
        if s not in lo:
            out[s] = at
            continue
        out[s] = at - lo[s] if i else 0
        at = out[s] + hi[s] + 1
    return out


# panel title, y-axis label, [(quantity, line label, style)]
_PANELS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("reward", "mean over rollouts", (("reward_mean", "reward", "-"), ("correctness_mean", "correctness", "--"))),
    ("tool calls", "calls / rollout", (("tool_calls_mean", "calls", "-"),)),
    ("length", "model tokens / rollout", (("model_tokens_mean", "tokens", "-"),)),
    ("KL to reference", "KL (per token)", (("kl", "k3 KL", "-"), ("ppo_kl", "KL to old policy", "--"))),
    ("entropy", "entropy (nats / token)", (("entropy", "entropy", "-"),)),
    ("clip fraction", "share (tokens clipped / rollouts)", (("clip_frac", "clip fraction", "-"),
                                                  ("format_error_rate", "format errors", "--"))),
    ("behaviour rates", "share of rollouts", (("redundant_rate", "redundant", "-"),
                                              ("insufficient_rate", "insufficient", "-"),
                                              ("aborted_rate", "aborted", "-"),
                                              ("erroneous_rate", "erroneous", "-"))),
    ("shaping sigmas", "sigma", (("sigma_tool", "sigma_tool", "-"), ("sigma_len", "sigma_len", "--"))),
)
# factor -> (min, max, within-group std) quantities; drawn as a band + std line
_SPREADS = (("f_tool", "f_tool_min", "f_tool_max", "f_tool_group_std"),
            ("f_len", "f_len_min", "f_len_max", "f_len_group_std"))


def _stage_bounds(ax, series, offsets) -> None:
    for i, (stage, shift) in enumerate(offsets.items()):
        starts = [x for q in series.values() for x, _ in q.get(stage, [])]
        if i and starts:  # boundary before each later stage
            ax.axvline(min(starts) + shift - 0.5, color="grey", linestyle=":", linewidth=0.8)


def rl_panels(series: Mapping[str, Mapping[str, Points]]) -> list[tuple[str, str, Any]]:
    """(title, y label, lines) of every panel the series have data for (the spread panel last)."""
    panels: list[tuple[str, str, Any]] = [(t, y, lines) for t, y, lines in _PANELS
                                          if any(series.get(q) for q, _, _ in lines)]
    spreads = [sp for sp in _SPREADS if any(series.get(q) for q in sp[1:])]
    if spreads:
        panels.append(("shaping factor spread", "factor value", spreads))
    return panels


def rl_curves(series: Mapping[str, Mapping[str, Points]], path: str | Path, title: str = "RL training") -> Path:
    """``series[quantity][rl_stage] = [(step, value)]`` (quantities of ``rundata.RL_KEYS``)."""
    if not any(series.values()):
        raise ValueError("rl_curves: no RL log lines to plot")
    offsets = _offsets(series)
    panels = rl_panels(series)
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig = Figure(figsize=(3.6 * ncol, 2.9 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    xlabel = "RL step (" + " | ".join(offsets) + ")" if len(offsets) > 1 else "RL step"
    for ax, (ptitle, ylabel, lines) in zip(axes, panels):
        if ptitle == "shaping factor spread":
            for li, (name, qmin, qmax, qstd) in enumerate(lines):
                c = colors[li % len(colors)]
                lo = _concat(series.get(qmin, {}), offsets)
                hi = _concat(series.get(qmax, {}), offsets)
                for si, stage in enumerate(lo):
                    if stage in hi and len(lo[stage][0]) == len(hi[stage][0]):
                        ax.fill_between(lo[stage][0], lo[stage][1], hi[stage][1], color=c, alpha=0.18,
                                        label=f"{name} min-max" if si == 0 else None)
                for si, (stage, (xs, ys)) in enumerate(_concat(series.get(qstd, {}), offsets).items()):
                    ax.plot(xs, [1.0 + y for y in ys], "-", color=c, linewidth=1.3,
                            label=f"1 + {name} std within group" if si == 0 else None)
            ax.axhline(1.0, color="black", linewidth=0.6)
        else:
            for li, (q, label, style) in enumerate(lines):
                for si, (stage, (xs, ys)) in enumerate(_concat(series.get(q, {}), offsets).items()):
                    ax.plot(xs, ys, style, color=colors[li % len(colors)], linewidth=1.3, marker=".",
                            markersize=3, label=label if si == 0 else None)
        _stage_bounds(ax, series, offsets)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.set_title(ptitle, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(frameon=False, fontsize=6)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- intervals


#: metric -> (panel title, scale, unit); shares are shown in %
DOT_METRICS: tuple[tuple[str, str, float, str], ...] = (
    ("correctness", "Correctness", 100, "%"),
    ("efficiency", "Efficiency", 100, "%"),
    ("conciseness", "Conciseness", 100, "%"),
    ("exec_score", "Successful execution", 100, "%"),
    ("length_score", "Reasoning length (correct / 1k tokens)", 1, ""),
    ("mean_calls", "Tool calls / question", 1, ""),
    ("redundant_rate", "Redundant", 100, "%"),
    ("insufficient_rate", "Insufficient", 100, "%"),
    ("aborted_rate", "Aborted", 100, "%"),
    ("erroneous_rate", "Erroneous", 100, "%"),
)


def dimension_dots(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "",
                   metrics: Sequence[tuple[str, str, float, str]] = DOT_METRICS,
                   interval_label: str = "95% interval", point_label: str = "value") -> Path:
    """One panel per metric, one row per label: a dot at ``value`` with a bar from ``lo`` to ``hi``
    and, when given, each ``points`` value (e.g. one per seed) as a small hollow dot.

    ``rows``: dicts with ``label``, ``metric``, ``value`` and optional ``lo``, ``hi``, ``points``.
    """
    rows = [r for r in rows if r.get("value") is not None]
    present = [m for m in metrics if any(r["metric"] == m[0] for r in rows)]
    if not present:
        raise ValueError("dimension_dots: nothing to plot")
    labels = list(dict.fromkeys(r["label"] for r in rows))
    ncol = min(5, len(present))
    nrow = math.ceil(len(present) / ncol)
    fig = Figure(figsize=(2.6 * ncol + 1.2, 0.32 * len(labels) * nrow + 1.3 * nrow + 0.4))
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True).ravel()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, ptitle, scale, unit) in zip(axes, present):
        for li, label in enumerate(labels):
            for r in rows:
                if r["label"] != label or r["metric"] != key:
                    continue
                c = colors[li % len(colors)]
                v = scale * float(r["value"])
                lo, hi = r.get("lo"), r.get("hi")
                if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
                    ax.errorbar([v], [li], xerr=[[v - scale * lo], [scale * hi - v]], fmt="o", color=c,
                                capsize=3, markersize=5, linewidth=1.4)
                else:
                    ax.plot([v], [li], "o", color=c, markersize=5)
                pts = [scale * float(p) for p in (r.get("points") or []) if p is not None]
                if pts:
                    ax.plot(pts, [li + 0.18] * len(pts), "o", mfc="none", mec=c, markersize=4, alpha=0.9)
        ax.set_title(ptitle, fontsize=9)
        ax.set_xlabel(f"{ptitle.split(' (')[0].lower()}{' (' + unit + ')' if unit else ''}", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.set_yticks(range(len(labels)), labels)
    for ax in axes[len(present):]:
        ax.set_visible(False)
    fig.suptitle((title + "\n" if title else "") + f"dot = {point_label}, bar = {interval_label}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- radar


def _val(m: Mapping[str, Any], k: str) -> float:
    v = m.get(k)
    return 0.0 if v is None or not math.isfinite(float(v)) else float(v)


def radar_axes(runs: Mapping[str, Mapping[str, Any]], dims: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, list[str]]]:
    """(key, label, labels merged into it): an axis equal to an earlier one for every run is merged
    (e.g. execution = correctness when no call fails), unless fewer than three axes would remain."""
    kept: list[tuple[str, str, list[str]]] = []
    for key, label, _ in dims:
        twin = next((k for k in kept if all(abs(_val(m, k[0]) - _val(m, key)) < 1e-12 for m in runs.values())), None)
        if twin is not None:
            twin[2].append(label)
        else:
            kept.append((key, label, []))
    return kept if len(kept) >= 3 else [(k, lab, []) for k, lab, _ in dims]


def radar(runs: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "Five dimensions",
          spread: Mapping[str, Mapping[str, Any]] | None = None, dims: Sequence[tuple[str, str, str]] | None = None) -> Path:
    """Paper-style radar, legible (see module docstring); ``spread[run][key]`` draws ± whiskers."""
    from etagent.evaluation.radar import DIMENSIONS

    if not runs:
        raise ValueError("radar: no runs to plot")
    dims = list(dims or DIMENSIONS)

    kept = radar_axes(runs, dims)
    n = len(kept)
    angles = [2 * math.pi * i / n for i in range(n)]
    tops = []
    for key, _, _ in kept:
        hi = max(_val(m, key) + _val((spread or {}).get(name, {}), key) for name, m in runs.items())
        tops.append(hi * 1.1 if hi > 0 else 1.0)
    fig = Figure(figsize=(6.6, 6.2))
    ax = fig.add_subplot(111, polar=True)
    ax.set_theta_offset(math.pi / 2)  # first axis at the top, clockwise like the paper
    ax.set_theta_direction(-1)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    styles, markers = ("-", "--", "-.", ":"), ("o", "s", "^", "D", "v", "P", "X")
    for i, (name, m) in enumerate(runs.items()):
        r = [_val(m, k) / top for (k, _, _), top in zip(kept, tops)]
        c = colors[i % len(colors)]
        ax.plot(angles + angles[:1], r + r[:1], linestyle=styles[i % len(styles)], marker=markers[i % len(markers)],
                color=c, linewidth=1.6, markersize=5, label=name)
        if len(runs) == 1:
            ax.fill(angles + angles[:1], r + r[:1], color=c, alpha=0.1)  # one polygon: a fill hides nothing
        if spread and name in spread:
            err = [_val(spread[name], k) / top for (k, _, _), top in zip(kept, tops)]
            ax.errorbar(angles, r, yerr=err, fmt="none", ecolor=c, capsize=3, linewidth=1.0)
    ax.set_xticks(angles)
    names = []
    for (key, label, twins), top in zip(kept, tops):
        scale, unit = (1, "") if key == "length_score" else (100, "%")
        same = f"\n(= {', '.join(twins)})" if twins else ""
        names.append(f"{label}{same}\naxis 0-{top * scale:.3g}{unit}")
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "", "", ""])
    ax.set_title(title, pad=26)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(3, len(runs)), fontsize=8, frameon=False)
    return _save(fig, path)


# --------------------------------------------------------------------------- Pareto


def pareto_fronts(stages: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "Pareto selection") -> Path:
    """One panel per RL stage (from :func:`etagent.report.rundata.pareto_points`)."""
    stages = {k: v for k, v in stages.items() if v.get("ids")}
    if not stages:
        raise ValueError("pareto_fronts: no sampled questions")
    fig = Figure(figsize=(4.2 * len(stages), 3.8))
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    for ax, (stage, d) in zip(axes, stages.items()):
        xs, ys = d["var_calls"], d["var_correct"]
        front, sel = d["front"], d["selected"]
        # identical points are common (e.g. every all-wrong group at 0, 0): one marker per distinct
        # point and status, its area growing with the count, the count written beside it
        groups: dict[tuple[float, float, bool], int] = {}
        for k in range(len(xs)):
            key = (round(xs[k], 9), round(ys[k], 9), bool(sel[k]))
            groups[key] = groups.get(key, 0) + 1
        for chosen, style in ((False, dict(c="lightgrey", edgecolors="grey")),
                              (True, dict(c="tab:orange", edgecolors="black"))):
            pts = [(x, y, n) for (x, y, c), n in groups.items() if c == chosen]
            n_all = sum(n for *_, n in pts)
            label = ("trained on (fallback: all)" if d.get("fallback") else "selected") if chosen else "not selected"
            if pts:
                ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], s=[18 + 10 * (n - 1) for *_, n in pts],
                           linewidths=0.6, label=f"{label} ({n_all})", zorder=3 if chosen else 2, **style)
                for x, y, n in pts:
                    if n > 1:
                        ax.annotate(f"x{n}", (x, y), xytext=(4, 3) if chosen else (4, -9), textcoords="offset points",
                                    fontsize=6, color="black" if chosen else "grey")
        f0 = sorted({(xs[k], ys[k]) for k in range(len(xs)) if front[k] == 0})
        if f0:
            fx, fy = zip(*f0)
            ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="tab:blue", linewidths=1.2, zorder=4,
                       label="front 1 (non-dominated)")
            if len(f0) > 1:
                ax.step(fx, fy, where="pre", color="tab:blue", linewidth=1.0)
        ax.margins(0.12)
        ax.set_title(f"{stage} ({len(xs)} questions)", fontsize=10)
        ax.set_xlabel("variance of tool calls over K rollouts", fontsize=8)
        ax.set_ylabel("variance of correctness over K rollouts", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def loss_curves(series: Mapping[str, Points], path: str | Path, title: str = "SFT loss") -> Path:
    """One line per fine-tuning stage: ``series[stage] = [(step, loss)]``."""
    if not any(series.values()):
        raise ValueError("loss_curves: nothing to plot")
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    for name, pts in series.items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=name, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)
