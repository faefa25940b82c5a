"""Reliable consumption of the launch streams: one consumer in the ``launchers`` group.

- ``own_pending``: entries delivered to this consumer name before (a restart
  with the same name) are handled first;
- ``reclaim``: entries idle longer than ``min_idle`` on any consumer (a
  crashed launcher) are claimed with XAUTOCLAIM, with their delivery counts;
- ``read_new``: new entries, blocking at most ``block_ms``;
- ``ack``: XACK + XDEL for a batch of entries in one MULTI, only once their outcomes are settled.

A read that meets ``NOGROUP`` (Redis lost its data: a restart without
persistence, a failover to an empty replica, FLUSHALL) recreates the groups
and counts a reset in ``resets``; the launcher's health says so.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
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
        self.resets = 0

    def _group_lost(self, exc: redis.ResponseError) -> None:
        """Re-raise anything but NOGROUP; on NOGROUP recreate the groups (Redis lost its data)."""
        if not str(exc).startswith("NOGROUP"):
            raise exc
        self.resets += 1
        log.error("launch consumer group missing: Redis lost its data; recreating the groups",
                  extra={"streams": ",".join(self.streams)})
        self.ensure_groups()

    def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                self.redis.xgroup_create(stream, LAUNCH_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        try:
            reply = self.redis.xreadgroup(LAUNCH_GROUP, self.name, {s: ">" for s in self.streams},
                                          count=count, block=block_ms)
        except redis.ResponseError as exc:
            self._group_lost(exc)
            return []
        return [Entry(stream, eid, fields.get(FIELD, b""), 1)
                for stream, eid, fields in stream_entries(reply) if fields is not None]

    def own_pending(self) -> list[Entry]:
        try:
            reply = self.redis.xreadgroup(LAUNCH_GROUP, self.name, {s: "0" for s in self.streams}, count=10_000)
        except redis.ResponseError as exc:
            self._group_lost(exc)
            return []
        return self._with_counts(stream_entries(reply))

    def reclaim(self, held: Collection[str] = ()) -> list[Entry]:
        """Claim entries idle longer than ``min_idle``: those of dead launchers, and this consumer's own that it
        left for redelivery (a transient error outlasted the retry budget).

        Entries in ``held`` (``"<stream>/<entry id>"`` this process still has in hand: queued for or in a
        create thread) are never claimed back: that would only raise their delivery count.
        """
        claimed: list[Entry] = []
        for stream in self.streams:
            try:
                idle = self.redis.xpending_range(stream, LAUNCH_GROUP, min="-", max="+", count=1000,
                                                 idle=self.min_idle_ms)
                theirs = {as_text(row["message_id"]): int(row["times_delivered"]) for row in idle
                          if f"{stream}/{as_text(row['message_id'])}" not in held}
                if not theirs:
                    continue
                got = self.redis.xclaim(stream, LAUNCH_GROUP, self.name, self.min_idle_ms, list(theirs))
            except redis.ResponseError as exc:
                self._group_lost(exc)
                return []
            # entries another launcher claimed first are not returned
            for _, entry_id, fields in stream_entries([(stream, got)]):
                if fields is None:  # deleted while pending (Redis < 7 still returns it): nothing to do
                    self.redis.xack(stream, LAUNCH_GROUP, entry_id)
                    continue
                claimed.append(Entry(stream, entry_id, fields.get(FIELD, b""), theirs.get(entry_id, 0) + 1))
        if claimed:
            log.info("reclaimed %d idle launch entries", len(claimed))
        return claimed

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
