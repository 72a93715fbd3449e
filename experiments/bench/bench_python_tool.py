"""Benchmark: python-tool calls/s, pre-forked pool vs a fresh ``python -c`` subprocess per call.

Both sides run the same code under the same rlimits (CPU, address space, file size, no core),
in a new session with a scrubbed environment, measured in the same run:

  * sequential: one call at a time (latency-bound, what a single rollout sees);
  * concurrent: ``--pool-size`` calls in flight (the pool's ``run_batch`` vs a thread pool of
    subprocesses), what a batch of rollouts sees.

Two workloads: trivial arithmetic (pure per-call overhead) and a sympy snippet, for which the
pool has sympy pre-imported while a fresh interpreter must import it every call.

    .venv/bin/python experiments/bench/bench_python_tool.py [--calls 300] [--pool-size 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from etagent.tools.python_sandbox import PythonSandbox, SandboxLimits, _scrubbed_env, _set_rlimits

TRIVIAL = "x = sum(i * i for i in range(100))\nprint(x)"
SYMPY = "import sympy\nprint(sympy.factorint(2**32 + 1))"


def fresh_subprocess_call(code: str, lim: SandboxLimits, env: dict, cwd: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-s", "-c", code],
        capture_output=True,
        text=True,
        timeout=lim.wall_seconds,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=lambda: _set_rlimits(lim),
    )
    return proc.stdout


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="calls per pool measurement")
    ap.add_argument("--sub-calls", type=int, default=60, help="calls per subprocess measurement (trivial code)")
    ap.add_argument("--pool-size", type=int, default=2)
    args = ap.parse_args()

    lim = SandboxLimits(cpu_seconds=5, wall_seconds=30, memory_mb=1024, max_output_chars=256, max_file_mb=16)
    scratch = tempfile.mkdtemp(prefix="bench-py-")
    env = _scrubbed_env(scratch)
    env.pop("PYTHONPATH")
    rows = []
    for label, code, preimport, n_pool, n_sub in [
        ("trivial", TRIVIAL, [], args.calls, args.sub_calls),
        ("sympy", SYMPY, ["math", "numpy", "sympy"], max(args.calls // 3, 20), max(args.sub_calls // 10, 4)),
    ]:
        with PythonSandbox(
            cpu_seconds=lim.cpu_seconds, wall_seconds=lim.wall_seconds, memory_mb=lim.memory_mb, pool_size=args.pool_size, preimport=preimport
        ) as sb:
            expected = sb.run(code).output  # warm-up: workers ready, imports done
            assert sb.run_batch([code] * args.pool_size)[0].output == expected
            pool_seq = rate(lambda n: [sb.run(code) for _ in range(n)], n_pool)
            pool_par = rate(lambda n: sb.run_batch([code] * n), n_pool)
        assert fresh_subprocess_call(code, lim, env, scratch) == expected
        sub_seq = rate(lambda n: [fresh_subprocess_call(code, lim, env, scratch) for _ in range(n)], n_sub)
        with ThreadPoolExecutor(args.pool_size) as ex:
            sub_par = rate(lambda n: list(ex.map(lambda _: fresh_subprocess_call(code, lim, env, scratch), range(n))), n_sub)
        rows.append((f"{label} sequential", pool_seq, sub_seq))
        rows.append((f"{label} concurrent x{args.pool_size}", pool_par, sub_par))

    print(f"python tool calls/s (pool_size={args.pool_size}, same rlimits, same run)")
    print(f"{'workload':<26}{'pool':>10}{'fresh python -c':>18}{'ratio':>9}")
    for name, pool, sub in rows:
        print(f"{name:<26}{pool:>10.1f}{sub:>18.1f}{pool / sub:>8.1f}x")


if __name__ == "__main__":
    main()
