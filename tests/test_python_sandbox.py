"""Python sandbox: semantics, every limit and failure, and that the pool recovers after each."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from etagent.tools.python_sandbox import PythonSandbox

CPU_S, WALL_S = 1, 3


@pytest.fixture(scope="module")
def sb():
    os.environ["ETAGENT_TEST_SECRET"] = "hunter2"  # must not reach the code
    box = PythonSandbox(
        cpu_seconds=CPU_S, wall_seconds=WALL_S, memory_mb=256, max_output_chars=100, max_file_mb=1, pool_size=2, max_procs=8
    )
    yield box
    box.close()
    os.environ.pop("ETAGENT_TEST_SECRET", None)


def assert_recovers(sb: PythonSandbox) -> None:
    r = sb.run("print('still alive')")
    assert (r.status, r.output) == ("ok", "still alive\n")


def _gone(pid: int, within_s: float = 3.0) -> bool:
    """True once ``pid`` no longer exists (or is a zombie waiting for init)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
        except (FileNotFoundError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


# --- semantics ----------------------------------------------------------------------------------


def test_stdout_and_last_expression(sb):
    assert sb.run("print(6 * 7)").output == "42\n"
    r = sb.run("x = 3\nx * 7")
    assert (r.status, r.output, r.truncated) == ("ok", "21\n", False)
    assert sb.run("print('a')\n1 + 1").output == "a\n"  # something printed: last value not echoed
    assert sb.run("None").output == ""
    assert sb.run("'text'").output == "text\n"  # str(), like wrapping the line in print()
    assert sb.run("").status == "ok"


def test_exception_returns_stdout_and_last_traceback_line(sb):
    r = sb.run("print('before')\n1 / 0")
    assert r.status == "error"
    assert r.output == "before\nZeroDivisionError: division by zero"
    r = sb.run("def f(:\n  pass")
    assert r.status == "error" and r.output.startswith("SyntaxError")
    r = sb.run("import sys\nprint('err', file=sys.stderr)\nprint('out')")
    assert r.output == "out\n"  # stderr is not part of the result


def test_fresh_state_every_call(sb):
    sb.run_batch(["x = 41", "import sys; sys.leak = 1", "open('f.txt', 'w').write('hi')"])
    r = sb.run_batch(["print(x)", "import sys; print(hasattr(sys, 'leak'))", "import os; print(os.listdir('.'))"])
    assert r[0].status == "error" and "NameError" in r[0].output
    assert r[1].output == "False\n"
    assert r[2].output == "[]\n"


def test_scrubbed_env_and_scratch_dir_removed(sb):
    r = sb.run("import os\nprint(os.environ.get('ETAGENT_TEST_SECRET'))\nprint(os.getcwd())")
    secret, cwd = r.output.split()
    assert secret == "None"
    assert "call-" in cwd
    # throw-away scratch dir: the worker deletes it right after replying (off the critical path)
    deadline = time.time() + 5
    while os.path.exists(cwd) and time.time() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(cwd)


def test_batch_keeps_order_and_runs_concurrently(sb):
    r = sb.run_batch([f"print({i})" for i in range(12)])
    assert [x.output for x in r] == [f"{i}\n" for i in range(12)]
    t0 = time.perf_counter()
    r = sb.run_batch(["import time; time.sleep(0.5)"] * 4)
    assert all(x.status == "ok" for x in r)
    assert time.perf_counter() - t0 < 1.8  # 2 workers: ~1 s, serial would be 2 s


# --- limits and failures ---------------------------------------------------------------------------


def test_pure_python_infinite_loop(sb):
    r = sb.run("while True:\n    pass")
    # On a loaded machine 1 CPU-second can take longer than the wall limit: either limit may fire.
    assert r.status == "timeout" and "limit" in r.output
    assert r.wall_s < WALL_S + 1.5
    assert_recovers(sb)


def test_c_level_infinite_loop(sb):
    r = sb.run("sum(range(10**12))")  # never checks for Python signals: only the rlimit/kill stops it
    assert r.status == "timeout" and "limit" in r.output
    assert_recovers(sb)


def test_sleep_hits_wall_clock_limit(sb):
    r = sb.run("import time\nprint('partial', flush=True)\ntime.sleep(60)")
    assert r.status == "timeout"
    assert r.output.startswith("partial\n") and "wall-clock limit" in r.output
    assert WALL_S - 0.1 < r.wall_s < WALL_S + 1.5
    assert_recovers(sb)


def test_memory_bomb(sb):
    r = sb.run("x = bytearray(10**11)")
    assert (r.status, r.output) == ("error", "MemoryError")
    r = sb.run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))")
    assert r.status == "error" and "MemoryError" in r.output
    assert_recovers(sb)


