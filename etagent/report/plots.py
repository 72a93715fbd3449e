"""Report plots (matplotlib Agg, PNG written atomically). Each function takes plain dicts.

* :func:`tool_calls_by_stage`  mean tool calls per question by policy, overall and per domain.
* :func:`behaviour_by_stage`   share of trajectories with each ineffective behaviour by policy.
* :func:`rl_curves`            RL training curves: reward (+ correctness), the shaping sigmas
  and factors, tool calls per rollout. RL stages are laid end to end on one step axis
  (each stage's trainer restarts its step count), separated by dotted lines.
* :func:`loss_curves`          SFT loss per fine-tuning stage.

The five-dimension radar lives in :mod:`etagent.evaluation.radar`. Figures are built with
the object API (``matplotlib.figure.Figure``), never pyplot, so calling these from a notebook
leaves its backend and open figures alone.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure

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


# panel title -> [(quantity, line label, style)]
_PANELS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    ("reward", (("reward_mean", "reward", "-"), ("correctness_mean", "correctness", "--"))),
    ("shaping", (("sigma_tool", "sigma_tool", "-"), ("sigma_len", "sigma_len", "-"),
                 ("f_tool_mean", "f_tool", ":"), ("f_len_mean", "f_len", ":"))),
    ("tool calls / rollout", (("tool_calls_mean", "calls", "-"),)),
)


def rl_curves(series: Mapping[str, Mapping[str, Points]], path: str | Path, title: str = "RL training") -> Path:
    """``series[quantity][rl_stage] = [(step, value)]`` (quantities of ``rundata.RL_KEYS``)."""
    if not any(series.values()):
        raise ValueError("rl_curves: no RL log lines to plot")
    offsets = _offsets(series)
    panels = [(t, lines) for t, lines in _PANELS if any(series.get(q) for q, _, _ in lines)]
    fig = Figure(figsize=(4.4 * len(panels), 3.3))
    axes = fig.subplots(1, len(panels), squeeze=False)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (ptitle, lines) in zip(axes[0], panels):
        for li, (q, label, style) in enumerate(lines):
            for si, (stage, (xs, ys)) in enumerate(_concat(series.get(q, {}), offsets).items()):
                ax.plot(xs, ys, style, color=colors[li % len(colors)], linewidth=1.3,
                        label=label if si == 0 else None)
        for i, (stage, shift) in enumerate(offsets.items()):
            starts = [x for q in series.values() for x, _ in q.get(stage, [])]
            if i and starts:  # boundary before each later stage
                ax.axvline(min(starts) + shift - 0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(ptitle)
        ax.set_xlabel("step (" + " | ".join(offsets) + ")", fontsize=7)
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
