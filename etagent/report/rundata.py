"""Read one run directory into plain dicts for the report, the sweep comparison and the notebook.

Everything is optional: a run may skip stages (``stages=[world,seed,eval,report]``), be
interrupted, or predate a file; missing parts come back empty and the report says so.
A file that exists but does not parse raises ``ValueError`` naming the file (and line).

Layout read (written by :mod:`etagent.pipeline`):
``config.yaml``, ``summary.json``, ``.hydra/{hydra,overrides}.yaml``, ``<stage>/.done.json``,
``world/teacher_stats.json``, ``flywheel/rounds.{json,md,png}``,
``eval/summary.json``, ``eval/<policy>/metrics.json``, ``metrics/<stage>.jsonl``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from etagent.pipeline.registry import STAGE_NAMES as STAGES  # the one stage list
from etagent.utils.io import read_json, read_jsonl_dicts

# Metric-log keys vary between writers (GRPO trainer: "reward/mean"; older/other writers:
# "reward_mean"); each plotted quantity lists its accepted spellings, first match wins.
RL_KEYS: dict[str, tuple[str, ...]] = {
    "reward_mean": ("reward/mean", "reward_mean"),
    "correctness_mean": ("correct_mean", "correctness_mean", "reward/correct_mean"),
    "f_tool_mean": ("reward/f_tool_mean", "f_tool_mean"),
    "f_len_mean": ("reward/f_len_mean", "f_len_mean"),
    "format_penalty_mean": ("reward/format_penalty_mean", "format_penalty_mean"),
    "sigma_tool": ("sigma_tool",),
    "sigma_len": ("sigma_len",),
    "tool_calls_mean": ("tool_calls_mean", "n_calls_mean"),
    "model_tokens_mean": ("model_tokens_mean",),
    "zero_var_groups": ("reward/zero_var_groups", "zero_var_group_share"),
    "f_tool_min": ("reward/f_tool_min",),
    "f_tool_max": ("reward/f_tool_max",),
    "f_tool_group_std": ("reward/f_tool_group_std",),
    "f_len_min": ("reward/f_len_min",),
    "f_len_max": ("reward/f_len_max",),
    "f_len_group_std": ("reward/f_len_group_std",),
    "kl": ("kl",),
    "ppo_kl": ("ppo_kl",),
    "entropy": ("entropy",),
    "clip_frac": ("clip_frac",),
    "format_error_rate": ("format_error_rate",),
    "redundant_rate": ("behaviour/redundant_rate",),
    "insufficient_rate": ("behaviour/insufficient_rate",),
    "aborted_rate": ("behaviour/aborted_rate",),
    "erroneous_rate": ("behaviour/erroneous_rate",),
}


@dataclass
class RunData:
    """Everything the report needs from one run directory (all parts optional)."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)      # Hydra group -> option (".hydra/hydra.yaml")
    overrides: list[str] = field(default_factory=list)         # command-line overrides
    summary: dict[str, Any] = field(default_factory=dict)      # summary.json
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> .done.json
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"overall", "by_domain"}
    teacher_stats: dict[str, Any] = field(default_factory=dict)
    flywheel_rows: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # tracker stage -> lines

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def final_policy(self) -> str | None:
        return list(self.policies)[-1] if self.policies else None

    def overall(self) -> dict[str, dict[str, Any]]:
        return {p: m.get("overall", {}) for p, m in self.policies.items()}

    def domains(self) -> list[str]:
        seen: list[str] = []
        for m in self.policies.values():
            for d in m.get("by_domain", {}) or {}:
                if d not in seen:
                    seen.append(d)
        return seen


def _policy_sort_key(name: str) -> tuple[int, int, str]:
    fixed = {"base": 0, "seed": 1, "ase": 2}
    if name in fixed:
        return (fixed[name], 0, name)
    m = re.fullmatch(r"rl_stage_?(\d+)", name)
    if m:
        return (3, int(m.group(1)), name)
    return (4, 0, name)


def policy_label(name: str) -> str:
    """Display name: seed, ASE, RL-1, RL-2, base ... (other names unchanged)."""
    m = re.fullmatch(r"rl_stage_?(\d+)", name)
    if m:
        return f"RL-{m.group(1)}"
    return {"ase": "ASE"}.get(name, name)


def load_yaml(path: Path) -> Any:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{where}: invalid YAML: {exc}") from exc


