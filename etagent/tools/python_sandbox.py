"""Python tool: run untrusted model code out of process in a pool of pre-forked workers.

Design (chosen for full per-call isolation at low cost):

* ``pool_size`` long-lived *worker* processes are started once; each imports the ``preimport``
  modules (e.g. math, numpy, sympy) and then waits for requests on a pipe (JSON lines).
* Every call runs in a **fresh child forked from the warm worker**, which never runs model
  code itself, so no variable, import or file from an earlier call survives. The worker forks
  and sets up the child for the *next* call right after answering the current one (one spare
  per worker, blocked reading its code), so fork + set-up stay off the call's critical path.
  Exec-in-place in the worker would be faster still but shares state between calls and cannot
  stop C-level loops, so it is not used.
* The child: new session/process group, stdin/stderr -> /dev/null, stdout -> a pipe, rlimits
  (CPU seconds, address space, file size, no core dumps), ``chdir`` to a throw-away scratch
  directory (deleted after the call), scrubbed environment, re-seeded RNGs, and a guard that
  allows at most ``max_procs`` process creations per call (``RLIMIT_NPROC`` does nothing for
  root, so a fork bomb is contained by this count plus a process-group kill).
* The worker reads the child's stdout (keeping the first ``max_output_chars``; the rest is
  counted and replaced by ``...[truncated N chars]``), enforces the wall-clock limit, and kills
  the whole process group when the call ends. The pool (parent) restarts a worker that died
  (e.g. the code killed its parent) and kills that call's process group itself.

Semantics: the code runs as a script (``__name__ == "__main__"``) and only **stdout** is
returned; on an exception the output is stdout plus the last traceback line (e.g.
``ZeroDivisionError: division by zero``). As in the official ET-Agent tool, if the last
statement is a bare expression and nothing was printed, its value is printed (``str``, not
``repr``; ``None`` prints nothing). ``sys.exit(0)``/``sys.exit()`` is success, other exit codes
are errors. Status is ``timeout`` for the wall or CPU limit, ``error`` for exceptions, signals
(segfault), a non-zero exit, a hit process/output guard, or a dead worker.

**This is not a security boundary.** It contains the common failures of model-written code
(infinite loops, memory bombs, huge output, fork bombs, big files, exits, killing its parent,
segfaults) but code can still read/write files outside the scratch directory, use the network,
escape the process group with ``setsid`` or fork through C, and so on. Run untrusted code from
a determined attacker in a container/VM/gVisor. Departure from the official ET-Agent code:
there, each call is a bare ``subprocess.run`` of a fresh interpreter with no limits.
"""

from __future__ import annotations

import ast
import builtins
import codecs
import errno
import fcntl
import io
import json
import math
import os
import queue
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from etagent.protocol import ToolSpec
from etagent.records import ERROR, OK, TIMEOUT
from etagent.tools.base import ToolResult

_HARD_OUTPUT_BYTES = 16 << 20  # kill a call that writes more than this (the rest would be discarded anyway)
_DRAIN_S = 0.5  # after the child exits, how long to wait for the pipe to close (escaped grandchildren)
_GRACE_S = 5.0  # parent-side slack over the wall limit before it declares the worker hung


@dataclass
class SandboxLimits:
    cpu_seconds: float = 5.0
    wall_seconds: float = 10.0
    memory_mb: int = 1024  # RLIMIT_AS (virtual address space, includes pre-imported modules); 0 = off
    max_output_chars: int = 256
    max_file_mb: int = 16  # RLIMIT_FSIZE: largest file the code may write
    max_procs: int = 16  # process creations allowed per call (fork/subprocess/posix_spawn/system)


# ----------------------------------------------------------------------------------------------
# parent side: the pool
# ----------------------------------------------------------------------------------------------


def canonical_python_query(code: str) -> str:
    """Python's canonical query: all whitespace removed ("6*7" and "6 * 7" are the same call)."""
    return "".join(" ".join(str(code).split()).split())


