"""Single active watcher: a lease in Redis (SET NX PX, renewed by its holder only)."""

from __future__ import annotations

import redis

from kubestream.text import as_text

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    def __init__(self, client: redis.Redis, key: str, holder: str, seconds: float) -> None:
        self.key, self.holder, self.ms = key, holder, int(seconds * 1000)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self.client = client

    def acquire_or_renew(self) -> bool:
        """True while this process holds the lease."""
        return bool(self._renew(keys=[self.key], args=[self.holder, self.ms]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.holder])

    def holder_now(self) -> str | None:
        value = self.client.get(self.key)
        return as_text(value) or None
