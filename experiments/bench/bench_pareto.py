"""Benchmark: Pareto question selection, O(N log N) etagent vs an O(N^2) reference, same run.

    .venv/bin/python experiments/bench/bench_pareto.py [--sizes 10000 50000 200000] [--ref-max 50000]

Data: K=8 rollouts per question, tool-call counts 0..6, half math (0/1 correctness), half
QA (F1 in {0, .25, .5, .75, 1} or continuous with --continuous); ``count`` = N/5.
The reference is Deb's fast non-dominated sort vectorised with numpy in row blocks
(still N^2 pair tests plus N^2 for peeling) and a loop crowding cut. Both results are
compared for equality; the reference is skipped above ``--ref-max`` and its time there
extrapolated (quadratic) for the printout only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from etagent.rl.pareto import group_variances, has_mixed_outcomes, pareto_select

BLOCK = 512


def _dominates(ap, bp, a, b) -> np.ndarray:
    """[len(ap), len(a)] bool: row point dominates column point (maximise both)."""
    ap, bp = ap[:, None], bp[:, None]
    return (ap >= a) & (bp >= b) & ((ap > a) | (bp > b))


def reference_fronts(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    n = a.size
    count = np.zeros(n, dtype=np.int64)
    for s in range(0, n, BLOCK):  # N^2 pair tests
        count += _dominates(a[s : s + BLOCK], b[s : s + BLOCK], a, b).sum(axis=0)
    fronts = []
    front = np.flatnonzero(count == 0)
    while front.size:
        fronts.append(front)
        before = count.copy()
        for s in range(0, front.size, BLOCK):  # peel: |front| x N each, N^2 in total
            rows = front[s : s + BLOCK]
            count -= _dominates(a[rows], b[rows], a, b).sum(axis=0)
        front = np.flatnonzero((count == 0) & (before > 0))
    return fronts


def reference_crowding(front: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[int]:
    items = [[int(i), 0.0] for i in front]
    for obj in (a, b):
        items.sort(key=lambda x: obj[x[0]])
        scale = obj[items[-1][0]] - obj[items[0][0]]
        if scale == 0:
            continue
        items[0][1] = items[-1][1] = float("inf")
        for j in range(1, len(items) - 1):
            items[j][1] += (obj[items[j + 1][0]] - obj[items[j - 1][0]]) / scale
    items.sort(key=lambda x: x[1], reverse=True)
    return [i for i, _ in items]


def reference_select(tools, corr, count, domains) -> list[int]:
    a, b = group_variances(tools), group_variances(corr)
    out: list[int] = []
    for front in reference_fronts(a, b):
        need = count - len(out)
        if need <= 0:
            break
        out.extend(front.tolist() if front.size <= need else reference_crowding(front, a, b)[:need])
    return [i for i in out if has_mixed_outcomes(corr[i], domains[i])]


def make_data(n: int, k: int, continuous: bool, seed: int):
    rng = np.random.default_rng(seed)
    tools = rng.integers(0, 7, size=(n, k))
    domains = np.where(rng.random(n) < 0.5, "math", "qa")
    p = rng.random((n, 1))
    corr = (rng.random((n, k)) < p).astype(np.float64)
    qa = domains == "qa"
    f1 = rng.random((n, k)) if continuous else rng.integers(0, 5, size=(n, k)) / 4
    corr[qa] = f1[qa]
    return tools.tolist(), corr.tolist(), domains.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--ref-max", type=int, default=50_000, help="largest N the O(N^2) reference runs at")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--continuous", action="store_true", help="continuous QA F1 (many distinct points)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'N':>8} {'fast_s':>9} {'ref_s':>9} {'speedup':>9}  equal  selected")
    last_ref: tuple[int, float] | None = None
    for n in args.sizes:
        tools, corr, domains = make_data(n, args.k, args.continuous, seed=n)
        count = n // 5
        fast_s = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            sel = pareto_select(tools, corr, count, domains)
            fast_s = min(fast_s, time.perf_counter() - t0)
        if n <= args.ref_max:
            t0 = time.perf_counter()
            ref = reference_select(tools, corr, count, domains)
            ref_s = time.perf_counter() - t0
            last_ref = (n, ref_s)
            print(f"{n:>8} {fast_s:>9.3f} {ref_s:>9.2f} {ref_s / fast_s:>8.0f}x  {str(ref == sel):>5}  {len(sel)}")
        else:
            est = last_ref[1] * (n / last_ref[0]) ** 2 if last_ref else float("nan")
            print(f"{n:>8} {fast_s:>9.3f} {'~' + format(est, '.0f'):>9} {'~' + format(est / fast_s, '.0f'):>8}x  "
                  f"{'n/a':>5}  {len(sel)}   (reference skipped, quadratic estimate)")


if __name__ == "__main__":
    main()
