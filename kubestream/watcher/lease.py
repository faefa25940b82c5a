"""Single active watcher: a lease in Redis (SET NX PX, renewed by its holder only).

The scripts are ``kubestream/lua/lease_renew.lua`` and ``lease_release.lua``.
"""

from __future__ import annotations

import redis

from kubestream.luascripts import Script
from kubestream.text import as_text


class Lease:
    def __init__(self, client: redis.Redis, key: str, holder: str, seconds: float) -> None:
        self.key, self.holder, self.ms = key, holder, int(seconds * 1000)
        self._renew = Script(client, "lease_renew.lua")
        self._release = Script(client, "lease_release.lua")
        self.client = client

    def acquire_or_renew(self) -> bool:
        """True while this process holds the lease."""
        return bool(self._renew(lease=self.key, holder=self.holder, ms=self.ms))

    def release(self) -> None:
        self._release(lease=self.key, holder=self.holder)

    def holder_now(self) -> str | None:
        value = self.client.get(self.key)
        return as_text(value) or None
