"""Radar chart of the five evaluation dimensions comparing runs (the paper's radar figure).

Axes and normalisation (every axis drawn on 0..1):

* correctness, efficiency, conciseness, successful execution (``exec_score``): already
  fractions in [0, 1]; plotted as they are (clipped), so runs compare on an absolute scale.
* reasoning length (``length_score`` = correctness per 1000 model tokens): unbounded and
  task dependent, so divided by the best run's value (best = 1; all 0 if every run is 0).

A missing or None value plots as 0. The raw values are printed under each axis label.
Rendering uses matplotlib's Agg backend (no display needed); the PNG is written atomically.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from etagent.utils.io import atomic_write_bytes

#: (metric key, axis label, normalisation) -- "fraction" = absolute 0..1, "max" = / best run.
DIMENSIONS: tuple[tuple[str, str, str], ...] = (
    ("correctness", "Correctness", "fraction"),
    ("efficiency", "Efficiency", "fraction"),
    ("conciseness", "Conciseness", "fraction"),
    ("exec_score", "Successful execution", "fraction"),
    ("length_score", "Reasoning length", "max"),
)


def _value(m: Mapping[str, Any], key: str) -> float:
    v = m.get(key)
    return 0.0 if v is None or not math.isfinite(float(v)) else float(v)


def normalised(
    runs: Mapping[str, Mapping[str, Any]], dims: Sequence[tuple[str, str, str]] = DIMENSIONS
) -> dict[str, list[float]]:
    """Per run, the plotted value of each dimension (see module docstring)."""
    out = {name: [] for name in runs}
    for key, _, kind in dims:
        if kind not in ("fraction", "max"):
            raise ValueError(f"radar: dimension {key!r} has unknown normalisation {kind!r}")
        best = max((_value(m, key) for m in runs.values()), default=0.0)
        for name, m in runs.items():
            v = _value(m, key)
            out[name].append(min(max(v, 0.0), 1.0) if kind == "fraction" else (v / best if best > 0 else 0.0))
    return out


def radar_chart(
    runs: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    dims: Sequence[tuple[str, str, str]] = DIMENSIONS,
    title: str = "ET-Agent evaluation",
) -> Path:
    """Draw one polygon per run and save a PNG at ``path``; returns the path."""
    if not runs:
        raise ValueError("radar_chart: no runs to plot")
    import matplotlib

    matplotlib.use("Agg")  # why: headless machines; also avoids touching a user's GUI backend
    import matplotlib.pyplot as plt

    values = normalised(runs, dims)
    n = len(dims)
    angles = [2 * math.pi * i / n for i in range(n)] + [0.0]
    labels = []
    for key, label, kind in dims:
        raw = ", ".join(f"{_value(m, key) * (1 if kind == 'max' else 100):.1f}" for m in runs.values())
        labels.append(f"{label}\n({raw})")
    fig = plt.figure(figsize=(6.4, 6.4), dpi=100)
    try:
        ax = fig.add_subplot(111, polar=True)
        for name, vals in values.items():
            ax.plot(angles, vals + vals[:1], linewidth=1.5, label=name)
            ax.fill(angles, vals + vals[:1], alpha=0.12)
        ax.set_xticks(angles[:-1])
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_yticks([0.25, 0.5, 0.75, 1.0])
        ax.set_yticklabels(["", "", "", ""])
        ax.set_title(title, pad=24)
        ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
