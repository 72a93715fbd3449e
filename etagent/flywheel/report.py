"""Round-by-round flywheel table (JSON + markdown) and plot (PNG).

One row per round: sampled questions/trajectories, share correct and mean tool calls of
the policy's samples, per-strategy proposed/accepted/rejected/added counts, pool size,
pool share correct, pool mean tool calls, the four behaviour rates of the pool, SFT size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from etagent.evaluation.metrics import FLAWS as BEHAVIOURS
from etagent.utils.io import atomic_write_json, atomic_write_text

TABLE_COLUMNS = (
    "round", "questions", "samples", "pool_parents", "sample_correct", "sample_mean_calls",
    "accepted", "rejected", "added", "pool_size", "pool_correct", "pool_mean_calls",
    *(f"pool_{b}" for b in BEHAVIOURS), "sft_size", "sft_lucky_before", "sft_lucky", "wall_s",
)


def behaviour_rates(trajs: Iterable[Any], prefix: str = "") -> dict[str, float | None]:
    """Share of trajectories labelled with each behaviour (None when none is labelled)."""
    trajs = list(trajs)
    out: dict[str, float | None] = {}
    for b in BEHAVIOURS:
        vals = [bool(t.behaviour[b]) for t in trajs if t.behaviour and t.behaviour.get(b) is not None]
        out[f"{prefix}{b}"] = round(sum(vals) / len(vals), 4) if vals else None
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: Iterable[str] = TABLE_COLUMNS) -> str:
    cols = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def strategy_table(rows: list[dict[str, Any]]) -> str:
    """Per round and strategy: proposed / accepted / rejected (by reason) / added."""
    lines = ["| round | strategy | proposed | accepted | rejected | added | rejected by reason |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, s in sorted(r.get("strategies", {}).items()):
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(s.get("rejected_by", {}).items()))
            lines.append(f"| {r['round']} | {name} | {s.get('proposed', 0)} | {s.get('accepted', 0)} | "
                         f"{s.get('rejected', 0)} | {s.get('added', 0)} | {reasons or '-'} |")
    return "\n".join(lines) + "\n"


def plot_rounds(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(rounds, [r["pool_size"] for r in rows], marker="o", label="pool")
    axes[0].plot(rounds, [r["sft_size"] for r in rows], marker="s", label="SFT selection")
    axes[0].set_title("size")
    axes[1].plot(rounds, [r["sample_correct"] for r in rows], marker="o", label="samples correct")
    axes[1].plot(rounds, [r["pool_correct"] for r in rows], marker="s", label="pool correct")
    axes[1].plot(rounds, [r["pool_mean_calls"] for r in rows], marker="^", label="pool mean calls")
    axes[1].set_title("correctness / calls")
    for b in BEHAVIOURS:
        ys = [r.get(f"pool_{b}") for r in rows]
        if any(y is not None for y in ys):
            axes[2].plot(rounds, [float("nan") if y is None else y for y in ys], marker="o", label=b)
    axes[2].set_title("pool behaviour rates")
    for ax in axes:
        ax.set_xlabel("round")
        ax.legend(fontsize=7)
        ax.set_xticks(rounds)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def write_round_report(rows: list[dict[str, Any]], out_dir: str | os.PathLike, title: str = "Flywheel rounds") -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"json": out / "rounds.json", "md": out / "rounds.md", "png": out / "rounds.png"}
    atomic_write_json(paths["json"], rows)
    atomic_write_text(paths["md"], f"# {title}\n\n{markdown_table(rows)}\n## Strategies\n\n{strategy_table(rows)}")
    if rows:
        plot_rounds(rows, paths["png"])
    return paths
