"""The terminal: the one console tooldistill prints to, its progress bars, and where everything
else that a run's libraries print goes.

Every line and bar of ours goes through :data:`terminal` (stderr).  A long step shows one bar on a
terminal; where stderr is not a terminal (a CI log, ``make demo | tee``) a transient bar would
leave nothing or blank lines, so a step that runs long prints a plain progress line every
:data:`LINE_EVERY_S` seconds and one when it ends.

``tooldistill run`` sends what Ray, vLLM, PyTorch and the rest print below Python (the C++ core's
log lines, the workers' output forwarded to the driver, warnings, tqdm bars) to the run's
``run.log`` with :func:`chatter_to`, unless ``--verbose`` asks for it on the console.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

#: The console of every line and bar tooldistill prints.
terminal = Console(stderr=True)
#: Without a terminal, a step prints a progress line at most this often.
LINE_EVERY_S = 30.0
#: While :func:`chatter_to` is active: the file the libraries' output goes to.
CHATTER_ENV = "TOOLDISTILL_CHATTER_LOG"

Advance = Callable[..., None]


def say(text: str) -> None:
    """One plain line on the terminal (no highlighting of numbers and paths)."""
    terminal.print(text, highlight=False)


def progress(*columns: Any, show: bool = True) -> Progress:
    """A transient rich ``Progress`` on :data:`terminal` with ``columns`` (for bars with fields of
    their own); off where stderr is not a terminal."""
    return Progress(
        *columns,
        console=terminal,
        disable=not show or not terminal.is_terminal,
        transient=True,
    )


@contextmanager
def progress_bar(description: str, total: int, show: bool = True) -> Iterator[Advance]:
    """A bar for ``total`` items, or progress lines without a terminal; yields ``advance(n=1)``."""
    if not show:
        yield lambda n=1: None
        return
    if terminal.is_terminal:
        with progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        return
    started = last = time.monotonic()
    done = 0

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= LINE_EVERY_S and done < total:
            last = now
            say(f"  {description}: {done}/{total} ({now - started:.0f} s)")

    yield advance
    elapsed = time.monotonic() - started
    if elapsed >= LINE_EVERY_S:
        say(f"  {description}: {done}/{total} in {elapsed:.0f} s")


def chatter_log() -> str | None:
    """The file library output goes to while :func:`chatter_to` is active, else None."""
    return os.environ.get(CHATTER_ENV) or None


@contextmanager
def chatter_to(log_path: Path) -> Iterator[None]:
    """Send everything written to this process's stdout and stderr, and by the processes it
    starts, to ``log_path`` (appended); :data:`terminal` keeps writing to the real stderr.

    File descriptors 1 and 2 are pointed at the log, so output that never passes through Python
    (a C++ logger, a child process) is caught too.  Both are restored on the way out, errors
    included, before the caller prints anything about them."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    previous = terminal.file
    # Where sys.stderr is the process's stderr, the console writes to a copy of it (a terminal
    # stays a terminal); where it is a stream of its own (click's test runner), to that stream.
    real_stderr = None
    if _is_fd(previous, 2):
        real_stderr = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        terminal.file = real_stderr
    os.environ[CHATTER_ENV] = str(log_path)
    try:
        with output_to(log_path):
            yield
    finally:
        os.environ.pop(CHATTER_ENV, None)
        if real_stderr is not None:
            # back to following sys.stderr (rich's console does when it has no file of its own)
            terminal.file = None  # type: ignore[assignment]
            real_stderr.close()


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so the processes it starts
    too) appended to ``path`` for the duration; restored however the block ends."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)


def _is_fd(stream: Any, fd: int) -> bool:
    try:
        return bool(stream.fileno() == fd)
    except (AttributeError, OSError, ValueError):
        return False
