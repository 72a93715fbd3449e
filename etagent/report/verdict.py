"""Does the target configuration beat its baselines? Win/tie/loss per metric, and goal checks.

The interval rule (stated in every paragraph it writes): over seeds, a group is mean ± sample std
(ddof 1). The target *wins* a metric against a baseline when its mean is better by more than the
sum of the two stds (the ±1 std bands do not overlap), *loses* when it is worse by more than that,
and *ties* otherwise. A group with one run has no std; its band counts as 0 and the paragraph says
so. With 3 seeds this is deliberately conservative: a tie means "not shown", not "equal".

Goals (issue 14, on the embedded default), each checked from the same group means:
correctness >= best baseline's correctness - that baseline's std; efficiency >= 1.25x the best
baseline's efficiency; redundant rate <= 5%; insufficient rate not above the seed agent's.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

# metric -> +1 (higher is better) / -1 (lower is better); tool calls and tokens have no direction
VERDICT_METRICS: tuple[tuple[str, str, int], ...] = (
    ("correctness", "correctness", +1),
    ("efficiency", "efficiency", +1),
    ("conciseness", "conciseness", +1),
    ("exec_score", "successful execution", +1),
    ("length_score", "reasoning length score", +1),
    ("redundant_rate", "redundant calls", -1),
    ("insufficient_rate", "insufficient calls", -1),
    ("aborted_rate", "aborted calls", -1),
    ("erroneous_rate", "erroneous reasoning", -1),
)
EFFICIENCY_FACTOR = 1.25
MAX_REDUNDANT = 0.05


def _std(g: Mapping[str, Any], k: str) -> float:
    s = (g.get("std") or {}).get(k)
    return float(s) if s is not None else 0.0


def compare_pair(target: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per metric: target/base mean, the signed improvement, the band and win/tie/loss."""
    out: dict[str, dict[str, Any]] = {}
    for key, _, sign in VERDICT_METRICS:
        a, b = target["mean"].get(key), base["mean"].get(key)
        if a is None or b is None:
            continue
        gain = sign * (a - b)
        band = _std(target, key) + _std(base, key)
        out[key] = {"target": a, "baseline": b, "gain": gain, "band": band,
                    "result": "win" if gain > band else "loss" if gain < -band else "tie"}
    return out


def goals(target: Mapping[str, Any], baselines: Sequence[Mapping[str, Any]],
          reference: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The four goals with the numbers they were decided on (met: None when not decidable)."""
    m = target["mean"]
    out: list[dict[str, Any]] = []
    with_c = [b for b in baselines if b["mean"].get("correctness") is not None]
    if with_c and m.get("correctness") is not None:
        best = max(with_c, key=lambda b: b["mean"]["correctness"])
        need = best["mean"]["correctness"] - _std(best, "correctness")
        out.append({"goal": "correctness >= best baseline - 1 std", "value": m["correctness"], "need": need,
                    "baseline": best["group"], "met": m["correctness"] >= need})
    with_e = [b for b in baselines if b["mean"].get("efficiency") is not None]
    if with_e and m.get("efficiency") is not None:
        best = max(with_e, key=lambda b: b["mean"]["efficiency"])
        need = EFFICIENCY_FACTOR * best["mean"]["efficiency"]
        out.append({"goal": f"efficiency >= {EFFICIENCY_FACTOR}x best baseline", "value": m["efficiency"],
                    "need": need, "baseline": best["group"], "met": m["efficiency"] >= need})
    if m.get("redundant_rate") is not None:
        out.append({"goal": f"redundant rate <= {MAX_REDUNDANT:.0%}", "value": m["redundant_rate"],
                    "need": MAX_REDUNDANT, "baseline": None, "met": m["redundant_rate"] <= MAX_REDUNDANT})
    ref = None if reference is None else reference["mean"].get("insufficient_rate")
    if ref is not None and m.get("insufficient_rate") is not None:
        out.append({"goal": "insufficient rate <= seed agent's", "value": m["insufficient_rate"], "need": ref,
                    "baseline": reference["group"], "met": m["insufficient_rate"] <= ref})
    return out


def verdict(groups: Sequence[Mapping[str, Any]], target: str,
            reference: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Win/tie/loss of ``target`` against every other group, goals and a generated paragraph.

    ``reference`` (the seed agent's row) is compared like a baseline and anchors the insufficient
    goal. Returns None when the target group is not in the sweep.
    """
    tgt = next((g for g in groups if g["group"] == target), None)
    if tgt is None:
        return None
    baselines = [g for g in groups if g["group"] != target]
    pairs = {b["group"]: compare_pair(tgt, b) for b in baselines}
    if reference is not None:
        pairs[reference["group"]] = compare_pair(tgt, reference)
    tally = {b: {r: sum(1 for v in p.values() if v["result"] == r) for r in ("win", "tie", "loss")}
             for b, p in pairs.items()}
    gl = goals(tgt, baselines, reference)
    return {"target": target, "rule": "win/loss when |gain| > std_target + std_baseline, tie otherwise",
            "pairs": pairs, "tally": tally, "goals": gl, "paragraph": paragraph(tgt, pairs, tally, gl)}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def paragraph(tgt: Mapping[str, Any], pairs: Mapping[str, Mapping[str, Any]],
              tally: Mapping[str, Mapping[str, int]], gl: Sequence[Mapping[str, Any]]) -> str:
    names = {k: label for k, label, _ in VERDICT_METRICS}
    n = tgt.get("n_runs", 0)
    lines = [f"**Does `{tgt['group']}` beat its baselines here?** Over {n} run(s) per group, a metric is a win "
             "(loss) when the target's mean is better (worse) by more than the sum of the two groups' "
             "sample stds, a tie otherwise; groups with one run count a std of 0."]
    for base, p in pairs.items():
        t = tally[base]
        wins = [names[k] for k, v in p.items() if v["result"] == "win"]
        losses = [names[k] for k, v in p.items() if v["result"] == "loss"]
        c = p.get("correctness")
        corr = (f" Correctness {_pct(c['target'])} vs {_pct(c['baseline'])} ({c['result']})." if c else "")
        lines.append(f"- vs `{base}`: {t['win']} win / {t['tie']} tie / {t['loss']} loss."
                     + (f" Wins: {', '.join(wins)}." if wins else "")
                     + (f" Losses: {', '.join(losses)}." if losses else "") + corr)
    if gl:
        met = sum(1 for g in gl if g["met"])
        lines.append(f"- Goals met: {met} of {len(gl)}: " + "; ".join(
            f"{g['goal']}: {_pct(g['value'])} vs {_pct(g['need'])} "
            f"({'met' if g['met'] else 'missed by ' + _pct(abs(g['need'] - g['value'])) + ' points'})"
            for g in gl) + ".")
    return "\n".join(lines)
