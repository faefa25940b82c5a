"""Read-only views of what kubestream left in Redis (one key prefix) and in the cluster (one
namespace), for assertions in tests and checks in the benchmark.

Streams are read with XRANGE / XPENDING / XLEN only: no consumer group is touched, so reading
never changes what the executor or a launcher will see next.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

import redis

from kubestream.keys import LAUNCH_GROUP, RESULTS_GROUP, Keys
from kubestream.messages import FIELD, TaskState, TaskStateChanged, decode
from kubestream.settings import Settings
from kubestream.text import StreamFields, as_text, decode_hash


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter stream, decoded (``m`` stays the raw bytes)."""

    reason: str
    task: str  # the task record's key; ``<prefix>:task:-`` when no task key could be read
    stream: str
    entry: str
    m: bytes | None  # None: the entry has no such field


class Streams:
    """Launch streams, result streams, dead letters and task records of ``settings``'s key prefix;
    pods of ``settings.namespace`` when given a ``CoreV1Api`` (``core``)."""

    def __init__(self, redis_client: redis.Redis, settings: Settings, core: Any = None) -> None:
        self.redis = redis_client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.core = core

    # -- launch streams -------------------------------------------------------------------------
    def launch_len(self, queue: str = "default") -> int:
        """Entries still in a launch stream (settled ones are deleted)."""
        return int(self.redis.xlen(self.keys.launch(queue)))

    def pending(self, queue: str = "default") -> int:
        """Entries delivered to a launcher and not yet acknowledged (group ``launchers``)."""
        return int(self.redis.xpending(self.keys.launch(queue), LAUNCH_GROUP)["pending"])

    def pending_entries(self, queue: str = "default", count: int = 1000) -> list[dict[str, Any]]:
        """XPENDING rows of a launch stream: ``message_id``, ``consumer``, ``times_delivered``, ..."""
        return list(self.redis.xpending_range(self.keys.launch(queue), LAUNCH_GROUP, min="-", max="+", count=count))

    # -- result streams -------------------------------------------------------------------------
    def _entries(self, stream: str) -> list[StreamFields]:
        """Every entry's fields, oldest first (XRANGE)."""
        return [fields for _, fields in cast(list[tuple[bytes, StreamFields]], self.redis.xrange(stream))]

    def _results_key(self, scheduler_id: str | None) -> str:
        return self.keys.results(scheduler_id or self.settings.scheduler_id)

    def results(self, scheduler_id: str | None = None) -> list[TaskStateChanged]:
        """Every event on a scheduler's result stream (default: ``settings.scheduler_id``), oldest first."""
        events = []
        for fields in self._entries(self._results_key(scheduler_id)):
            event = decode(fields[FIELD])
            assert isinstance(event, TaskStateChanged), event
            events.append(event)
        return events

    def results_len(self, scheduler_id: str | None = None) -> int:
        return int(self.redis.xlen(self._results_key(scheduler_id)))

    def results_pending(self, scheduler_id: str | None = None) -> int:
        """Results read by the executor and not yet acknowledged (group ``executor``)."""
        return int(self.redis.xpending(self._results_key(scheduler_id), RESULTS_GROUP)["pending"])

    def published(self, scheduler_id: str | None = None) -> Counter[tuple[str, TaskState]]:
        """(pod name, state) -> how many times it is on the result stream."""
        return Counter((e.key.pod_name(), e.state) for e in self.results(scheduler_id))

    def succeeded(self, scheduler_id: str | None = None) -> int:
        return sum(1 for e in self.results(scheduler_id) if e.state is TaskState.SUCCEEDED)

    # -- dead letters ---------------------------------------------------------------------------
    def dead_letters(self) -> list[DeadLetter]:
        out = []
        for fields in self._entries(self.keys.dead):
            f = {as_text(k): v for k, v in fields.items()}
            out.append(DeadLetter(reason=as_text(f.get("reason")), task=as_text(f.get("task")),
                                  stream=as_text(f.get("stream")), entry=as_text(f.get("entry")), m=f.get("m")))
        return out

    def dead_count(self) -> int:
        return int(self.redis.xlen(self.keys.dead))

    # -- task records, watcher, launchers -------------------------------------------------------
    def task(self, pod_name: str) -> dict[str, str]:
        """The task record of a pod name (empty if there is none)."""
        return decode_hash(self.redis.hgetall(self.keys.task(pod_name)))

    def live(self) -> int:
        """Tasks last published pending or running."""
        return int(self.redis.scard(self.keys.live))

    def lease_holder(self) -> str | None:
        holder = cast(bytes | None, self.redis.get(self.keys.watcher_lease))
        return as_text(holder) if holder is not None else None

    def watching(self, namespace: str | None = None) -> bool:
        """The watcher has checkpointed a resourceVersion for the namespace: it lists and watches."""
        return bool(self.redis.exists(self.keys.resource_version(namespace or self.settings.namespace)))

    def consumers(self, queue: str = "default") -> int:
        """Launchers that have read the launch stream at least once (they are serving)."""
        try:
            return len(self.redis.xinfo_consumers(self.keys.launch(queue), LAUNCH_GROUP))
        except redis.ResponseError:  # no stream or group yet
            return 0

    def launcher_metrics(self, name: str) -> dict[str, float]:
        """The metrics a launcher last wrote to its health record (empty before the first write)."""
        raw = self.redis.hget(self.keys.health("launcher", name), "metrics")
        return json.loads(raw) if raw else {}

    # -- pods -------------------------------------------------------------------------------------
    def pods(self) -> set[str]:
        """Names of the pods in ``settings.namespace``."""
        if self.core is None:
            raise RuntimeError("Streams(core=None) does not see pods")
        return {p.metadata.name for p in self.core.list_namespaced_pod(self.settings.namespace).items}

    def pod_exists(self, name: str) -> bool:
        return self.pod_phase(name) is not None

    def pod_phase(self, name: str) -> str | None:
        """A pod's phase ("" before it has one), None if it does not exist."""
        from kubernetes.client.exceptions import ApiException

        if self.core is None:
            raise RuntimeError("Streams(core=None) does not see pods")
        try:
            pod = self.core.read_namespaced_pod(name, self.settings.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return str(pod.status.phase or "") if pod.status else ""
