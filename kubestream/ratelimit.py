"""A token bucket in Redis shared by every launcher: the cluster-wide create rate.

One Lua call (``kubestream/lua/ratelimit_take.lua``) takes tokens or says how
long to wait; the clock is Redis's own (``TIME``), so launchers on different
hosts agree without synced clocks.
"""

from __future__ import annotations

import threading
import time

import redis

from kubestream.luascripts import Script


class RateLimiter:
    """``acquire()`` blocks until the shared bucket grants one token (no-op if rate is 0), or until a
    deadline."""

    def __init__(self, client: redis.Redis, key: str, rate: float, burst: int) -> None:
        self.key, self.rate, self.burst = key, rate, burst
        self._take = Script(client, "ratelimit_take.lua") if rate > 0 else None

    def take(self, want: int = 1) -> int:
        """Take ``want`` tokens now: 0 when granted, else the milliseconds to wait before trying again."""
        if self._take is None:
            return 0
        return int(self._take(bucket=self.key, rate=self.rate, burst=self.burst, want=want))

    def acquire(self, stop: threading.Event | None = None, deadline: float | None = None) -> bool:
        """Wait for a token; False if ``stop`` was set meanwhile, or if no token is granted by
        ``deadline`` (a ``time.monotonic()`` instant): then it returns as soon as the bucket's answer
        says the next try would come after the deadline, without waiting for nothing."""
        wake = stop if stop is not None else threading.Event()
        while True:
            wait_ms = self.take()
            if wait_ms <= 0:
                return True
            wait = wait_ms / 1000
            if deadline is not None and time.monotonic() + wait > deadline:
                return False
            if wake.wait(wait):
                return False
