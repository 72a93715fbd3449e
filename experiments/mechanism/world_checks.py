"""World checks of issue 22 (item 2), measured on a run's seed agent: can the metric see calibration here?

    python experiments/mechanism/world_checks.py <run dir> [--policy seed] [--no-forced]

The run needs finished ``world`` and ``seed`` stages and the ``eval`` stage's greedy trajectories
of the policy (``eval/<policy>/trajectories.jsonl``, the ``eval.split`` questions). Writes
``<run dir>/world_checks.json`` and ``world_checks.md``; numbers overall and per question type:

1. **Zero-call questions are answerable without tools** (goal >= 95 %), two ways: the correct
   share among the policy's own no-call trajectories on plan-[] questions, and the correct share
   with calls forbidden: the policy continues greedily from the no-call opening the teacher
   writes (``<think>I know this.</think>``), so it goes straight to the answer (the rollouts are
   cached in ``world_checks/forced_no_call.jsonl``; ``--no-forced`` skips them).
2. **Plans of 2-4 calls exist**: questions by plan length (overall, per type).
3. **Both flaws at greedy decoding** (goal >= 20 % each): redundant and insufficient shares of
   trajectories, ``etagent.behaviour.label_behaviour`` (exact method: plans), with the run's grading.
4. **Headroom** (goal >= 10 points): mean over questions of ``c_i / max(plan_calls_i, 1)`` (a
   policy that makes exactly its plan's calls, on the policy's own answers) minus the policy's
   efficiency ``mean c_i / max(T_i, 1)`` (``T_i``: paired tool tags; ``c_i``: the graded score,
   as the eval metrics use it).

With the downstream stages finished it also records what they spent and produced (stage wall
times, the flywheel's rounds and the provenance of the ASE set, ASE and RL steps, the questions
each RL stage re-sampled and selected). Per type it also shows how decisive the calls are: the share of trajectories that completed the
plan (every step's value surfaced) and the success with and without a complete plan. Every other
evaluated policy of the run (``eval/*/``) gets the per-type table too (correct, efficiency, calls,
redundant, insufficient), so one file shows what each stage changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from etagent.behaviour import label_behaviour, surfaces  # noqa: E402
from etagent.grading import Grader  # noqa: E402
from etagent.protocol import Grammar  # noqa: E402
from etagent.records import OK  # noqa: E402
from etagent.records import Example, Trajectory, read_jsonl  # noqa: E402
from etagent.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

NO_CALL_PREFIX = "<think>I know this.</think>\n"  # the teacher's opening of a no-call answer (seed/teacher.py)
FORCED_FILE = "world_checks/forced_no_call.jsonl"
GOALS = {"zero_call_correct": 0.95, "redundant_rate": 0.20, "insufficient_rate": 0.20, "headroom": 0.10}
ALL = "all"


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def run_env(run: Path) -> tuple[Grader, Grammar]:
    """The run's own grader and tool grammar, built from its recorded config (no defaults)."""
    from omegaconf import OmegaConf

    from etagent.runenv import RunEnv

    env = RunEnv.from_config(OmegaConf.load(Path(run) / "config.yaml"))
    return env.grader, env.grammar


def plan_complete(t: Trajectory, ex: Example) -> bool:
    """Every plan step's value surfaced in an ok result (the exact labels' notion of a satisfied step)."""
    results = [c.result for c in t.tool_calls if c.status == OK]
    return all(any(surfaces(r, p.expect) for r in results) for p in ex.plan or [])


