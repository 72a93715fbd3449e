"""Dev metrics after each RL stage for every tuning setting (mean ± std over seeds), with the
calibration sweep's groups as references.

    python experiments/sweeps/tuning/dev_table.py <tuning OUT> <calibration sweep dir>
"""
from __future__ import annotations

import json
import statistics as st
import sys
from pathlib import Path

KEYS = ["correctness", "efficiency", "mean_calls", "redundant_rate", "insufficient_rate", "conciseness"]
STAGES = ("rl_stage0_dev", "rl_stage1_dev", "rl_stage2_dev")


def last_record(path: Path) -> dict:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])


def rows(name: str, runs: list[Path]):
    for stage in STAGES:
        recs = [last_record(r / "metrics" / f"{stage}.jsonl") for r in runs if (r / "metrics" / f"{stage}.jsonl").exists()]
        if not recs:
            continue
        cells = []
        for k in KEYS:
            xs = [rec[k] if k == "mean_calls" else 100 * rec[k] for rec in recs]
            sd = st.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{st.mean(xs):.2f} ± {sd:.2f}" if k == "mean_calls" else f"{st.mean(xs):.1f} ± {sd:.1f}")
        yield f"| {name} | {stage[3:-4]} | {len(recs)} | " + " | ".join(cells) + " |"


def main(tune: Path, sweep: Path) -> None:
    groups = {g: sorted(p for p in (sweep / g).iterdir() if p.is_dir())
              for g in ("et_agent", "grpo_correctness", "no_pareto") if (sweep / g).is_dir()}
    groups |= {d.name: sorted(p for p in d.iterdir() if p.is_dir()) for d in sorted(tune.iterdir()) if d.is_dir()}
    print("| setting | stage | n | " + " | ".join(KEYS) + " |")
    print("|---|---|---|" + "---|" * len(KEYS))
    for name, runs in groups.items():
        for line in rows(name, runs):
            print(line)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
