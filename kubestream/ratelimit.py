"""A token bucket in Redis shared by every launcher: the cluster-wide create rate.

One Lua call (``kubestream/lua/ratelimit_take.lua``) takes tokens or says how
long to wait; the clock is Redis's own (``TIME``), so launchers on different
hosts agree without synced clocks.

Within one process, the threads that wait for a token are served in the order
they asked: only the first in line asks Redis, the others wait their turn.
Racing for each token instead lets one create thread win round after round
while another's launch, perhaps of a higher priority band, waits.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import redis

from kubestream.luascripts import Script


class RateLimiter:
    """``acquire()`` blocks until the shared bucket grants one token (no-op if rate is 0), or until a
    deadline; this process's callers get their tokens first come, first served."""

    def __init__(self, client: redis.Redis, key: str, rate: float, burst: int) -> None:
        self.key, self.rate, self.burst = key, rate, burst
        self._take = Script(client, "ratelimit_take.lua") if rate > 0 else None
        self._turns = threading.Condition()
        self._line: deque[object] = deque()  # the callers of acquire() waiting, first in line first

    def take(self, want: int = 1) -> int:
        """Take ``want`` tokens now: 0 when granted, else the milliseconds to wait before trying again."""
        if self._take is None:
            return 0
        return int(self._take(bucket=self.key, rate=self.rate, burst=self.burst, want=want))

    def waiting(self) -> int:
        """How many callers of ``acquire()`` are waiting now, the first in line included."""
        with self._turns:
            return len(self._line)

    def acquire(self, stop: threading.Event | None = None, deadline: float | None = None) -> bool:
        """Wait for a token, after the callers that asked before; False if ``stop`` was set meanwhile, or
        if no token is granted by ``deadline`` (a ``time.monotonic()`` instant): then it returns as soon
        as the bucket's answer says the next try would come after the deadline, without waiting for
        nothing."""
        if self._take is None:
            return True
        wake = stop if stop is not None else threading.Event()
        me = object()
        with self._turns:
            self._line.append(me)
        try:
            return self._my_turn(me, wake, deadline) and self._first_in_line(wake, deadline)
        finally:
            with self._turns:
                self._line.remove(me)
                self._turns.notify_all()

    def _my_turn(self, me: object, wake: threading.Event, deadline: float | None) -> bool:
        """Wait until ``me`` is first in line: False once ``wake`` is set or ``deadline`` has passed. Callers
        that share one ``wake`` (a launcher's create threads) see it set without polling: the first in line
        sees it and leaves, which wakes the others; with different ones, when the first in line leaves."""
        with self._turns:
            while self._line[0] is not me:
                left = None if deadline is None else deadline - time.monotonic()
                if wake.is_set() or (left is not None and left <= 0):
                    return False
                self._turns.wait(left)
        return not wake.is_set()

    def _first_in_line(self, wake: threading.Event, deadline: float | None) -> bool:
        while True:
            wait_ms = self.take()
            if wait_ms <= 0:
                return True
            wait = wait_ms / 1000
            if deadline is not None and time.monotonic() + wait > deadline:
                return False
            if wake.wait(wait):
                return False