def policy_rows(trajs: Iterable[Trajectory], by_id: dict[str, Example], policy: Grader,
                grammar: Grammar) -> dict[str, dict]:
    """Per question type (and ``all``): n, correct, success, efficiency, plan-optimal efficiency,
    headroom, calls, plan calls, no-call share, redundant and insufficient shares, and how decisive
    the calls are: the share that completed the plan and the success with and without a complete plan."""
    groups: dict[str, list[tuple[Trajectory, Example, dict]]] = defaultdict(list)
    for t in trajs:
        ex = by_id[t.example_id]
        if ex.plan is None:
            raise ValueError(f"example {ex.id} has no plan: the world checks need a synthetic world with plans")
        lab = label_behaviour(t, ex, None, grader=policy, grammar=grammar)
        for key in (ALL, str(ex.meta.get("type"))):
            groups[key].append((t, ex, lab))
    out: dict[str, dict] = {}
    for key in [ALL] + sorted(k for k in groups if k != ALL):
        rows = groups[key]
        c = [float(t.score) for t, _, _ in rows]
        calls = [t.n_calls(grammar) for t, _, _ in rows]
        plan = [len(ex.plan) for _, ex, _ in rows]
        ok = [float(policy.is_success(ex.domain, float(t.score))) for t, ex, _ in rows]
        done = [plan_complete(t, ex) for t, ex, _ in rows]
        eff = _mean([ci / max(k, 1) for ci, k in zip(c, calls)])
        opt = _mean([ci / max(p, 1) for ci, p in zip(c, plan)])
        out[key] = {
            "n": len(rows),
            "correct": _mean(c),
            "success": _mean(ok),
            "efficiency": eff,
            "plan_optimal_efficiency": opt,
            "headroom": (opt - eff) if eff is not None and opt is not None else None,
            "mean_calls": _mean(calls),
            "mean_plan_calls": _mean(plan),
            "no_call_share": _mean([float(k == 0) for k in calls]),
            "redundant_rate": _mean([float(lab["redundant"]) for _, _, lab in rows]),
            "insufficient_rate": _mean([float(bool(lab["insufficient"])) for _, _, lab in rows]),
            "erroneous_rate": _mean([float(bool(lab["erroneous"])) for _, _, lab in rows]),
            "complete_plan_share": _mean([float(d) for d in done]),
            "success_given_complete": _mean([o for o, d in zip(ok, done) if d]),
            "success_given_incomplete": _mean([o for o, d in zip(ok, done) if not d]),
        }
    return out


def zero_call_check(trajs: Sequence[Trajectory], forced: Sequence[Trajectory] | None, by_id: dict[str, Example],
                    policy: Grader, grammar: Grammar) -> dict[str, dict]:
    """Check 1 per zero-call type (and ``all``): own no-call trajectories and their success, and the
    success with calls forbidden (``forced``; None when not measured)."""
    def by_type(ts: Iterable[Trajectory]) -> dict[str, list[Trajectory]]:
        g: dict[str, list[Trajectory]] = defaultdict(list)
        for t in ts:
            ex = by_id[t.example_id]
            if not ex.plan:
                g[ALL].append(t)
                g[str(ex.meta.get("type"))].append(t)
        return g

    own, frc = by_type(trajs), by_type(forced or [])
    out: dict[str, dict] = {}
    for key in [ALL] + sorted(k for k in own if k != ALL):
        ts = own.get(key, [])
        no_call = [t for t in ts if t.n_calls(grammar) == 0]
        ok = lambda t: float(policy.is_success(by_id[t.example_id].domain, float(t.score)))  # noqa: E731
        fs = frc.get(key, [])
        out[key] = {
            "n": len(ts),
            "success_any_calls": _mean([ok(t) for t in ts]),
            "n_no_call": len(no_call),
            "success_no_call": _mean([ok(t) for t in no_call]),
            "success_with_calls": _mean([ok(t) for t in ts if t.n_calls(grammar) > 0]),
            "n_forced": len(fs) if forced is not None else None,
            "success_forced_no_call": _mean([ok(t) for t in fs]) if forced is not None else None,
            "forced_still_called": _mean([float(t.n_calls(grammar) > 0) for t in fs]) if forced is not None else None,
        }
    return out