class PythonSandbox:
    """Pool of pre-forked Python workers; ``run_batch`` runs up to ``pool_size`` calls at once."""

    spec = ToolSpec(
        name="python",
        prompt="to run Python code, write it inside <python> </python>",
        normalise_query=canonical_python_query,
        hints={"insufficient": "I should compute this with python.",
               "aborted": "The code failed; I should fix it and run it again."},
        domains=("math",),
    )
    name = spec.name

    def __init__(
        self,
        cpu_seconds: float = 5.0,
        wall_seconds: float = 10.0,
        memory_mb: int = 1024,
        max_output_chars: int = 256,
        max_file_mb: int = 16,
        pool_size: int = 4,
        preimport: Sequence[str] = (),
        max_procs: int = 16,
        start_timeout_s: float = 60.0,
    ):
        if pool_size < 1:
            raise ValueError(f"PythonSandbox: pool_size must be >= 1, got {pool_size}")
        if wall_seconds <= 0 or cpu_seconds <= 0:
            raise ValueError("PythonSandbox: cpu_seconds and wall_seconds must be > 0")
        self.limits = SandboxLimits(
            float(cpu_seconds), float(wall_seconds), int(memory_mb), int(max_output_chars), int(max_file_mb), int(max_procs)
        )
        self.pool_size = int(pool_size)
        self.preimport = [str(m) for m in preimport]
        self.start_timeout_s = float(start_timeout_s)
        self._base = tempfile.mkdtemp(prefix="etagent-py-")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0  # workers replaced after dying (observability + tests)
        for _ in range(self.pool_size):
            self._idle.put(self._spawn())
        self._executor = ThreadPoolExecutor(max_workers=self.pool_size, thread_name_prefix="pysandbox")
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._base, self._executor)

    # -- public API -------------------------------------------------------------------------
    def run(self, code: str) -> ToolResult:
        if self._closed:
            raise RuntimeError("PythonSandbox is closed")
        worker = self._idle.get()
        try:
            result = worker.call(code)
        except BaseException:
            worker.kill()
            raise
        finally:
            if not worker.alive():
                worker.kill()
                with self._lock:
                    self._workers.discard(worker)
                    self.restarts += 1
                worker = self._spawn()  # transparent restart; it warms up while other calls run
            self._idle.put(worker)
        return result

    def run_batch(self, queries: list[str]) -> list[ToolResult]:
        if len(queries) <= 1:
            return [self.run(q) for q in queries]
        return list(self._executor.map(self.run, queries))

    def close(self) -> None:
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "PythonSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------
    def _spawn(self) -> "_Worker":
        w = _Worker(self.limits, self.preimport, self._base, self.start_timeout_s)
        with self._lock:
            self._workers.add(w)
        return w


def _shutdown(workers: set, base: str, executor: ThreadPoolExecutor) -> None:
    executor.shutdown(wait=False, cancel_futures=True)
    for w in list(workers):
        w.stop()
    shutil.rmtree(base, ignore_errors=True)


def _scrubbed_env(home: str) -> dict[str, str]:
    """No inherited secrets: only what Python and the numeric libraries need."""
    pkg_root = str(Path(__file__).resolve().parents[2])
    bindir = os.path.dirname(sys.executable)
    return {
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": pkg_root,  # so the worker can import this module from a plain checkout
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",  # BLAS thread pools would blow the address-space limit and the CPUs
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }


