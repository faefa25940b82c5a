"""Per-process figures for the side-by-side benchmark, read from /proc: CPU seconds and peak RSS.

``ProcSample.of(pid)`` reads one process now; ``cpu_since`` subtracts an earlier sample. The peak RSS
is the kernel's high-water mark (``VmHWM``); ``reset_peak_rss`` restarts it for this process, so
that each configuration measured in one benchmark process gets a peak of its own.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (its threads included; not its children); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def peak_rss_mb(pid: int) -> float | None:
    """``VmHWM`` of ``pid`` in MB (shared pages included), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def pss_mb(pid: int) -> float | None:
    """Proportional set size of ``pid`` now, in MB: pages shared with other processes (a forked
    helper shares most of its parent's) counted in proportion; None if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux ``clear_refs`` 5); False if refused."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def children_of(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc/*/stat parent links)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - out
        out |= frontier
    return out


@dataclass(frozen=True)
class ProcSample:
    name: str
    pid: int
    cpu: float

    @classmethod
    def of(cls, name: str, pid: int) -> ProcSample:
        return cls(name, pid, cpu_seconds(pid))

    def cpu_since(self) -> float:
        """CPU seconds used since this sample (the process's last figure if it is gone by now)."""
        return max(0.0, cpu_seconds(self.pid) - self.cpu)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
