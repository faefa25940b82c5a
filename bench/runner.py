"""What every benchmark's ``main`` shares: a watchdog (``--max-seconds`` and signals abort the run with
``BenchAborted``), signals shielded while it cleans up, and the run's scratch directory.

Kept free of heavy imports: a benchmark may need to set Airflow's environment before anything
imports Airflow.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class BenchAborted(BaseException):
    """Watchdog or signal: a BaseException so that no `except Exception` on the way swallows it."""


def shield_signals() -> None:
    """From here on, let the cleanup finish: the watchdog is off, signals are ignored."""
    signal.alarm(0)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, signal.SIG_IGN)


def arm_watchdog(max_seconds: int) -> None:
    def abort(signum: int, _frame: Any) -> None:
        shield_signals()
        raise BenchAborted(f"aborted by {signal.Signals(signum).name}"
                           + (f" after --max-seconds {max_seconds}" if signum == signal.SIGALRM else ""))

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, abort)
    signal.alarm(max_seconds)


@contextmanager
def run_workdir(prefix: str) -> Iterator[Path]:
    """The scratch directory of one benchmark run. Once the run ends the watchdog is off and signals are
    ignored (the cleanup finishes); the directory is removed if the run succeeded, kept (and named on
    stderr, with the components' logs) if it raised."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    except BaseException:
        shield_signals()
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    shield_signals()
    shutil.rmtree(work, ignore_errors=True)
