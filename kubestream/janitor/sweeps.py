"""The Redis sweeps of ``kubestream janitor``; never on the dispatch path.

- Result streams of schedulers that are gone: a scheduler keeps ``{p}:scheduler:<id>``
  alive from its ``sync()``; once that key is gone and the stream saw no entry for
  ``stale_after_seconds``, the stream is deleted. Nothing is lost by it: a task of
  that scheduler is adopted with the last state kept in its record, and a result
  that reaches no scheduler is applied from the record by the owner's reconcile.
  (Every scheduler restart with the default ``scheduler_id``, ``job-<id>``, leaves
  such a stream behind.)
- Stale consumers: a consumer of a launch or result group with nothing pending,
  idle for ``stale_after_seconds`` (a launcher or scheduler that is gone), is
  removed from its group. A dead launcher's pending entries are claimed by the
  others, which remove its consumer themselves once nothing is left; this sweep
  catches the rest (result groups, launch groups nobody serves now).

- Trimming: a launch or result stream keeps the entries its consumer group has
  already acknowledged until ``launch_maxlen``/``results_maxlen`` cuts them; the
  janitor trims each stream below the oldest entry still pending in any of its
  groups (or, with nothing pending, below the first entry not yet delivered).
  A stream without a group, or a group that never read, is left alone.

Every step is idempotent, so several janitors may run at once.
"""

from __future__ import annotations

import logging
import time

import redis

from kubestream.keys import Keys
from kubestream.text import as_text

log = logging.getLogger("kubestream.janitor")

_NO_ID = "0-0"


def _idle_ms(client: redis.Redis, stream: str) -> float:
    """Milliseconds since the stream's last entry was added (from its last generated id)."""
    info = client.xinfo_stream(stream)
    last_ms = int(as_text(info["last-generated-id"]).split("-", 1)[0])
    return time.time() * 1000 - last_ms


def sweep_result_streams(client: redis.Redis, keys: Keys, stale_after_s: float) -> list[str]:
    """Delete result streams of schedulers that are gone (no liveness key, no entry for ``stale_after_s``)."""
    deleted = []
    prefix = keys.results("")
    for raw in client.scan_iter(match=keys.results_pattern, count=1000):
        stream = as_text(raw)
        scheduler_id = stream[len(prefix):]
        if client.exists(keys.scheduler(scheduler_id)):
            continue
        try:
            if _idle_ms(client, stream) < stale_after_s * 1000:
                continue
        except redis.ResponseError:  # not a stream (any more)
            continue
        client.delete(stream)
        deleted.append(stream)
        log.info("deleted the result stream of a scheduler that is gone", extra={"stream": stream})
    return deleted


def sweep_consumers(client: redis.Redis, keys: Keys, stale_after_s: float) -> list[tuple[str, str, str]]:
    """Remove consumers with nothing pending, idle for ``stale_after_s``, from every kubestream group."""
    removed = []
    streams = [as_text(s) for pattern in (keys.launch_pattern, keys.results_pattern)
               for s in client.scan_iter(match=pattern, count=1000)]
    for stream in streams:
        try:
            groups = client.xinfo_groups(stream)
        except redis.ResponseError:
            continue
        for group in groups:
            name = as_text(group["name"])
            for consumer in client.xinfo_consumers(stream, name):
                if int(consumer["pending"]) == 0 and int(consumer["idle"]) >= stale_after_s * 1000:
                    member = as_text(consumer["name"])
                    client.xgroup_delconsumer(stream, name, member)
                    removed.append((stream, name, member))
                    log.info("removed a stale consumer", extra={"stream": stream, "group": name,
                                                                "consumer": member})
    return removed


def _id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = as_text(value).partition("-")
    return int(ms), int(seq or 0)


def trim_floor(client: redis.Redis, stream: str) -> str | None:
    """The lowest entry id every group of ``stream`` may still need, or None when trimming is not safe
    (no group, a group that never read)."""
    groups = client.xinfo_groups(stream)
    if not groups:
        return None
    floors: list[tuple[int, int]] = []
    for group in groups:
        last = as_text(group["last-delivered-id"])
        if last == _NO_ID:
            return None
        pending = client.xpending(stream, as_text(group["name"]))
        if int(pending["pending"]):
            floors.append(_id(pending["min"]))
        else:
            ms, seq = _id(last)
            floors.append((ms, seq + 1))  # everything up to the last delivered entry is acknowledged
    ms, seq = min(floors)
    return f"{ms}-{seq}"


def trim_streams(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Trim every launch and result stream below its ``trim_floor``; returns the entries removed per stream."""
    trimmed: dict[str, int] = {}
    streams = [as_text(s) for pattern in (keys.launch_pattern, keys.results_pattern)
               for s in client.scan_iter(match=pattern, count=1000)]
    for stream in streams:
        try:
            floor = trim_floor(client, stream)
            if floor is None:
                continue
            removed = int(client.xtrim(stream, minid=floor, approximate=False))
        except redis.ResponseError:  # not a stream (any more)
            continue
        if removed:
            trimmed[stream] = removed
            log.info("trimmed acknowledged entries", extra={"stream": stream, "entries": removed})
    return trimmed
