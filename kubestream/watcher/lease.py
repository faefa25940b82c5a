"""Single active watcher: a lease in Redis, with a fence.

- ``{p}:watcher:lease``: the holder's name (shown by ``kubestream status``), with a PX expiry.
- ``{p}:watcher:lease:fence``: a hash, ``token`` of the holder and ``epoch``, which grows on every
  acquisition and never expires.

Each ``Lease`` has its own token (unique per process: two processes given the same consumer name
never share the lease), so only the token that acquired the lease renews it. The holder's writes
carry its ``Fence`` (token, epoch); the Lua scripts refuse them once the lease has expired or has
been taken by another process, or by this one again under a new epoch. A restarted process (new
token) of the same name takes its predecessor's lease at once, on its first call only (so two
processes wrongly given one name do not take it from each other back and forth); any other process
takes it once it has expired or been released.

The scripts are ``kubestream/lua/lease_renew.lua`` and ``lease_release.lua``.
"""

from __future__ import annotations

import uuid

import redis

from kubestream.luascripts import Script
from kubestream.store import Fence
from kubestream.text import as_text


class Lease:
    def __init__(self, client: redis.Redis, key: str, holder: str, seconds: float, *,
                 fence_key: str | None = None) -> None:
        self.key, self.holder, self.ms = key, holder, int(seconds * 1000)
        self.fence_key = fence_key or f"{key}:fence"
        self.token = f"{holder}:{uuid.uuid4().hex}"
        self.epoch = 0  # the last epoch this process acquired (kept once lost: a new one is always larger)
        self._first = True  # until a call went through: a lease held under this name is an earlier process's
        self._renew = Script(client, "lease_renew.lua")
        self._release = Script(client, "lease_release.lua")
        self.client = client

    def acquire_or_renew(self) -> int:
        """The epoch this process holds the lease under (a new one when it was just acquired), 0 when another
        process holds it."""
        epoch = int(self._renew(lease=self.key, fence=self.fence_key, holder=self.holder, token=self.token,
                                epoch=str(self.epoch), ms=self.ms, resume="1" if self._first else "0"))
        self._first = False
        if epoch:
            self.epoch = epoch
        return epoch

    def fence(self, epoch: int) -> Fence:
        """What writes made under ``epoch`` carry."""
        return Fence(self.token, epoch)

    def release(self) -> bool:
        """Give the lease up if this process holds it; True if it did."""
        return bool(self._release(lease=self.key, fence=self.fence_key, token=self.token, epoch=str(self.epoch)))

    def holder_now(self) -> str | None:
        """The name of the process holding the lease, if any."""
        value = self.client.get(self.key)
        return as_text(value) or None
