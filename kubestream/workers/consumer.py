"""Reliable consumption of the launch streams: one consumer in the ``launchers`` group.

- ``own_pending``: entries delivered to this consumer name before (a restart
  with the same name) are handled first, a batch at a time;
- ``claim_dead``: every entry of a consumer whose liveness key has expired (a
  launcher that died) is claimed at once, atomically with that check
  (``lua/claim_dead.lua``), and the consumer leaves the group once it has
  nothing pending;
- ``reclaim``: entries idle longer than ``min_idle`` (a launcher alive but stuck,
  or this one's own left for redelivery) are claimed with XCLAIM, with their
  delivery counts;
- ``read_new``: new entries, blocking at most ``block_ms``; the streams are given
  in priority order (``Settings.launch_streams``: priority bands first), and a
  read takes what the first streams hold before looking at the next ones;
- ``ack``: XACK + XDEL for a batch of entries in one MULTI, only once their outcomes are settled.

A read that meets ``NOGROUP`` (Redis lost its data: a restart without
persistence, a failover to an empty replica, FLUSHALL) recreates the groups
and counts a reset in ``resets``; the launcher's health says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from kubestream.keys import LAUNCH_GROUP
from kubestream.luascripts import Script
from kubestream.messages import FIELD
from kubestream.text import as_text, stream_entries

log = logging.getLogger("kubestream.launcher")


@dataclass(frozen=True, slots=True)
class Entry:
    stream: str
    entry_id: str
    raw: bytes
    deliveries: int
    # when this process read or claimed it (time.monotonic()): its retry budget starts there, as
    # its idle time in the group does (the clock other launchers reclaim it by)
    read_at: float = field(default_factory=time.monotonic, compare=False)
    fields: Mapping[bytes, bytes] = field(default_factory=dict, compare=False)  # all of them: the signature


class StreamConsumer:
    """``alive_key``: the liveness key of a consumer name; ``liveness_ms`` its lifetime. Without them
    ``claim_dead`` claims nothing (every consumer counts as alive)."""

    def __init__(self, client: redis.Redis, streams: Sequence[str], name: str, *, min_idle_ms: int,
                 alive_key: Callable[[str], str] | None = None, liveness_ms: int = 0) -> None:
        self.redis, self.streams, self.name, self.min_idle_ms = client, list(streams), name, min_idle_ms
        self.alive_key, self.liveness_ms = alive_key, liveness_ms
        self._claim_dead = Script(client, "claim_dead.lua")
        self.resets = 0
        self._own_after = {s: "0" for s in self.streams}  # own_pending: the last entry id returned, per stream

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
        """Up to ``count`` new entries, taken from the streams in their order (the first ones emptied
        first, without blocking); when all are empty, block on all of them at once."""
        rows: list[tuple[str, str, Any]] = []
        try:
            if len(self.streams) > 1:
                for stream in self.streams:
                    rows += stream_entries(self.redis.xreadgroup(LAUNCH_GROUP, self.name, {stream: ">"},
                                                                 count=count - len(rows)))
                    if len(rows) >= count:
                        break
            if not rows:
                rows = stream_entries(self.redis.xreadgroup(LAUNCH_GROUP, self.name, {s: ">" for s in self.streams},
                                                            count=count, block=block_ms))
        except redis.ResponseError as exc:
            self._group_lost(exc)
        return [Entry(stream, eid, fields.get(FIELD, b""), 1, fields=fields)
                for stream, eid, fields in rows if fields is not None]

    def own_pending(self, count: int = 10_000) -> list[Entry]:
        """The next (at most ``count``) entries delivered to this consumer name before, oldest first per
        stream; each call goes on after the last one returned; [] once there are no more."""
        out: list[Entry] = []
        for stream in self.streams:
            while len(out) < count and self._own_after[stream]:
                try:
                    reply = self.redis.xreadgroup(LAUNCH_GROUP, self.name, {stream: self._own_after[stream]},
                                                  count=count - len(out))
                except redis.ResponseError as exc:
                    self._group_lost(exc)
                    return out
                rows = stream_entries(reply)
                if not rows:
                    self._own_after[stream] = ""  # no more
                    break
                self._own_after[stream] = rows[-1][1]
                out += self._with_counts(stream, rows)
        return out

    def reclaim(self, held: Collection[str] = (), count: int = 1000) -> list[Entry]:
        """Claim entries idle longer than ``min_idle``: those of dead launchers, and this consumer's own that it
        left for redelivery (a transient error outlasted the retry budget).

        Entries in ``held`` (``"<stream>/<entry id>"`` this process still has in hand: queued for or in a
        create thread) are never claimed back: that would only raise their delivery count. At most
        ``count`` entries are claimed (what the caller can take in hand now).
        """
        claimed: list[Entry] = []
        for stream in self.streams:
            if len(claimed) >= count:
                break
            try:
                idle = self.redis.xpending_range(stream, LAUNCH_GROUP, min="-", max="+", count=1000,
                                                 idle=self.min_idle_ms)
                theirs = {as_text(row["message_id"]): int(row["times_delivered"]) for row in idle
                          if f"{stream}/{as_text(row['message_id'])}" not in held}
                theirs = dict(list(theirs.items())[:count - len(claimed)])
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
                claimed.append(Entry(stream, entry_id, fields.get(FIELD, b""), theirs.get(entry_id, 0) + 1,
                                     fields=fields))
        if claimed:
            log.info("reclaimed %d idle launch entries", len(claimed))
        return claimed

    def claim_dead(self, count: int = 1000) -> list[Entry]:
        """Claim the pending entries of consumers that are dead: their liveness key has expired (checked
        in the claim script, atomically with the claim). Consumers that received entries within the
        liveness time are not even asked about (a dead one has not). At most ``count`` entries; dead
        consumers with nothing pending leave the group."""
        if self.alive_key is None:
            return []
        claimed: list[Entry] = []
        for stream in self.streams:
            try:
                consumers = self.redis.xinfo_consumers(stream, LAUNCH_GROUP)
            except redis.ResponseError as exc:
                self._group_lost(exc)
                return claimed
            for info in consumers:
                dead = as_text(info["name"])
                if dead == self.name or int(info["idle"]) < self.liveness_ms:
                    continue
                if len(claimed) >= count and int(info["pending"]):
                    continue  # no room in hand: the next round takes them
                deliveries, rows, removed = self._claim_dead(
                    stream=stream, alive=self.alive_key(dead), group=LAUNCH_GROUP, dead=dead, me=self.name,
                    count=max(count - len(claimed), 1))
                counts = {as_text(deliveries[i]): int(deliveries[i + 1]) for i in range(0, len(deliveries), 2)}
                taken = []
                for row in rows:
                    if not row:  # deleted while pending (Redis < 7 returns nil): settled by whoever deleted it
                        continue
                    eid, flat = row
                    fields = _fields(flat)
                    taken.append(Entry(stream, as_text(eid), fields.get(FIELD, b""), counts.get(as_text(eid), 0) + 1,
                                       fields=fields))
                if taken:
                    log.warning("claimed %d launch entries of dead launcher %s", len(taken), dead,
                                extra={"stream": stream, "consumer": dead,
                                       "entries": ",".join(e.entry_id for e in taken[:20])})
                if removed:
                    log.info("dead launcher %s left the consumer group", dead,
                             extra={"stream": stream, "consumer": dead})
                claimed += taken
        return claimed

    def _with_counts(self, stream: str, rows: list[tuple[str, str, Any]]) -> list[Entry]:
        """Entries of this consumer's pending ``rows`` (of one stream) with their delivery counts (one XPENDING)."""
        info = self.redis.xpending_range(stream, LAUNCH_GROUP, min=rows[0][1], max=rows[-1][1], count=len(rows),
                                         consumername=self.name)
        counts = {as_text(row["message_id"]): int(row["times_delivered"]) for row in info}
        out = []
        for _, eid, fields in rows:
            if fields is None:  # deleted while pending
                self.redis.xack(stream, LAUNCH_GROUP, eid)
                continue
            out.append(Entry(stream, eid, fields.get(FIELD, b""), counts.get(eid, 1), fields=fields))
        return out

    def ack(self, entries: Sequence[Entry]) -> None:
        """Acknowledge and delete settled entries, all in one MULTI (one XACK and one XDEL per stream)."""
        if not entries:
            return
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        pipe = self.redis.pipeline(transaction=True)
        for stream, ids in by_stream.items():
            pipe.xack(stream, LAUNCH_GROUP, *ids)
            pipe.xdel(stream, *ids)
        pipe.execute()

    def nothing_pending(self) -> bool:
        return all(self.redis.xpending(s, LAUNCH_GROUP)["pending"] == 0 for s in self.streams)


def _fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A stream entry's fields as a Lua script returns them (k1, v1, k2, v2...)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
