"""Five-dimension evaluation metrics and behaviour rates (pure functions; method-spec section 7).

Every trajectory is one attempt at one question; with several samples per question all
"per question" averages below run over trajectories (= the mean over questions of the
per-question means when every question has the same number of samples). ``c_i`` is the
trajectory's graded correctness (math 0/1, QA F1 or EM, as the rollout graded it),
``n_i`` its number of tool calls (``Trajectory.n_calls``: paired tags of the run's grammar in its
text, the official rule), ``f_i`` its failed calls, ``t_i`` its model tokens
(tool results excluded, from ``response_mask``). Success is the run's grader's (``grader``).

* ``correctness``      mean c_i.
* ``efficiency``       the paper's: mean of c_i / n_i, and c_i itself when n_i = 0.
* ``tool_productivity`` OTC's (a different quantity, own name): sum c_i / sum n_i;
  None when there is no call at all. (The official code's third formula
  acc * T / (T + sigma) is not computed.)
* ``conciseness``      rule-based: share of *all* trajectories with no redundant call
  (behaviour labels; exact on synthetic tasks), as the official radar (flags / samples).
  With ``concise_fn`` (e.g. an LLM judge, majority of several verdicts as in the paper) the
  share of all trajectories it accepts is reported as ``conciseness_judge``.
* ``call_success_rate`` share of calls with status ok (None without calls).
* ``exec_score``       the paper's successful-execution score: mean of c_i / max(f_i, 1),
  where a call fails when its status is not ok, its result is empty, or the result
  contains "error" (the official rule; so ``f_i`` may exceed the status-based count).
* ``model_tokens_mean`` mean t_i. ``length_score``: the paper's mean of c_i / t_i, x1000
  (t_i = 0 counts as 1).
* behaviour rates: share of trajectories with each flaw (``redundant_rate``,
  ``insufficient_rate``, ``aborted_rate``, ``erroneous_rate``); ``insufficient`` and
  ``erroneous`` are undefined (n/a, None) for a wrong trajectory with no plan and no
  sibling sample, and such trajectories are left out of those two rates (None when every
  one is undefined). Budget refusals are not aborted executions: ``budget_refusal_rate``
  is the share of trajectories with a call refused by the tool budget. ``redundant_call_share``
  (redundant calls / calls; None without calls) and ``insufficient_share_of_wrong``
  (among wrong trajectories; None when none is wrong). Labels come from
  ``traj.behaviour`` when present, else :func:`etagent.behaviour.label_behaviour` with the
  trajectory's group (same ``group_id``) as siblings.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

from etagent import grading, protocol
from etagent.behaviour import label_behaviour
from etagent.records import OK, Example, ToolCall, Trajectory

FLAWS: tuple[str, ...] = ("redundant", "insufficient", "aborted", "erroneous")


def paper_call_failed(call: ToolCall) -> bool:
    """The official evaluator's rule: not ok, empty result, or 'error' in the result."""
    return call.status != OK or not call.result.strip() or "error" in call.result.lower()