def run_env(run_dir: Path) -> Any:
    """The run environment of a finished run (:class:`etagent.runenv.RunEnv`: its tools' grammar,
    its task's grader) from the config it saved (``config.yaml``), so the report counts calls and
    decides success as the run did (its threshold, its domains).

    A run saved before task nodes named their domain rules (no ``task.domains``) was graded by the
    built-in rules (``conf/task/domains/builtin.yaml``), which are used for it, with a warning.
    """
    import logging

    from omegaconf import OmegaConf, open_dict

    from etagent.config.errors import ConfigError
    from etagent.config.location import conf_dir
    from etagent.runenv import RunEnv

    path = run_dir / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: the report needs the run's config (its tools and grading)")
    cfg = OmegaConf.load(path)
    missing = [k for k in ("tools", "grading", "task") if cfg.get(k) is None]
    if missing:
        raise ConfigError(f"{path}: no {missing} section(s): cannot rebuild the run's grammar and grader")
    if cfg.task.get("domains") is None:
        logging.getLogger(__name__).warning("%s: no task.domains (a run saved before domains were config): "
                                            "grading with the built-in domain rules", path)
        with open_dict(cfg):
            cfg.task.domains = OmegaConf.load(conf_dir() / "task" / "domains" / "builtin.yaml")
    return RunEnv.from_config(cfg)


