"""Run logging: our loggers at INFO, every other library at WARNING, progress bars calm in files.

* :class:`ThirdPartyFilter` sits on the handlers (``conf/hydra/job_logging/etagent.yaml``),
  not on the loggers: a library that re-raises its own logger's level on import (bm25s sets
  DEBUG) still cannot write below WARNING into the run's log.
* :func:`calm_progress_bars` makes tqdm refresh at most every ``interval`` seconds when
  stderr is not a terminal (a log captured with ``> run.log 2>&1`` was 90% bar refreshes).
  tqdm reads ``TQDM_*`` environment variables once, when it is first imported, so the entry
  point calls this before anything imports tqdm.
"""

from __future__ import annotations

import logging
import os
import sys

OWN_PREFIXES = ("etagent", "__main__")


class ThirdPartyFilter(logging.Filter):
    """Pass our records at the handler's level, others only at ``level`` (WARNING) or above."""

    def __init__(self, level: str | int = logging.WARNING, own: tuple[str, ...] | list[str] = OWN_PREFIXES):
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else int(level)
        if not isinstance(self.level, int):
            raise ValueError(f"ThirdPartyFilter: unknown log level {level!r}")
        self.own = tuple(own)

    def _is_own(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.own)

    def filter(self, record: logging.LogRecord) -> bool:
        return self._is_own(record.name) or record.levelno >= self.level


def calm_progress_bars(interval: float = 60.0, stream=None) -> bool:
    """Off a TTY: tqdm redraws every ``interval`` s at most; returns whether it applied.

    Explicit ``TQDM_MININTERVAL``/``TQDM_MAXINTERVAL`` in the environment win.
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return False
    os.environ.setdefault("TQDM_MININTERVAL", str(interval))
    # the monitor thread forces a redraw after maxinterval; keep it at the same pace
    os.environ.setdefault("TQDM_MAXINTERVAL", str(interval))
    return True


def bar_step(bar, **postfix) -> None:
    """One step of a progress bar with a postfix, without forcing a redraw.

    ``set_postfix`` redraws by default, which defeats the redraw interval (a log line per step
    in a log file); set it quietly, then let ``update`` redraw when the interval allows.
    """
    bar.set_postfix(refresh=False, **postfix)
    bar.update(1)


def move_file_logs(old_dir: str | os.PathLike, new_dir: str | os.PathLike) -> list[str]:
    """Append the ``*.log`` files of ``old_dir`` to the same names in ``new_dir`` and point the
    root logger's file handlers there, so a resumed job keeps logging into the run it resumes.
    Returns the names moved."""
    from pathlib import Path

    old, new = Path(old_dir).resolve(), Path(new_dir)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)
                and Path(h.baseFilename).resolve().parent == old]
    for h in handlers:
        h.close()  # flushed; the next record reopens baseFilename in append mode
    moved = []
    for f in sorted(old.glob("*.log")):
        with open(new / f.name, "a", encoding="utf-8") as out:
            out.write(f.read_text(encoding="utf-8", errors="replace"))
        moved.append(f.name)
    for h in handlers:
        h.baseFilename = str((new / Path(h.baseFilename).name).resolve())
        h.mode = "a"
    return moved
