"""Maintenance that keeps Redis bounded (``kubestream janitor``); never on the dispatch path.

- Result streams of schedulers that are gone: a scheduler keeps ``{p}:scheduler:<id>``
  alive from its ``sync()``; once that key is gone and the stream saw no entry for
  ``stale_after_seconds``, the stream is deleted. Nothing is lost by it: a task of
  that scheduler is adopted with the last state kept in its record, and a result
  that reaches no scheduler is applied from the record by the owner's reconcile.
  (Every scheduler restart with the default ``scheduler_id``, ``job-<id>``, leaves
  such a stream behind.)
- Stale consumers: a consumer of a launch or result group with nothing pending,
  idle for ``stale_after_seconds`` (a launcher or scheduler that is gone), is
  removed from its group. A dead launcher's pending entries are reclaimed by the
  others first; its consumer goes once they are.

Every step is idempotent, so several janitors may run at once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from kubestream.keys import Keys
from kubestream.settings import Settings
from kubestream.text import as_text

log = logging.getLogger("kubestream.janitor")


@dataclass
class Swept:
    """What one sweep removed."""

    result_streams: list[str] = field(default_factory=list)
    consumers: list[tuple[str, str, str]] = field(default_factory=list)  # (stream, group, consumer)


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


def sweep(client: redis.Redis, settings: Settings) -> Swept:
    keys = Keys(settings.key_prefix)
    return Swept(sweep_result_streams(client, keys, settings.stale_after_seconds),
                 sweep_consumers(client, keys, settings.stale_after_seconds))


class Janitor:
    """Sweeps every ``janitor_interval_seconds`` until stopped; rides out Redis errors."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings, self.redis = settings, client
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self, *, once: bool = False) -> Swept:
        last = Swept()
        while not self.stopping.is_set():
            try:
                last = sweep(self.redis, self.settings)
                log.info("swept: %d result streams, %d consumers", len(last.result_streams), len(last.consumers))
            except redis.RedisError as exc:
                log.warning("sweep failed, retrying next interval: %s", exc)
            if once:
                break
            self.stopping.wait(self.settings.janitor_interval_seconds)
        return last