def test_huge_output_is_truncated_with_marker(sb):
    r = sb.run("print('x' * 1_000_000)")
    assert r.status == "ok" and r.truncated
    assert r.output == "x" * 100 + "...[truncated 999901 chars]"  # 10**6 x + newline - 100 kept
    r = sb.run("for i in range(10**5): print(i)\n1/0")
    assert r.status == "error" and r.truncated
    assert r.output.endswith("chars]\nZeroDivisionError: division by zero")  # the error survives truncation
    assert_recovers(sb)


def test_fork_bomb_is_contained(sb):
    r = sb.run("import os\nwhile True:\n    os.fork()")
    assert r.status == "error" and "process limit reached" in r.output
    assert_recovers(sb)


def test_children_are_killed_with_the_call(sb):
    r = sb.run("import subprocess\np = subprocess.Popen(['sleep', '60'])\nprint(p.pid)")
    assert r.status == "ok"
    assert _gone(int(r.output)), "a process started by the call outlived it"
    r = sb.run("import subprocess\nprint(subprocess.run(['echo', 'hi'], capture_output=True, text=True).stdout)")
    assert r.output.strip() == "hi"  # spawning a few processes is allowed


def test_writing_a_huge_file(sb):
    r = sb.run("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (8 << 20))")
    assert r.status == "error" and "File too large" in r.output
    assert_recovers(sb)


@pytest.mark.parametrize(
    "code,status,output",
    [
        ("import sys\nprint('a')\nsys.exit(3)", "error", "a\nSystemExit: 3"),
        ("import sys\nprint('a')\nsys.exit()", "ok", "a\n"),
        ("import sys\nsys.exit('bye')", "error", "SystemExit: bye"),
        ("import os\nprint('a', flush=True)\nos._exit(7)", "error", "a\nSystemExit: process exited with code 7"),
        ("import os\nos._exit(0)", "ok", ""),
    ],
)
def test_exits(sb, code, status, output):
    r = sb.run(code)
    assert (r.status, r.output) == (status, output)
    assert_recovers(sb)


def test_segfault(sb):
    r = sb.run("import ctypes\nctypes.string_at(0)")
    assert r.status == "error" and "SIGSEGV" in r.output
    assert_recovers(sb)


def test_killing_the_parent_worker(sb, tmp_path):
    pidfile = tmp_path / "sleeper.pid"
    before = sb.restarts
    code = (
        "import os, subprocess, time\n"
        "p = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "os.kill(os.getppid(), 9)\n"
        "time.sleep(60)\n"
    )
    r = sb.run(code)
    assert r.status == "error" and "worker died" in r.output
    assert r.wall_s < WALL_S  # detected at once, not after the wall limit
    assert sb.restarts == before + 1
    assert _gone(int(pidfile.read_text())), "the orphaned call kept running"
    assert_recovers(sb)
    assert all(x.status == "ok" for x in sb.run_batch(["print(1)"] * 4))  # both workers serve


def test_kill_minus_one_is_refused(sb):
    r = sb.run("import os, signal\nos.kill(-1, signal.SIGKILL)")
    assert r.status == "error" and "not allowed" in r.output


def test_preimport_and_close(tmp_path):
    with PythonSandbox(pool_size=1, preimport=["math", "no_such_module_xyz"], cpu_seconds=2, wall_seconds=3) as box:
        r = box.run("print(math.sqrt(16))")  # pre-imported modules are not injected into the namespace
        assert r.status == "error" and "NameError" in r.output
        assert box.run("import math\nmath.sqrt(16)").output == "4.0\n"
        worker = next(iter(box._workers))
        assert any("no_such_module_xyz" in e for e in worker.preimport_errors)
        pid = worker.proc.pid
    assert _gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        box.run("print(1)")


def test_bad_limits():
    with pytest.raises(ValueError, match="pool_size"):
        PythonSandbox(pool_size=0)