def per_question_correctness(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Mean correctness per example id (over its samples)."""
    acc: dict[str, list[float]] = defaultdict(list)
    for t in trajs:
        acc[t.example_id].append(float(t.score))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _labels(trajs: Sequence[Trajectory], examples_by_id: Mapping[str, Example],
            grader: grading.Grader, grammar: protocol.Grammar) -> list[dict[str, Any]]:
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        groups[t.group_id or t.example_id].append(t)
    out = []
    for t in trajs:
        if t.behaviour and all(k in t.behaviour for k in ("n_redundant", *FLAWS)):
            out.append(t.behaviour)
        else:
            out.append(label_behaviour(t, examples_by_id[t.example_id], groups[t.group_id or t.example_id],
                                       grader=grader, grammar=grammar))
    return out


def _rate(flags: Sequence[Any]) -> float | None:
    """Share of True among defined (non-None) flags; None when none is defined."""
    known = [bool(f) for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def compute_metrics(
    trajs: Sequence[Trajectory],
    examples_by_id: Mapping[str, Example],
    *,
    grader: grading.Grader,
    grammar: protocol.Grammar,
    concise_fn: Callable[[Trajectory, Example], bool] | None = None,
) -> dict[str, Any]:
    """All metrics of one set of trajectories (see module docstring); ``grader`` (the run's)
    decides which scores count as a success, ``grammar`` (the run's) recognises the calls."""
    for t in trajs:
        if t.example_id not in examples_by_id:
            raise ValueError(f"compute_metrics: trajectory {t.id!r} refers to unknown example {t.example_id!r}")
    n = len(trajs)
    c = [float(t.score) for t in trajs]
    calls = [t.n_calls(grammar) for t in trajs]
    tokens = [t.model_tokens for t in trajs]
    total_calls = sum(calls)
    ok_calls = sum(1 for t in trajs for call in t.tool_calls if call.status == OK)
    paper_failed = [sum(paper_call_failed(call) for call in t.tool_calls) for t in trajs]
    labels = _labels(trajs, examples_by_id, grader, grammar)
    wrong = [not grader.succeeded(t, examples_by_id[t.example_id]) for t in trajs]
    wrong_known = [b["insufficient"] for b, w in zip(labels, wrong) if w and b["insufficient"] is not None]
    out: dict[str, Any] = {
        "n": n,
        "n_questions": len({t.example_id for t in trajs}),
        "correctness": _mean(c),
        "efficiency": _mean([ci / k if k else ci for ci, k in zip(c, calls)]),
        "tool_productivity": sum(c) / total_calls if total_calls else None,
        "conciseness": _mean([float(b["n_redundant"] == 0) for b in labels]) if n else None,
        "call_success_rate": ok_calls / total_calls if total_calls else None,
        "exec_score": _mean([ci / max(f, 1) for ci, f in zip(c, paper_failed)]),
        "mean_calls": _mean(calls),
        "model_tokens_mean": _mean(tokens),
        "length_score": 1000.0 * _mean([ci / max(tk, 1) for ci, tk in zip(c, tokens)]),
        "redundant_call_share": (sum(b["n_redundant"] for b in labels) / total_calls if total_calls else None),
        "insufficient_share_of_wrong": _rate(wrong_known),
        "budget_refusal_rate": _mean([float(b.get("n_budget", 0) > 0) for b in labels]),
    }
    for flaw in FLAWS:
        out[f"{flaw}_rate"] = _rate([b[flaw] for b in labels])
    if concise_fn is not None:
        out["conciseness_judge"] = (
            _mean([float(bool(concise_fn(t, examples_by_id[t.example_id]))) for t in trajs]) if n else None
        )
    return out


def macro_average(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over benchmarks of every numeric metric (the paper's table averages its
    benchmarks this way); a metric None on some benchmark averages the others; ``n`` sums."""
    out: dict[str, Any] = {}
    keys = [k for m in rows.values() for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for k in dict.fromkeys(keys):
        vals = [float(m[k]) for m in rows.values() if isinstance(m.get(k), (int, float))]
        out[k] = (sum(vals) if k in ("n", "n_questions") else sum(vals) / len(vals)) if vals else None
    return out


# --------------------------------------------------------------------------- table

#: (metric key, column header, scale, format) -- fractions shown as percentages like the paper.
TABLE_COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("n", "N", 1, "d"),
    ("correctness", "Correct %", 100, ".1f"),
    ("efficiency", "Effi %", 100, ".1f"),
    ("tool_productivity", "TP", 1, ".3f"),
    ("conciseness", "Concise %", 100, ".1f"),
    ("call_success_rate", "Call ok %", 100, ".1f"),
    ("exec_score", "Exec %", 100, ".1f"),
    ("mean_calls", "Calls", 1, ".2f"),
    ("model_tokens_mean", "Tokens", 1, ".1f"),
    ("length_score", "Len x1000", 1, ".2f"),
    ("redundant_rate", "Redund %", 100, ".1f"),
    ("insufficient_rate", "Insuff %", 100, ".1f"),
    ("aborted_rate", "Abort %", 100, ".1f"),
    ("budget_refusal_rate", "Budget %", 100, ".1f"),
    ("erroneous_rate", "Erron %", 100, ".1f"),
)


def _cell(value: Any, scale: float, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "d":
        return str(int(value))
    return format(float(value) * scale, fmt)


def metrics_table_markdown(rows: Mapping[str, Mapping[str, Any]], columns=TABLE_COLUMNS) -> str:
    """A markdown table, one row per run/benchmark name; missing values show as '-'."""
    header = "| name | " + " | ".join(h for _, h, _, _ in columns) + " |"
    sep = "|---|" + "---:|" * len(columns)
    lines = [header, sep]
    for name, m in rows.items():
        cells = [_cell(m.get(k), s, f) for k, _, s, f in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
