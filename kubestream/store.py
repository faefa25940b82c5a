"""Task records and the atomic operations on them (Lua scripts).

A task record is the hash ``{prefix}:task:<pod name>`` with fields
``owner`` (the scheduler whose result stream gets its events), ``dag_id``,
``task_id``, ``run_id``, ``try_number``, ``map_index``, ``queue``,
``namespace``, ``dispatch`` (the external executor id of the current dispatch:
Airflow assigns a new one every time it queues the task), ``state`` and
``reason`` (last published), ``revoked`` ("1"
once the current dispatch is revoked) and ``updated`` (epoch seconds).
A pod carries its dispatch id in the annotation ``kubestream.io/dispatch``;
events from a pod of an older dispatch of the same key are dropped.

Every state change goes through ``publish`` (``kubestream/lua/_publish.lua``,
shared by ``publish.lua`` and ``fail_launch.lua``): look up the owner, drop
events of another dispatch than the record's, duplicates / regressions / events
after a final state or a revoke, update the record and XADD the event to
``{prefix}:results:<owner>`` in one atomic step. The live set ``{prefix}:live``
holds ``<namespace>/<pod>/<dispatch>`` of tasks last published pending or
running. The record expires ``final_record_ttl_seconds`` after a final state.

The watcher's writes carry a ``Fence`` (its lease token and epoch): the scripts
refuse them (``NOT_LEASE_HOLDER``) once that process no longer holds the lease.
Launchers publish (failed launches) without one.
Adoption (``adopt.lua``) rewrites ``owner`` and reads the last state in one
atomic step too, so no event falls between. Result stream names are derived
from the owner inside the scripts; they share the prefix's hash slot, so this
also holds on Redis Cluster.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import redis
from redis.typing import EncodableT, KeyT

from kubestream.keys import LAUNCH_GROUP, Keys
from kubestream.luascripts import Script
from kubestream.messages import TaskState, TaskStateChanged, encode, message_digest, redact
from kubestream.settings import Settings
from kubestream.signing import KEY_FIELD, SIG_FIELD, Signer, Unsigned
from kubestream.taskkey import TaskKey
from kubestream.text import as_text, decode_hash

FINAL_STATES = frozenset(s.value for s in TaskState if s.final)

NOT_LEASE_HOLDER = "not the lease holder"  # Published.detail of a fenced write refused
OWNER_CHANGED = "owner changed"  # Published.detail: adopted between signing and publishing; signed again
OWNER_RETRIES = 5
# task records read per script call by unreported(): a call's reply is parsed in C instead of one reply per task
# in Python, and a call holds Redis for about a millisecond
RECORDS_PER_READ = 1000
LIVE_STATES = ("pending", "running")


@dataclass(frozen=True, slots=True)
class Fence:
    """The watcher lease a write is made under: ``token`` (unique per process) and ``epoch`` (grows on
    every acquisition). The scripts refuse the write unless the lease is still held under both."""

    token: str
    epoch: int


@dataclass(frozen=True, slots=True)
class LiveMember:
    """One member of ``{prefix}:live``: ``<namespace>/<pod>/<dispatch>``. ``dispatch`` is None for a member
    written before members carried it (``<namespace>/<pod>``)."""

    namespace: str
    pod: str
    dispatch: str | None

    @classmethod
    def parse(cls, text: str) -> LiveMember:
        parts = text.split("/", 2)
        return cls(parts[0], parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else None)

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.pod}"
        return base if self.dispatch is None else f"{base}/{self.dispatch}"


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One task's launch for ``TaskStore.dispatch_many``: its record is (re)started for ``dispatch`` and
    ``message`` is appended, signed, to ``stream``."""

    key: TaskKey
    queue: str
    namespace: str
    dispatch: str  # the external executor id ('' = none)
    stream: str
    message: bytes


@dataclass(frozen=True, slots=True)
class Published:
    published: bool
    detail: str  # entry id when published, else why not
    owner: str = ""