def load_policies(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Policy metrics in pipeline order: eval/<policy>/metrics.json, else eval/summary.json's overall."""
    edir = run_dir / "eval"
    out: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    summary_overall: dict[str, Any] = {}
    if (edir / "summary.json").exists():
        s = read_json(edir / "summary.json")
        if not isinstance(s, dict):
            raise ValueError(f"{edir / 'summary.json'}: expected a JSON object")
        order = [str(p) for p in s.get("policies", [])]
        summary_overall = s.get("overall", {}) or {}
        order += [p for p in summary_overall if p not in order]
    if edir.is_dir():
        found = sorted((d.name for d in edir.iterdir() if (d / "metrics.json").exists()), key=_policy_sort_key)
        order += [p for p in found if p not in order]
    for p in order:
        f = edir / p / "metrics.json"
        if f.exists():
            m = read_json(f)
            if not isinstance(m, dict) or not isinstance(m.get("overall"), dict):
                raise ValueError(f"{f}: expected {{'overall': {{...}}, 'by_domain': {{...}}}}")
            out[p] = {"overall": m["overall"], "by_domain": m.get("by_domain") or {},
                      "by_benchmark": m.get("by_benchmark") or {}}
        elif isinstance(summary_overall.get(p), dict):
            out[p] = {"overall": summary_overall[p], "by_domain": {}}
    return out


def load_logs(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Tracker lines grouped by their ``stage`` field (file stem when absent), steps in file order."""
    out: dict[str, list[dict[str, Any]]] = {}
    mdir = run_dir / "metrics"
    if not mdir.is_dir():
        return out
    for f in sorted(mdir.glob("*.jsonl")):
        for line in read_jsonl_dicts(f):
            out.setdefault(str(line.get("stage") or f.stem), []).append(line)
    return out


def load_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    rd = RunData(run_dir=run_dir)
    if (run_dir / "config.yaml").exists():
        rd.config = load_yaml(run_dir / "config.yaml") or {}
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.exists():
        h = load_yaml(hydra_yaml) or {}
        choices = ((h.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
        rd.choices = {str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra/")}
    if (run_dir / ".hydra" / "overrides.yaml").exists():
        rd.overrides = [str(o) for o in (load_yaml(run_dir / ".hydra" / "overrides.yaml") or [])]
    if (run_dir / "summary.json").exists():
        rd.summary = read_json(run_dir / "summary.json")
    for stage in STAGES:
        marker = run_dir / stage / ".done.json"
        if marker.exists():
            rd.stages[stage] = read_json(marker)
    rd.policies = load_policies(run_dir)
    if (run_dir / "world" / "teacher_stats.json").exists():
        rd.teacher_stats = read_json(run_dir / "world" / "teacher_stats.json")
    if (run_dir / "flywheel" / "rounds.json").exists():
        rows = read_json(run_dir / "flywheel" / "rounds.json")
        rd.flywheel_rows = rows if isinstance(rows, list) else []
    rd.logs = load_logs(run_dir)
    return rd


# --------------------------------------------------------------------------- derived series


def _first(line: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        v = line.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def rl_stage_logs(rd: RunData) -> dict[str, list[dict[str, Any]]]:
    """Per RL training stage (e.g. ``rl/stage1``), its per-step lines (selection/dev lines excluded)."""
    out = {}
    for stage, lines in rd.logs.items():
        if not stage.startswith("rl") or stage.endswith(("/dev", "/select", "/eval")):
            continue
        steps = [ln for ln in lines if _first(ln, RL_KEYS["reward_mean"]) is not None]
        if all(isinstance(ln.get("step"), (int, float)) for ln in steps):
            # a resumed stage re-logs the steps after its last checkpoint: the last line per step wins
            steps = sorted({int(ln["step"]): ln for ln in steps}.values(), key=lambda ln: int(ln["step"]))
        if steps:
            out[stage] = steps
    return dict(sorted(out.items(), key=lambda kv: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", kv[0])]))


def rl_series(rd: RunData) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """quantity -> RL stage -> [(step, value)]; quantities are the keys of :data:`RL_KEYS`."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {q: {} for q in RL_KEYS}
    for stage, lines in rl_stage_logs(rd).items():
        for q, keys in RL_KEYS.items():
            pts = []
            for i, ln in enumerate(lines):
                v = _first(ln, keys)
                if v is not None:
                    step = ln.get("step")
                    pts.append((int(step) if isinstance(step, (int, float)) else i, v))
            if pts:
                out[q][stage] = pts
    return {q: s for q, s in out.items() if s}


def sft_series(rd: RunData) -> dict[str, list[tuple[int, float]]]:
    """SFT stage (seed, ase, flywheel fine-tunes) -> [(step, loss)]."""
    out = {}
    for stage, lines in rd.logs.items():
        if stage.startswith(("rl", "eval", "pipeline")):
            continue
        pts = [(int(ln.get("step") or i), float(ln["loss"])) for i, ln in enumerate(lines)
               if isinstance(ln.get("loss"), (int, float))]
        if pts:
            out[stage] = pts
    return out


def pareto_points(rd: RunData) -> dict[str, dict[str, Any]]:
    """Per RL stage (``stage_1`` ...), the sampler's view of each sampled question.

    ``{"ids", "var_calls", "var_correct", "front", "selected", "fallback"}``: the two
    objectives of the Pareto selection (population variance over the K rollouts of executed
    tool calls, ``Trajectory.n_executed``, and of correctness, as :mod:`etagent.rl.curriculum`
    computes them from
    ``stage_k/samples.jsonl``), the NSGA-II front of each point (0 = non-dominated) and
    whether ``selection.json`` lists it. Stages without saved samples are left out.
    """
    import numpy as np

    from etagent.records import EXECUTED_STATUSES
    from etagent.rl.pareto import front_ranks, group_variances

    out: dict[str, dict[str, Any]] = {}
    rl = rd.run_dir / "rl"
    if not rl.is_dir():
        return out
    for d in sorted(rl.glob("stage_*"), key=lambda d: int(re.sub(r"\D", "", d.name) or 0)):
        f, sel = d / "samples.jsonl", d / "selection.json"
        if not f.exists():
            continue
        groups: dict[str, tuple[list[float], list[float]]] = {}
        for t in read_jsonl_dicts(f):
            calls, corr = groups.setdefault(str(t["example_id"]), ([], []))
            calls.append(float(sum(c.get("status") in EXECUTED_STATUSES for c in t.get("tool_calls") or [])))
            corr.append(float(t.get("score", t.get("correct", 0.0))))  # "correct": before the rename
        if not groups:
            continue
        ids = list(groups)
        a = group_variances([groups[i][0] for i in ids])
        b = group_variances([groups[i][1] for i in ids])
        selection = read_json(sel) if sel.exists() else {}
        chosen = set(selection.get("selected_ids") or [])
        out[d.name] = {"ids": ids, "var_calls": np.asarray(a).tolist(), "var_correct": np.asarray(b).tolist(),
                       "front": np.asarray(front_ranks(np.asarray(a), np.asarray(b))).tolist(),
                       "selected": [i in chosen for i in ids],
                       "fallback": bool(selection.get("fallback_all_sampled", False))}
    return out
