"""Reliable consumption of the launch streams: one consumer in the ``launchers`` group.

- ``own_pending``: entries delivered to this consumer name before (a restart
  with the same name) are handled first;
- ``reclaim``: entries idle longer than ``min_idle`` on any consumer (a
  crashed launcher) are claimed with XAUTOCLAIM, with their delivery counts;
- ``read_new``: new entries, blocking at most ``block_ms``;
- ``ack``: XACK + XDEL for a batch of entries in one MULTI, only once their outcomes are settled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from kubestream.keys import LAUNCH_GROUP
from kubestream.messages import FIELD
from kubestream.text import as_text, stream_entries

log = logging.getLogger("kubestream.launcher")


@dataclass(frozen=True, slots=True)
class Entry:
    stream: str
    entry_id: str
    raw: bytes
    deliveries: int


class StreamConsumer:
    def __init__(self, client: redis.Redis, streams: Sequence[str], name: str, *, min_idle_ms: int) -> None:
        self.redis, self.streams, self.name, self.min_idle_ms = client, list(streams), name, min_idle_ms

    def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                self.redis.xgroup_create(stream, LAUNCH_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        reply = self.redis.xreadgroup(LAUNCH_GROUP, self.name, {s: ">" for s in self.streams},
                                      count=count, block=block_ms)
        return [Entry(stream, eid, fields.get(FIELD, b""), 1)
                for stream, eid, fields in stream_entries(reply) if fields is not None]

    def own_pending(self) -> list[Entry]:
        reply = self.redis.xreadgroup(LAUNCH_GROUP, self.name, {s: "0" for s in self.streams}, count=10_000)
        return self._with_counts(stream_entries(reply))

    def reclaim(self) -> list[Entry]:
        claimed: list[tuple[str, str, Any]] = []
        for stream in self.streams:
            cursor = "0-0"
            while True:
                reply = self.redis.xautoclaim(stream, LAUNCH_GROUP, self.name, self.min_idle_ms, cursor, count=100)
                cursor, entries = as_text(reply[0]), reply[1]
                claimed += [(stream, as_text(e), f) for e, f in entries]
                for deleted in reply[2] if len(reply) > 2 else ():  # deleted while pending: nothing to do
                    self.redis.xack(stream, LAUNCH_GROUP, deleted)
                if cursor == "0-0":
                    break
        if claimed:
            log.info("reclaimed %d idle launch entries", len(claimed))
        return self._with_counts(claimed)

    def _with_counts(self, rows: list[tuple[str, str, Any]]) -> list[Entry]:
        out = []
        for stream, eid, fields in rows:
            if fields is None:  # deleted while pending
                self.redis.xack(stream, LAUNCH_GROUP, eid)
                continue
            info = self.redis.xpending_range(stream, LAUNCH_GROUP, min=eid, max=eid, count=1)
            count = int(info[0]["times_delivered"]) if info else 1
            out.append(Entry(stream, eid, fields.get(FIELD, b""), count))
        return out

    def ack(self, entries: Sequence[Entry]) -> None:
        """Acknowledge and delete settled entries, all in one MULTI."""
        if not entries:
            return
        pipe = self.redis.pipeline(transaction=True)
        for entry in entries:
            pipe.xack(entry.stream, LAUNCH_GROUP, entry.entry_id)
            pipe.xdel(entry.stream, entry.entry_id)
        pipe.execute()

    def nothing_pending(self) -> bool:
        return all(self.redis.xpending(s, LAUNCH_GROUP)["pending"] == 0 for s in self.streams)