class TaskStore:
    """Task records and atomic state publication for one key prefix."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings,
                 signer: Signer | Unsigned | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.settings = settings
        self.signer = signer or Unsigned()  # signs the results this process publishes
        self._publish = Script(client, "publish.lua")
        self._dispatch = Script(client, "dispatch.lua")
        self._fail_launch = Script(client, "fail_launch.lua")
        self._adopt = Script(client, "adopt.lua")
        self._live_remove = Script(client, "live_remove.lua")
        self._record_states = Script(client, "record_states.lua")

    # -- executor side ---------------------------------------------------------------
    def record_dispatch(self, pipe: redis.client.Pipeline, key: TaskKey, *, owner: str, queue: str, namespace: str,
                        dispatch: str, digest: str = "") -> None:
        """Queue the commands that (re)start a task's record for a new dispatch on ``pipe``. ``digest``: of
        the launch message (``message_digest``), so a launcher can tell the executor's own message whose
        signature failed (the keys differ) from a forgery."""
        record = self.keys.task(key.pod_name())
        pipe.hdel(record, "state", "reason", "revoked")
        fields = _record_fields(key, owner, queue, namespace, dispatch, digest)
        pipe.hset(record, mapping=dict[EncodableT, EncodableT](fields.items()))
        pipe.expire(record, self.settings.task_ttl_seconds)

    def dispatch(self, pipe: redis.client.Pipeline, key: TaskKey, *, owner: str, queue: str, namespace: str,
                 dispatch: str, stream: str, message: bytes) -> None:
        """Queue on ``pipe`` one call that does what ``record_dispatch`` does and appends the launch
        ``message``, signed for ``stream``, to ``stream`` (``dispatch_many`` of one)."""
        self.dispatch_many(pipe, owner, [Dispatch(key, queue, namespace, dispatch, stream, message)])

    def dispatch_many(self, pipe: redis.client.Pipeline, owner: str, launches: Sequence[Dispatch]) -> None:
        """Queue on ``pipe`` one call (``lua/dispatch.lua``) that, for each of ``launches``, does what
        ``record_dispatch`` does and appends its launch message, signed for its stream: redis-py's cost per
        queued command and per reply was most of a dispatch batch's cost to the scheduler."""
        if not launches:
            return
        keys: list[KeyT] = []
        rows = []
        for d in launches:
            signed = self.signer.sign(d.stream, d.message)
            keys += (self.keys.task(d.key.pod_name()), d.stream)
            rows.append((d.key.dag_id, d.key.task_id, d.key.run_id, str(d.key.try_number), str(d.key.map_index),
                         d.queue, d.namespace, d.dispatch, message_digest(d.message), d.message,
                         signed.get(KEY_FIELD, b""), signed.get(SIG_FIELD, b"")))
        # strings only (no msgpack bin type: the cmsgpack of Redis 7.0 reads str; Lua strings hold any bytes)
        self._dispatch.queue(pipe, keys, ttl=self.settings.task_ttl_seconds, maxlen=self.settings.launch_maxlen,
                             owner=owner, updated=f"{time.time():.3f}",
                             launches=msgpack.packb(rows, use_bin_type=False))

    def adopt(self, pod_names: Sequence[str], owner: str) -> list[tuple[str, str] | None]:
        """Take ownership of tasks; returns each one's last (state, reason), None if unknown."""
        if not pod_names:
            return []
        rows = self._adopt([self.keys.task(p) for p in pod_names], owner=owner)
        return [(as_text(r[0]), as_text(r[1])) if r else None for r in rows]

    def revoke(self, pod_names: Iterable[str], pipe: redis.client.Pipeline | None = None) -> None:
        """Mark tasks revoked; on ``pipe`` (executed by the caller, e.g. with the RevokeTask) when given."""
        own = pipe is None
        pipe = self.redis.pipeline(transaction=False) if pipe is None else pipe
        for pod in pod_names:
            pipe.hset(self.keys.task(pod), "revoked", "1")
            pipe.expire(self.keys.task(pod), self.settings.task_ttl_seconds)
        if own:
            pipe.execute()

    def unreported(self, pod_names: Sequence[str], *, settled_before: float) -> tuple[list[str], list[str]]:
        """Of ``pod_names`` (tasks the executor holds as running): those whose record is gone, and those whose
        record reached a final state before ``settled_before`` (epoch seconds) yet was never applied (its
        result entry was lost). One round trip: ``RECORDS_PER_READ`` records per script call."""
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(pod_names), RECORDS_PER_READ):
            self._record_states.queue(pipe, [self.keys.task(p) for p in pod_names[start:start + RECORDS_PER_READ]])
        rows = [row for reply in pipe.execute() for row in reply]
        missing, final = [], []
        for pod, (owner, state, updated) in zip(pod_names, rows, strict=True):
            if owner is None:
                missing.append(pod)
            elif as_text(state) in ("succeeded", "failed") and float(as_text(updated) or 0) < settled_before:
                final.append(pod)
        return missing, final

    # -- launcher / watcher side -------------------------------------------------------
    def launch_verdicts(self, launches: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """For each (pod name, dispatch): (verdict, the record's namespace or ''), from its task record (one
        HMGET each, one round trip for the batch). The verdict is '' if the launch may go ahead, else why
        not: 'stale dispatch' when the record names another dispatch, 'revoked', or 'already <state>' when
        it holds a final state of this dispatch (a reclaimed launch whose pod ran, finished and was
        deleted: creating it again would run the task twice)."""
        if not launches:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for pod_name, _ in launches:
            pipe.hmget(self.keys.task(pod_name), "revoked", "dispatch", "state", "namespace")
        out = []
        for (_, dispatch), (revoked, current, state, namespace) in zip(launches, pipe.execute(), strict=True):
            state = as_text(state) if state is not None else ""
            if dispatch and current and as_text(current) != dispatch:
                verdict = "stale dispatch"
            elif revoked is not None and as_text(revoked) == "1":
                verdict = "revoked"
            else:  # this dispatch's record (or one naming none)
                verdict = f"already {state}" if state in FINAL_STATES else ""
            out.append((verdict, as_text(namespace) if namespace is not None else ""))
        return out

    def publish(self, event: TaskStateChanged, dispatch: str | None = None, *,
                fence: Fence | None = None) -> Published:
        """Atomically: drop if not new (or from another dispatch's pod), else update the last
        state and send to the owner.

        ``dispatch``: the dispatch of the event's pod, which must be the record's ("" for a pod without
        one); None: whatever dispatch the record has. ``fence``: the watcher's lease; the write is refused
        (detail ``NOT_LEASE_HOLDER``, nothing written) once it no longer holds."""
        task = self.keys.task(event.key.pod_name())
        for _ in range(OWNER_RETRIES):
            published = _published(self._publish(**self._publish_args(task, event, dispatch, self._owner(task), fence)))
            if published.detail != OWNER_CHANGED:
                break
        return published

    def publish_many(self, events: Sequence[tuple[TaskStateChanged, str | None]]) -> list[Published]:
        """``publish`` for each (event, dispatch), in two round trips for them all (the owners, then the
        scripts); an event whose task was adopted between the two is published again on its own."""
        if not events:
            return []
        tasks = [self.keys.task(event.key.pod_name()) for event, _ in events]
        owners = self._owners(tasks)
        pipe = self.redis.pipeline(transaction=False)
        for (event, dispatch), task, owner in zip(events, tasks, owners, strict=True):
            self._publish.queue(pipe, **self._publish_args(task, event, dispatch, owner, None))
        done = [_published(res) for res in pipe.execute()]
        return [self.publish(event, dispatch) if published.detail == OWNER_CHANGED else published
                for (event, dispatch), published in zip(events, done, strict=True)]

    def _publish_args(self, task: str, event: TaskStateChanged, dispatch: str | None, owner: str,
                      fence: Fence | None) -> dict[str, EncodableT]:
        return {"task": task, **self._event_args(event, dispatch or "", owner),
                "any_dispatch": "1" if dispatch is None else "0",
                "token": fence.token if fence else "", "epoch": str(fence.epoch) if fence else "",
                "lease": self.keys.watcher_lease}

    def fail_launch(self, stream: str, entry_id: str, event: TaskStateChanged | None,
                    *, dead_reason: str = "", raw: bytes = b"", dispatch: str = "") -> Published:
        """Acknowledge a launch entry that ends without a pod, dead-letter it if asked,
        and publish ``event`` (a FAILED state), atomically. Without an event nothing is
        published (the task is unknown). ``dispatch``: the launch's dispatch; the state is
        dropped when the record's current dispatch is another one ("" = whatever it is)."""
        task = self.keys.task(event.key.pod_name() if event else "-")
        published = _published(self._fail_launch(
            stream=stream, task=task, dead=self.keys.dead,
            group=LAUNCH_GROUP, entry=entry_id, dead_reason=dead_reason, raw=redact(raw) if raw else raw,
            dead_maxlen=self.settings.dead_letters_maxlen,
            **self._event_args(event, dispatch, self._owner(task) if event else ""),
        ))
        if published.detail == OWNER_CHANGED and event is not None:  # adopted meanwhile: sign for the new owner
            return self.publish(event, dispatch or None)
        return published

    def _owner(self, task: str) -> str:
        """The task's owner now, which the result is signed for ('' when the task is unknown)."""
        return as_text(self.redis.hget(task, "owner"))

    def _owners(self, tasks: Sequence[str]) -> list[str]:
        """``_owner`` of each task, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for task in tasks:
            pipe.hget(task, "owner")
        return [as_text(owner) for owner in pipe.execute()]

    def _event_args(self, event: TaskStateChanged | None, dispatch: str, owner: str) -> dict[str, EncodableT]:
        """The ARGV of ``_publish.lua``'s ``publish`` by name; state '' when there is no event. The event is
        signed for the result stream of ``owner`` (the script refuses it if the owner changed meanwhile)."""
        if event is None:
            return {"base": self.keys.base, "live": self.keys.live, "state": "", "reason": "", "event": "",
                    "maxlen": 0, "ttl": 0, "now": 0, "live_pod": "", "dispatch": dispatch, "owner": "", "key_id": "",
                    "sig": ""}
        if dispatch and not event.dispatch:  # the executor drops an event of an earlier dispatch of the try
            event = replace(event, dispatch=dispatch)
        raw = encode(event)
        signed = self.signer.sign(self.keys.results(owner), raw) if owner else {}
        return {
            "owner": owner if signed.get(SIG_FIELD) else "",
            "key_id": signed.get(KEY_FIELD, b""), "sig": signed.get(SIG_FIELD, b""),
            "base": self.keys.base, "live": self.keys.live, "state": event.state.value, "reason": event.reason[:2000],
            "event": raw, "maxlen": self.settings.results_maxlen,
            "ttl": min(self.settings.final_record_ttl_seconds, self.settings.task_ttl_seconds),
            "now": f"{time.time():.3f}",
            "live_pod": f"{event.namespace}/{event.pod_name}" if event.namespace else "",
            "dispatch": dispatch,
        }

    def live_members(self) -> set[LiveMember]:
        """The tasks last published pending or running."""
        return {LiveMember.parse(as_text(m)) for m in self.redis.smembers(self.keys.live)}

    def remove_live(self, member: LiveMember, fence: Fence) -> bool:
        """Drop ``member`` from the live set; False (nothing written) once ``fence`` no longer holds the lease."""
        return bool(self._live_remove(live=self.keys.live, lease=self.keys.watcher_lease, token=fence.token,
                                      epoch=str(fence.epoch), member=str(member)))

    def data_epoch(self) -> str:
        """The value of ``{prefix}:epoch``, written now (a random one) if it is missing: a value that changes
        while a process runs means Redis lost its data."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.keys.data_epoch, uuid.uuid4().hex, nx=True)
        pipe.get(self.keys.data_epoch)
        return as_text(pipe.execute()[1])

    def record(self, pod_name: str) -> dict[str, str]:
        return decode_hash(self.redis.hgetall(self.keys.task(pod_name)))


def _record_fields(key: TaskKey, owner: str, queue: str, namespace: str, dispatch: str,
                   digest: str) -> dict[str, EncodableT]:
    """The fields a dispatch (re)starts a task's record with."""
    return {"owner": owner, "dag_id": key.dag_id, "task_id": key.task_id, "run_id": key.run_id,
            "try_number": key.try_number, "map_index": key.map_index, "queue": queue, "namespace": namespace,
            "dispatch": dispatch, "digest": digest, "updated": f"{time.time():.3f}"}


def failed(key: TaskKey, reason: str, namespace: str = "") -> TaskStateChanged:
    return TaskStateChanged(key=key, state=TaskState.FAILED, reason=reason, pod_name=key.pod_name(),
                            namespace=namespace, at=time.time())


def _published(res: Sequence[Any]) -> Published:
    if int(res[0]) == 1:
        return Published(True, as_text(res[1]), as_text(res[2]))
    return Published(False, as_text(res[1]))