def plan_lengths(examples: Sequence[Example]) -> dict[str, dict[str, int]]:
    """Questions by plan length, per type and ``all``."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ex in examples:
        for key in (ALL, str(ex.meta.get("type"))):
            out[key][str(len(ex.plan or []))] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items(), key=lambda kv: (kv[0] != ALL, kv[0]))}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_budgets(run: Path) -> dict:
    """What the downstream stages spent and produced (whatever of them finished): stage wall times,
    the flywheel's rounds and the provenance of the ASE set (``flywheel/sft.jsonl``: ``strategy`` is
    ``sample`` for an unedited policy sample, else the edit that made it), the ASE and seed SFT
    steps, and per RL stage its steps, re-sampled and selected questions and the selected types."""
    out: dict[str, Any] = {"stage_wall_s": {}}
    for f in sorted((run / "metrics").glob("pipeline_*.jsonl")):
        rows = _jsonl(f)
        if rows and rows[-1].get("wall_s") is not None:
            out["stage_wall_s"][f.stem.removeprefix("pipeline_")] = round(float(rows[-1]["wall_s"]), 1)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    stages = summary.get("stages", {})
    for name in ("seed", "ase"):
        if name in stages and "steps" in stages[name]:
            out[f"{name}_steps"] = stages[name]["steps"]
    rounds = run / "flywheel" / "rounds.json"
    if rounds.exists():
        keep = ("round", "questions", "samples", "sample_correct", "accepted", "added", "pool_size", "sft_size")
        out["flywheel_rounds"] = [{k: r.get(k) for k in keep} for r in json.loads(rounds.read_text())]
        sft = _jsonl(run / "flywheel" / "sft.jsonl")
        prov: dict[str, int] = defaultdict(int)
        for r in sft:
            prov[str((r.get("meta") or {}).get("strategy"))] += 1
        out["ase_set"] = {"trajectories": len(sft), "questions": len({r["example_id"] for r in sft}),
                          "by_strategy": dict(sorted(prov.items())),
                          "edited_share": (1 - prov.get("sample", 0) / len(sft)) if sft else None}
    train = run / "world" / "train.jsonl"
    types = {e.id: str(e.meta.get("type")) for e in read_jsonl(train, Example)} if train.exists() else {}
    rl = []
    for d in sorted((run / "rl").glob("stage_*"), key=lambda p: int(p.name.split("_")[1])) if (run / "rl").exists() else []:
        k = int(d.name.split("_")[1])
        sel = json.loads((d / "selection.json").read_text()) if (d / "selection.json").exists() else {}
        picked: dict[str, int] = defaultdict(int)
        for qid in sel.get("selected_ids", []):
            picked[types.get(qid, "?")] += 1
        rl.append({"stage": k, "steps": len(_jsonl(run / "metrics" / f"rl_stage{k}.jsonl")),
                   "sampled": sel.get("n_sampled"), "selected": sel.get("n_selected"),
                   "sample_correct": sel.get("sample_correct_mean"), "selected_types": dict(sorted(picked.items()))})
    if rl:
        out["rl_stages"] = rl
    return out


def forced_rollouts(run: Path, policy_name: str, examples: Sequence[Example]) -> list[Trajectory]:
    """Greedy continuations of ``NO_CALL_PREFIX`` on ``examples`` with the run's policy and tools."""
    from omegaconf import OmegaConf

    from etagent.backends.base import SamplingParams
    from etagent.config.build import build
    from etagent.pipeline import components as C
    from etagent.pipeline.context import RunContext

    cfg = OmegaConf.load(run / "config.yaml")
    cfg.paths.run_dir = str(run)
    cfg.paths.shared_dir = str(ROOT.parent / "shared")  # outside Hydra: no ${hydra:runtime.cwd}
    ctx = RunContext(cfg=cfg, run_dir=run, tracker=None)
    path = ctx.policies().get(policy_name)
    if path is None:
        raise SystemExit(f"{run}: no finished policy {policy_name!r} (have {sorted(ctx.policies())})")
    ecfg = cfg.eval
    env = C.run_env(ctx)
    try:
        backend, _model = C.policy_backend(ctx, path)
        # the eval stage's engine: the run's grader at eval.qa_metric, eval.budget, eval's answer reader
        engine = C.make_engine(ctx, backend, env.grader.with_metric(ecfg.qa_metric), budget=ecfg.budget,
                               answer_extraction=build(ecfg, "eval").engine_extraction)
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=int(engine.max_turn_tokens), seed=int(cfg.seed))
        return engine.rollout(list(examples), 1, params, prefixes=[NO_CALL_PREFIX] * len(examples),
                              group_prefix="forced:")
    finally:
        env.close()


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(res: dict) -> str:
    c = res["checks"]
    lines = [f"# World checks: `{res['run']}` (policy `{res['policy']}`, {res['split']} split, greedy)", "",
             "| check | measured | goal | met |", "|---|---:|---:|---|"]
    for name, row in c.items():
        lines.append(f"| {name} | {row['value_text']} | {row['goal_text']} | {'yes' if row['met'] else 'no'} |")
    lines += ["", "## 1. Zero-call questions (plan = [])", "",
              "| type | n | success, any calls % | own no-call n | success of own no-call % | success with a call % "
              "| success, calls forbidden % | forced still called % |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, r in res["zero_call"].items():
        lines.append(f"| {k} | {r['n']} | {_pct(r['success_any_calls'])} | {r['n_no_call']} | {_pct(r['success_no_call'])} "
                     f"| {_pct(r['success_with_calls'])} | {_pct(r['success_forced_no_call'])} | {_pct(r['forced_still_called'])} |")
    lines += ["", "## 2. Plan lengths (questions by number of plan calls)", "", "| type | " +
              " | ".join(f"{n} calls" for n in sorted({n for v in res["plan_lengths"].values() for n in v})) + " |"]
    cols = sorted({n for v in res["plan_lengths"].values() for n in v})
    lines.append("|---|" + "---:|" * len(cols))
    for k, v in res["plan_lengths"].items():
        lines.append(f"| {k} | " + " | ".join(str(v.get(n, 0)) for n in cols) + " |")
    b = res.get("budgets") or {}
    if b.get("stage_wall_s"):
        lines += ["", "## Run: stage wall times (s)", "", "| " + " | ".join(b["stage_wall_s"]) + " | total |",
                  "|" + "---:|" * (len(b["stage_wall_s"]) + 1),
                  "| " + " | ".join(str(v) for v in b["stage_wall_s"].values()) + f" | {sum(b['stage_wall_s'].values()):.1f} |"]
    if b.get("flywheel_rounds"):
        lines += ["", "## Flywheel rounds", "", "| round | questions | samples | sample correct % | edits accepted "
                  "| added to pool | pool | ASE set |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in b["flywheel_rounds"]:
            lines.append(f"| {r['round']} | {r['questions']} | {r['samples']} | {_pct(r['sample_correct'])} | {r['accepted']} "
                         f"| {r['added']} | {r['pool_size']} | {r['sft_size']} |")
        a = b["ase_set"]
        lines += ["", f"ASE set: {a['trajectories']} verified trajectories on {a['questions']} questions; edited "
                  f"{_pct(a['edited_share'])} % ({', '.join(f'{k} {v}' for k, v in a['by_strategy'].items())}); "
                  f"ASE steps {b.get('ase_steps', '-')} = {_pct((b.get('ase_steps') or 0) / b['seed_steps']) if b.get('seed_steps') else '-'} "
                  f"% of the seed SFT's {b.get('seed_steps', '-')}."]
    if b.get("rl_stages"):
        lines += ["", "## RL stages", "", "| stage | steps | re-sampled questions | selected | sample correct % | selected types |",
                  "|---:|---:|---:|---:|---:|---|"]
        for r in b["rl_stages"]:
            lines.append(f"| {r['stage']} | {r['steps']} | {r['sampled']} | {r['selected']} | {_pct(r['sample_correct'])} "
                         f"| {', '.join(f'{k} {v}' for k, v in r['selected_types'].items())} |")
    for name, rows in res["policies"].items():
        lines += ["", f"## Policy `{name}` per type" + (" (checks 3 and 4)" if name == res["policy"] else ""), "",
                  "| type | n | correct % | success % | efficiency % | plan-optimal eff. % | headroom (points) | calls/q "
                  "| plan calls/q | no-call % | redundant % | insufficient % | erroneous % | complete plan % "
                  "| success, plan complete % | success, plan incomplete % |",
                  "|---|" + "---:|" * 15]
        for k, r in rows.items():
            lines.append(f"| {k} | {r['n']} | {_pct(r['correct'])} | {_pct(r['success'])} | {_pct(r['efficiency'])} "
                         f"| {_pct(r['plan_optimal_efficiency'])} | {_pct(r['headroom'])} | {r['mean_calls']:.2f} "
                         f"| {r['mean_plan_calls']:.2f} | {_pct(r['no_call_share'])} | {_pct(r['redundant_rate'])} "
                         f"| {_pct(r['insufficient_rate'])} | {_pct(r['erroneous_rate'])} | {_pct(r['complete_plan_share'])} "
                         f"| {_pct(r['success_given_complete'])} | {_pct(r['success_given_incomplete'])} |")
    return "\n".join(lines) + "\n"


def run_checks(run: Path, policy_name: str = "seed", forced: bool = True) -> dict:
    """Compute the four checks (module docstring); write world_checks.{json,md} into ``run``."""
    import yaml

    run = Path(run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    split = str((cfg.get("eval") or {}).get("split") or "test")
    examples = list(read_jsonl(run / "world" / f"{split}.jsonl", Example))
    by_id = {e.id: e for e in examples}
    policy, grammar = run_env(run)
    eval_dir = run / "eval"
    traj_file = eval_dir / policy_name / "trajectories.jsonl"
    if not traj_file.exists():
        raise SystemExit(f"{traj_file} missing: run the eval stage on the {policy_name} policy first")
    policies: dict[str, dict] = {}
    trajs_of: dict[str, list[Trajectory]] = {}
    for d in sorted(p for p in eval_dir.iterdir() if (p / "trajectories.jsonl").exists()):
        trajs_of[d.name] = list(read_jsonl(d / "trajectories.jsonl", Trajectory))
    order = [policy_name] + [p for p in trajs_of if p != policy_name]
    for name in order:
        policies[name] = policy_rows(trajs_of[name], by_id, policy, grammar)
    trajs = trajs_of[policy_name]

    forced_trajs: list[Trajectory] | None = None
    if forced:
        cache = run / FORCED_FILE
        zero = [e for e in examples if not e.plan]
        if cache.exists():
            forced_trajs = list(read_jsonl(cache, Trajectory))
        else:
            from etagent.records import write_jsonl

            forced_trajs = forced_rollouts(run, policy_name, zero)
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_jsonl(cache, forced_trajs)
        if {t.example_id for t in forced_trajs} != {e.id for e in zero}:
            raise SystemExit(f"{cache}: its questions are not this run's zero-call {split} questions; delete it")
    zero = zero_call_check(trajs, forced_trajs, by_id, policy, grammar)
    lengths = plan_lengths(examples)
    top = policies[policy_name][ALL]
    z = zero.get(ALL, {})
    multi = sum(v for n, v in lengths.get(ALL, {}).items() if 2 <= int(n) <= 4)

    def check(value: float | None, goal: float, text: str, goal_text: str) -> dict:
        return {"value": value, "goal": goal, "met": value is not None and value >= goal - 1e-12,
                "value_text": text, "goal_text": goal_text}

    checks = {
        "1a. zero-call: success of own no-call trajectories": check(
            z.get("success_no_call"), GOALS["zero_call_correct"],
            f"{_pct(z.get('success_no_call'))} % of {z.get('n_no_call', 0)}", ">= 95 %"),
        "1b. zero-call: success with calls forbidden": check(
            z.get("success_forced_no_call"), GOALS["zero_call_correct"],
            f"{_pct(z.get('success_forced_no_call'))} % of {z.get('n_forced') or 0}", ">= 95 %"),
        "2. questions whose plan needs 2-4 calls": check(
            multi / max(len(examples), 1), 1e-9, f"{multi} of {len(examples)} ({_pct(multi / max(len(examples), 1))} %)",
            "> 0"),
        "3a. redundant trajectories": check(top["redundant_rate"], GOALS["redundant_rate"],
                                            f"{_pct(top['redundant_rate'])} %", ">= 20 %"),
        "3b. insufficient trajectories": check(top["insufficient_rate"], GOALS["insufficient_rate"],
                                               f"{_pct(top['insufficient_rate'])} %", ">= 20 %"),
        "4. headroom: plan-optimal efficiency - efficiency": check(
            top["headroom"], GOALS["headroom"],
            f"{_pct(top['plan_optimal_efficiency'])} - {_pct(top['efficiency'])} = {_pct(top['headroom'])} points",
            ">= 10 points"),
    }
    res = {"run": str(run), "policy": policy_name, "split": split, "checks": checks, "zero_call": zero,
           "plan_lengths": lengths, "policies": policies, "budgets": run_budgets(run)}
    atomic_write_json(run / "world_checks.json", res)
    atomic_write_text(run / "world_checks.md", markdown(res))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="run directory with finished world, seed and eval stages")
    ap.add_argument("--policy", default="seed", help="the evaluated policy the checks are about (default: seed)")
    ap.add_argument("--no-forced", action="store_true", help="skip check 1b (no model is loaded)")
    args = ap.parse_args(argv)
    res = run_checks(args.run, args.policy, forced=not args.no_forced)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
