"""The scheduler's loop, played the same way for both executors: ``heartbeat()`` then
``get_event_buffer()``, over and over; an iteration that brought no event is followed by a 50 ms
sleep (a real scheduler sleeps up to ``[scheduler] scheduler_idle_sleep_time``, 1 s, when idle, and
spends its own tens of milliseconds on the DB in every loop: both are left out, to the benefit of
both executors alike).

``drive`` records the wall and the calling thread's CPU of each iteration and when each task's final
event came out of the event buffer (``time.monotonic()``, the clock the pod observer uses), and stops
when every task has a final event or after ``cap_seconds``. The setup's garbage (N workloads, their
DB rows, made just before) is collected before the first heartbeat: a full collection that it would set
off belongs to neither executor, and would land in one side's measured calls by chance.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

POLL = 0.05
NOT_FINAL = frozenset({"queued", "running", "scheduled", "deferred", "restarting", "up_for_reschedule"})
Key = tuple[str, str, str, int, int]


def key_tuple(key: Any) -> Key:
    return (key.dag_id, key.task_id, key.run_id, int(key.try_number), int(key.map_index))


@dataclass
class LoopRecord:
    started: float = 0.0  # time.monotonic() of the first heartbeat
    ended: float = 0.0
    capped: bool = False  # stopped by the time limit, not every task final
    calls: list[tuple[float, float]] = field(default_factory=list)  # (wall, thread cpu) of each iteration
    idle_sleeps: int = 0
    finals: dict[Key, tuple[str, float]] = field(default_factory=dict)  # key -> (state, monotonic time)
    first_call_ms: float = 0.0
    gc_ms: float = 0.0


class _GcTimer:
    def __init__(self) -> None:
        self.total, self._start = 0.0, 0.0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._start


def drive(executor: Any, keys: set[Key], *, cap_seconds: float,
          between: Callable[[], None] | None = None) -> LoopRecord:
    """Run the loop until every key in ``keys`` has a final event or ``cap_seconds`` have passed.
    ``between`` is called after each iteration, outside the measured calls (checks, sampling)."""
    rec = LoopRecord()
    timer = _GcTimer()
    gc.collect()  # the setup's garbage (the N workloads, their DB rows) is collected before the clock starts
    gc.callbacks.append(timer)
    rec.started = time.monotonic()
    try:
        while len(rec.finals) < len(keys):
            if time.monotonic() - rec.started > cap_seconds:
                rec.capped = True
                break
            w0, c0 = time.perf_counter(), time.thread_time()
            executor.heartbeat()
            buffer = executor.get_event_buffer()
            rec.calls.append((time.perf_counter() - w0, time.thread_time() - c0))
            at = time.monotonic()
            for key, event in buffer.items():
                state = event[0]
                value = str(getattr(state, "value", state))
                k = key_tuple(key)
                if value not in NOT_FINAL and k in keys and k not in rec.finals:
                    rec.finals[k] = (value, at)
            if between is not None:
                between()
            if not buffer:
                rec.idle_sleeps += 1
                time.sleep(POLL)
    finally:
        rec.ended = time.monotonic()
        gc.callbacks.remove(timer)
    rec.first_call_ms = rec.calls[0][0] * 1000 if rec.calls else 0.0
    rec.gc_ms = timer.total * 1000
    return rec
