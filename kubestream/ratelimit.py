"""A token bucket in Redis shared by every launcher: the cluster-wide create rate.

One Lua call takes ``n`` tokens or says how long to wait; the clock is Redis's
own (``TIME``), so launchers on different hosts agree without synced clocks.
"""

from __future__ import annotations

import threading

import redis

# KEYS[1] = bucket hash. ARGV[1] = rate (tokens/s), ARGV[2] = burst, ARGV[3] = tokens wanted.
# Returns 0 when granted, else milliseconds to wait before trying again.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local wait = 0
if tokens >= want then
  tokens = tokens - want
else
  wait = math.ceil((want - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""


class RateLimiter:
    """``acquire()`` blocks until the shared bucket grants one token (no-op if rate is 0)."""

    def __init__(self, client: redis.Redis, key: str, rate: float, burst: int) -> None:
        self.key, self.rate, self.burst = key, rate, burst
        self._take = client.register_script(_TAKE) if rate > 0 else None

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for a token; False if ``stop`` was set meanwhile."""
        if self._take is None:
            return True
        while True:
            wait_ms = int(self._take(keys=[self.key], args=[self.rate, self.burst, 1]))
            if wait_ms <= 0:
                return True
            if stop is not None:
                if stop.wait(wait_ms / 1000):
                    return False
            else:
                threading.Event().wait(wait_ms / 1000)