class _Worker:
    """Parent-side handle of one worker process (used by one thread at a time)."""

    def __init__(self, limits: SandboxLimits, preimport: list[str], base: str, start_timeout_s: float):
        self.limits = limits
        self.start_timeout_s = start_timeout_s
        self.ready = False
        self.preimport_errors: list[str] = []
        cfg = {"limits": asdict(limits), "preimport": preimport, "base": base}
        self.proc = subprocess.Popen(
            [sys.executable, "-s", "-c", "from etagent.tools.python_sandbox import _worker_main; _worker_main()", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # worker crashes should be visible; children's stderr is /dev/null
            env=_scrubbed_env(base),
            cwd=base,
            start_new_session=True,  # Ctrl-C in the terminal does not hit workers mid-call
            close_fds=True,
        )
        self._buf = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _recv(self, timeout: float) -> dict | None:
        """Next JSON message; None on EOF (worker died). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _ensure_ready(self) -> None:
        if self.ready:
            return
        try:
            msg = self._recv(self.start_timeout_s)
        except TimeoutError:
            msg = None
        if not msg or not msg.get("ready"):
            self.kill()
            raise RuntimeError(f"python sandbox worker failed to start (exit code {self.proc.poll()}); see stderr")
        self.preimport_errors = msg.get("preimport_errors", [])
        self.ready = True

    def call(self, code: str) -> ToolResult:
        self._ensure_ready()
        t0 = time.perf_counter()
        lim = self.limits
        try:
            self.proc.stdin.write(json.dumps({"code": code}).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.kill()
            return ToolResult(ERROR, "Error: python sandbox worker died before the call", time.perf_counter() - t0)
        started: dict | None = None
        try:
            started = self._recv(lim.wall_seconds + _GRACE_S)  # {"pid", "scratch"} of the call's child
            msg = started if started is None else self._recv(lim.wall_seconds + _GRACE_S)
        except TimeoutError:
            self._reap_call(started)
            self.kill()
            return ToolResult(
                TIMEOUT, f"TimeoutError: wall-clock limit of {lim.wall_seconds:g}s exceeded", time.perf_counter() - t0
            )
        if msg is None:
            # The worker died mid-call, most likely killed by the code itself (os.kill(os.getppid(), 9)).
            self._reap_call(started)
            self.kill()
            return ToolResult(
                ERROR,
                "Error: the sandbox worker died during the call (did the code kill its parent process?)",
                time.perf_counter() - t0,
            )
        return ToolResult(msg["status"], msg["output"], time.perf_counter() - t0, bool(msg["truncated"]))

    @staticmethod
    def _reap_call(started: dict | None) -> None:
        """Kill the call's process group and remove its scratch dir (the worker can no longer do it)."""
        if not started:
            return
        try:
            os.killpg(int(started["pid"]), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(started.get("scratch", ""), ignore_errors=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker leads its own session
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable process
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def stop(self) -> None:
        """Polite shutdown: EOF on stdin makes the worker exit; kill it if it lingers."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=1)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


# ----------------------------------------------------------------------------------------------
# worker side (runs in the worker process; never imported for its side effects in the parent)
# ----------------------------------------------------------------------------------------------


def _worker_main() -> None:
    cfg = json.loads(sys.argv[-1])
    lim = SandboxLimits(**cfg["limits"])
    base = cfg["base"]
    # Protocol pipes move off fds 0/1 so that nothing printed by accident corrupts them.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.pop("PYTHONPATH", None)  # only needed to import this module; calls see a plain env
    errors = []
    for mod in cfg["preimport"]:
        try:
            __import__(mod)
        except Exception as exc:  # a missing optional module must not kill the pool
            errors.append(f"{mod}: {type(exc).__name__}: {exc}")
    import gc

    gc.collect()
    gc.freeze()  # keep the imported heap out of the collector: fewer copy-on-write pages per fork
    spare = _Spare(lim, base)
    _send(proto_out, {"ready": True, "preimport_errors": errors})
    for line in proto_in:
        call, spare = spare, None
        # The parent learns the pid before the code runs, so it can kill the call's process
        # group even if the code kills this worker.
        _send(proto_out, {"pid": call.pid, "scratch": call.scratch})
        reply = call.run(json.loads(line)["code"])
        _send(proto_out, reply)
        call.cleanup()  # reap + delete scratch, then fork the next child: both off the critical path
        spare = _Spare(lim, base)


def _send(fd: int, msg: dict) -> None:
    data = (json.dumps(msg) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Spare:
    """A child forked from the clean worker *before* its call arrives, already set up and
    blocked reading its code; running a call costs one pipe write instead of fork + set-up."""

    def __init__(self, lim: SandboxLimits, base: str):
        self.lim = lim
        self.scratch = tempfile.mkdtemp(prefix="call-", dir=base)
        out_r, out_w = os.pipe()
        st_r, st_w = os.pipe()
        tok_r, tok_w = os.pipe()
        code_r, code_w = os.pipe()
        os.write(tok_w, b"x" * max(0, lim.max_procs))  # one token per allowed process creation
        os.close(tok_w)
        os.set_blocking(tok_r, False)
        pid = os.fork()
        if pid == 0:  # child: never returns
            _child(lim, self.scratch, out_w, st_w, tok_r, code_r)
        for fd in (out_w, st_w, tok_r, code_r):
            os.close(fd)
        self.pid, self.out_r, self.st_r, self.code_w = pid, out_r, st_r, code_w
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # old kernel: poll waitpid instead
            self.pidfd = None
        self.reaped = False
        self.wstatus = 0
        self.rusage = None

    def run(self, code: str) -> dict:
        """Hand the code to the child, read its output, enforce the wall limit, build the reply."""
        lim = self.lim
        deadline = time.monotonic() + lim.wall_seconds
        try:
            data = b"C" + code.encode("utf-8", "surrogateescape")
            while data:  # blocks only while the child drains the pipe (huge code)
                data = data[os.write(self.code_w, data) :]
        except BrokenPipeError:
            pass  # the child died while set up; reported from its exit status below
        os.close(self.code_w)
        self.code_w = -1
        keep_bytes = 4 * lim.max_output_chars + 4
        head = bytearray()
        total_bytes = total_chars = 0
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        status_raw = b""
        reason = None  # "wall" | "output" when the worker killed the call
        open_fds = {self.out_r, self.st_r}
        exited = False
        drain_deadline = None
        while open_fds:
            if self.out_r not in open_fds and status_raw.endswith(b"\n"):
                break  # fast path: output closed and status written; no need to wait for the exit
            now = time.monotonic()
            if exited:
                drain_deadline = drain_deadline or now + _DRAIN_S
                if now >= drain_deadline:
                    break
                wait = drain_deadline - now
            else:
                if now >= deadline:
                    reason = "wall"
                    _killpg(self.pid)
                    exited = True
                    continue
                wait = deadline - now if self.pidfd is not None else min(deadline - now, 0.005)
            watch = list(open_fds) + ([self.pidfd] if (self.pidfd is not None and not exited) else [])
            ready, _, _ = select.select(watch, [], [], wait)
            for fd in ready:
                if fd == self.pidfd:
                    exited = True
                    _killpg(self.pid)  # grandchildren die with the call; they would keep the pipe open
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    open_fds.discard(fd)
                elif fd == self.st_r:
                    status_raw += chunk
                else:
                    total_bytes += len(chunk)
                    total_chars += len(decoder.decode(chunk))
                    if len(head) < keep_bytes:
                        head += chunk[: keep_bytes - len(head)]
                    if total_bytes > _HARD_OUTPUT_BYTES and reason is None:
                        reason = "output"
                        _killpg(self.pid)
                        exited = True
            if self.pidfd is None and not exited and os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                exited = True
                _killpg(self.pid)
        _killpg(self.pid)  # the call is over: nothing it started may outlive it
        total_chars += len(decoder.decode(b"", final=True))
        child_status = None
        if reason is None and status_raw.endswith(b"\n"):
            try:
                child_status = json.loads(status_raw.decode())
            except ValueError:
                pass
        if child_status is None:
            self._reap()  # the exit status tells what happened (signal, CPU limit, os._exit)
        return _reply(lim, self.wstatus, self.rusage, reason, head, total_chars, child_status)

    def _reap(self) -> None:
        if not self.reaped:
            _, self.wstatus, self.rusage = os.wait4(self.pid, 0)
            self.reaped = True

    def cleanup(self) -> None:
        _killpg(self.pid)
        self._reap()
        for fd in (self.out_r, self.st_r, self.code_w, self.pidfd):
            if fd is not None and fd >= 0:
                os.close(fd)
        shutil.rmtree(self.scratch, ignore_errors=True)


def _reply(lim, wstatus: int, rusage, reason, head: bytearray, total_chars: int, child_status: dict | None) -> dict:
    text = bytes(head).decode("utf-8", "replace")
    truncated = total_chars > lim.max_output_chars
    if truncated:
        text = f"{text[: lim.max_output_chars]}...[truncated {total_chars - lim.max_output_chars} chars]"
    if reason == "wall":
        status, err = TIMEOUT, f"TimeoutError: wall-clock limit of {lim.wall_seconds:g}s exceeded"
    elif reason == "output":
        status, err = ERROR, f"OutputLimitError: more than {_HARD_OUTPUT_BYTES} bytes written; process killed"
    elif child_status is not None:
        status, err = (OK, None) if child_status.get("ok") else (ERROR, child_status.get("error", "Error"))
    elif os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        cpu_used = rusage.ru_utime + rusage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= math.ceil(lim.cpu_seconds)):
            status, err = TIMEOUT, f"TimeoutError: CPU time limit of {lim.cpu_seconds:g}s exceeded"
        else:
            name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
            desc = signal.strsignal(sig) or name
            status, err = ERROR, f"Error: process killed by signal {name} ({desc})"
    else:  # exited without reporting: os._exit(n) or a C-level exit
        code = os.WEXITSTATUS(wstatus)
        status, err = (OK, None) if code == 0 else (ERROR, f"SystemExit: process exited with code {code}")
    if err:
        text = f"{text.rstrip(chr(10))}\n{err}" if text.strip() else err
    return {"status": status, "output": text, "truncated": truncated}


# ---------------------------------------------------------------------------------------------- child


class _TrackedStdout(io.TextIOWrapper):
    """stdout that remembers whether anything was printed (for the last-expression rule)."""

    wrote = False

    def write(self, s: str) -> int:
        if s:
            self.wrote = True
        return super().write(s)


def _read_code(fd: int) -> str | None:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.startswith(b"C"):
        return None  # the worker went away before sending a call
    return data[1:].decode("utf-8", "surrogateescape")


def _child(lim: SandboxLimits, scratch: str, out_w: int, st_w: int, tok_r: int, code_r: int):
    me = os.getpid()
    exit_code = 1
    status: dict = {"error": "SandboxError: set-up failed"}
    try:
        os.setsid()  # own session + process group: the worker kills the whole group afterwards
        # Lift the fds we keep above the slots they go to (a pipe may sit on fd 3..5), then place
        # them: 0/2 = /dev/null, 1 = output, 3 = status, 4 = process tokens, 5 = code.
        keep = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (os.open(os.devnull, os.O_RDWR), out_w, st_w, tok_r, code_r)]
        for fd, target in zip(keep, (0, 1, 3, 4, 5)):
            os.dup2(fd, target)
        os.dup2(0, 2)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        os.closerange(6, nofile if 0 < nofile < (1 << 20) else (1 << 20))  # protocol pipes etc. do not leak
        _set_rlimits(lim)
        os.chdir(scratch)
        os.environ["HOME"] = os.environ["TMPDIR"] = scratch  # the rest was scrubbed when the worker started
        tempfile.tempdir = scratch
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # big files raise OSError(EFBIG) instead of killing
        signal.signal(signal.SIGINT, signal.default_int_handler)
        out = _TrackedStdout(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True)
        sys.stdout = sys.__stdout__ = out
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="replace")
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.argv = ["<code>"]
        _reseed()
        code = _read_code(5)  # set-up done: wait for the call
        os.close(5)
        if code is None:
            os._exit(0)
        _install_guards(4, lim.max_procs, me)
        err = _run_user_code(code, out)
        status = {"ok": True} if err is None else {"error": err}
        exit_code = 0 if err is None else 1
    except BaseException as exc:  # pragma: no cover - failures of the set-up itself
        status = {"error": f"SandboxError: {type(exc).__name__}: {exc}"}
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    if os.getpid() == me:  # forked grandchildren that reach this point exit quietly
        try:
            os.close(1)  # EOF for the worker (unless a grandchild still holds the pipe)
            os.write(3, (json.dumps(status) + "\n").encode())
        except OSError:
            pass
    os._exit(exit_code)


def _set_rlimits(lim: SandboxLimits) -> None:
    cpu = max(1, math.ceil(lim.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at soft, SIGKILL at hard
    if lim.memory_mb > 0:
        nbytes = lim.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))
    fsize = max(0, lim.max_file_mb) << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _reseed() -> None:
    """Forked children share the worker's RNG state; give each call fresh randomness like a new interpreter."""
    if "random" in sys.modules:
        sys.modules["random"].seed()
    np_random = sys.modules.get("numpy.random")  # numpy 2 loads it lazily: a later import seeds itself
    if np_random is not None:
        try:
            np_random.seed(int.from_bytes(os.urandom(4), "little"))
        except Exception:
            pass


def _install_guards(tok_fd: int, max_procs: int, me: int) -> None:
    """Cap process creation per call with a token pipe shared by the whole call's process tree.

    Each fork/spawn must take one byte from the pipe (an atomic, cross-process counter); when
    it is empty the call gets ``BlockingIOError``. C-level forks bypass this (not a boundary).
    """

    def take() -> None:
        try:
            if os.read(tok_fd, 1):
                return
        except BlockingIOError:
            pass
        raise BlockingIOError(errno.EAGAIN, f"sandbox: process limit reached ({max_procs} per call)")

    def guarded(fn):
        def wrapper(*args, **kwargs):
            take()
            return fn(*args, **kwargs)

        wrapper.__name__ = getattr(fn, "__name__", "guarded")
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        return wrapper

    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            setattr(os, name, guarded(getattr(os, name)))
    try:
        import _posixsubprocess  # what subprocess.Popen forks with

        _posixsubprocess.fork_exec = guarded(_posixsubprocess.fork_exec)
    except ImportError:  # pragma: no cover
        pass

    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        # As root, kill(-1, ...) would hit every process on the machine; refuse that one case.
        if pid == -1:
            raise PermissionError(errno.EPERM, "sandbox: kill(-1, ...) is not allowed")
        real_kill(pid, sig)

    os.kill = kill


def _run_user_code(code: str, out: _TrackedStdout) -> str | None:
    """Exec ``code`` as ``__main__``; return None on success or the last traceback line."""
    import traceback

    try:
        tree = ast.parse(code, "<code>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        main.__file__ = "<code>"
        sys.modules["__main__"] = main
        exec(compile(tree, "<code>", "exec"), main.__dict__)
        if last is not None:
            value = eval(compile(last, "<code>", "eval"), main.__dict__)
            if value is not None and not out.wrote:
                print(value)
        return None
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            return None
        return f"SystemExit: {exc.code}"
    except BaseException as exc:
        try:
            return traceback.format_exception_only(type(exc), exc)[-1].strip()
        except BaseException:  # e.g. MemoryError while formatting
            return type(exc).__name__
