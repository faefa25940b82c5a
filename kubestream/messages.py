"""Messages on kubestream's streams: frozen, versioned, msgpack-encoded.

Commands are imperative (``LaunchTask``, ``RevokeTask``: executor -> launchers),
events past tense (``TaskStateChanged``: launchers/watcher -> executor).
Every stream entry holds ``m`` = ``encode(message)``, plus ``k`` and ``s``: its signature (kubestream.signing).

Any decoding failure (not msgpack, wrong shape, unknown type, unknown schema
version, wrong field types) raises ``DecodeError``; whatever part of the key
could be read is attached so the consumer can still fail the right task.

Schema versions (rolling upgrades, docs/architecture.md "Messages"): a build of
``SCHEMA_VERSION`` N reads N-1 and N (``readable_versions``; ``_UPGRADES`` turns
a map of each readable version into this build's fields), writes commands at N
and events at ``EVENT_VERSION`` (N-1, the oldest it reads), so that launchers
and the watcher can be upgraded before the schedulers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, cast

import msgpack

from kubestream.taskkey import TaskKey

SCHEMA_VERSION = 2
"""The version this build writes its commands (launch, revoke) at: the newest it reads.
2: ``LaunchTask.pod_mutation`` (the effect of Airflow's ``pod_mutation_hook``)."""
FIRST_VERSION = 1  # no message ever carried an older one
FIELD = b"m"

MessageMap = dict[str, Any]


def readable_versions(current: int = SCHEMA_VERSION) -> tuple[int, ...]:
    """The rule: a build of version N reads N-1 and N (never one before ``FIRST_VERSION``)."""
    return tuple(v for v in (current - 1, current) if v >= FIRST_VERSION)


def _as_is(data: MessageMap) -> MessageMap:
    return data


# Readable versions -> the function turning a map of that version into one of this build's fields. On a
# bump to N+1: add N+1 (``_as_is``), give N a real upgrade (rename, default, convert what changed), drop
# N-1; ``_DOWNGRADES`` gets the N entry (this build's event fields written as N) and drops N-1.
# ``test_core`` checks both tables against the rule.
# 1 -> 2: version 1 has no ``pod_mutation`` (None, the default): 1 reads as is.
_UPGRADES: dict[int, Callable[[MessageMap], MessageMap]] = {1: _as_is, 2: _as_is}
READABLE_VERSIONS = tuple(sorted(_UPGRADES))

# Events (``state``: launchers and watcher -> schedulers) are written at the oldest readable version, so a
# scheduler one version behind still reads what upgraded launchers and watchers write.
EVENT_VERSION = min(READABLE_VERSIONS)
_DOWNGRADES: dict[int, Callable[[MessageMap], MessageMap]] = {1: _as_is}  # 2 changed no event field


class DecodeError(ValueError):
    """A stream entry that cannot be turned into a message."""

    def __init__(self, reason: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial or {}

    def key(self) -> TaskKey | None:
        """The task key, when the undecodable entry still carried a valid one."""
        try:
            return _key_from(self.partial)
        except (KeyError, TypeError, ValueError):
            return None


class TaskState(StrEnum):
    """What the watcher knows of a task's pod (not yet Airflow's TaskInstanceState)."""

    PENDING = "pending"  # pod exists, not running yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # pod ended well: the task's own result is in the Airflow DB
    FAILED = "failed"  # the pod or its launch failed: the task failed

    @property
    def final(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED)


@dataclass(frozen=True, slots=True)
class LaunchTask:
    """Create the pod for one task try."""

    key: TaskKey
    queue: str
    scheduler_id: str
    workload_json: str
    external_executor_id: str = ""
    pod_override: dict[str, Any] | None = None  # V1Pod as API JSON (camelCase)
    pod_template: dict[str, Any] | None = None  # executor_config pod_template_file, loaded
    # JSON merge patch (RFC 7386, kubestream.mergepatch) of the scheduler's pod_mutation_hook: the launcher applies
    # it to the pod it builds, before its pod policy; identity fields are re-asserted after it (podspec.build_pod)
    pod_mutation: dict[str, Any] | None = None
    type: str = field(default="launch", init=False)

    @property
    def pod_name(self) -> str:
        return self.key.pod_name()

    @property
    def requested_namespace(self) -> str | None:
        """The namespace the task asks for (``metadata.namespace``), if any: the pod_mutation_hook's, which runs
        last (as in the KubernetesExecutor), else the pod_override's."""
        for pod in (self.pod_mutation, self.pod_override):
            meta = (pod or {}).get("metadata")
            value = meta.get("namespace") if isinstance(meta, dict) else None
            if value:
                return str(value)
        return None


@dataclass(frozen=True, slots=True)
class RevokeTask:
    """Make sure no pod runs for this task try."""

    key: TaskKey
    queue: str
    reason: str = ""
    external_executor_id: str = ""  # the dispatch revoked; a pod of a later dispatch is left alone
    type: str = field(default="revoke", init=False)

    @property
    def pod_name(self) -> str:
        return self.key.pod_name()


@dataclass(frozen=True, slots=True)
class TaskStateChanged:
    """A task's pod reached a new state."""

    key: TaskKey
    state: TaskState
    reason: str = ""
    pod_name: str = ""
    namespace: str = ""
    at: float = 0.0
    # the dispatch (external_executor_id, or a relaunch's) of the pod the event is about; "" = not known. Older
    # builds neither write nor read it (decode ignores fields it does not know): no schema version change
    dispatch: str = ""
    type: str = field(default="state", init=False)


Message = LaunchTask | RevokeTask | TaskStateChanged
_TYPES: dict[str, type[LaunchTask] | type[RevokeTask] | type[TaskStateChanged]] = {
    "launch": LaunchTask, "revoke": RevokeTask, "state": TaskStateChanged}


_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {  # (name, init) of each message class's fields, in order
    cls: tuple((f.name, f.init) for f in dataclasses.fields(cls)) for cls in _TYPES.values()}


def _key_to(key: TaskKey) -> list[Any]:
    return [key.dag_id, key.task_id, key.run_id, key.try_number, key.map_index]


def _key_from(data: dict[str, Any]) -> TaskKey:
    dag_id, task_id, run_id, try_number, map_index = data["key"]
    for s in (dag_id, task_id, run_id):
        if not isinstance(s, str) or not s:
            raise TypeError("key strings must be non-empty")
    if not isinstance(try_number, int) or not isinstance(map_index, int) or isinstance(try_number, bool):
        raise TypeError("key numbers must be integers")
    return TaskKey(dag_id, task_id, run_id, try_number, map_index)


def write_version(message: Message) -> int:
    """The version ``message`` is written at: ``SCHEMA_VERSION`` for commands, ``EVENT_VERSION`` for events."""
    return EVENT_VERSION if isinstance(message, TaskStateChanged) else SCHEMA_VERSION


def encode(message: Message) -> bytes:
    data: MessageMap = {}
    for name, _ in _FIELDS[type(message)]:
        value = getattr(message, name)
        if name == "key":
            value = _key_to(value)
        elif isinstance(value, Enum):
            value = value.value
        data[name] = value
    version = write_version(message)
    if version != SCHEMA_VERSION:
        data = _DOWNGRADES[version](data)
    return cast(bytes, msgpack.packb({"v": version, **data}, use_bin_type=True))


def decode(raw: bytes) -> Message:
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types
        raise DecodeError(f"not msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeError(f"expected a map, got {type(data).__name__}")
    version = data.get("v")
    upgrade = _UPGRADES.get(version) if isinstance(version, int) and not isinstance(version, bool) else None
    if upgrade is None:
        reads = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise DecodeError(f"unknown schema version {version!r} (this build reads {reads})", data)
    try:
        data = upgrade(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"version {version} message: {type(exc).__name__}: {exc}", data) from None
    cls = _TYPES.get(data.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise DecodeError(f"unknown message type {data.get('type')!r}", data)
    try:
        kwargs: dict[str, Any] = {}
        for name, init in _FIELDS[cls]:
            if not init:
                continue
            if name == "key":
                kwargs["key"] = _key_from(data)
            elif name in data:
                kwargs[name] = data[name]
        if cls is TaskStateChanged:
            kwargs["state"] = TaskState(kwargs["state"])
        message = cls(**kwargs)
        _check_types(message)
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"invalid {cls.__name__}: {type(exc).__name__}: {exc}", data) from None
    return message


_EXPECTED = {
    "queue": str, "scheduler_id": str, "workload_json": str, "external_executor_id": str,
    "reason": str, "pod_name": str, "namespace": str, "dispatch": str,
}


def _check_types(message: Message) -> None:
    for name, typ in _EXPECTED.items():
        value = getattr(message, name, None)
        if value is not None and not isinstance(value, typ):
            raise TypeError(f"{name} must be {typ.__name__}")
    for name in ("pod_override", "pod_template", "pod_mutation"):
        value = getattr(message, name, None)
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{name} must be a map")
    for name in ("at",):
        value = getattr(message, name, None)
        if value is not None and not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number")


def message_digest(raw: bytes) -> str:
    """What a task record keeps of its launch message: enough to recognise it, nothing to read from it."""
    return hashlib.sha256(raw).hexdigest()[:32]


REDACTED = "<redacted>"
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


def redact(raw: bytes) -> bytes:
    """A stream entry's message as it may be kept at rest (dead letters): the workload's token and the env
    values of pod_override / pod_template / pod_mutation replaced by ``<redacted>``. An entry that is not a readable map
    keeps only its size and digest (it may hold anything)."""
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - msgpack raises several unrelated types
        data = None
    if not isinstance(data, dict):
        return cast(bytes, msgpack.packb({"unreadable": f"{len(raw)} bytes, sha256 "
                                                        f"{hashlib.sha256(raw).hexdigest()[:16]}"}))
    workload = data.get("workload_json")
    if isinstance(workload, str):
        try:
            parsed = json.loads(workload)
            if isinstance(parsed, dict) and "token" in parsed:
                parsed["token"] = REDACTED
            data["workload_json"] = json.dumps(parsed)
        except ValueError:
            data["workload_json"] = REDACTED
    for name in ("pod_override", "pod_template", "pod_mutation"):
        pod = data.get(name)
        spec = pod.get("spec") if isinstance(pod, dict) else None
        containers = [c for list_name in _CONTAINER_LISTS if isinstance(spec, dict)
                      and isinstance(spec.get(list_name), list) for c in spec[list_name]]
        for container in containers:
            envs = container.get("env") if isinstance(container, dict) else None
            for env in envs if isinstance(envs, list) else []:
                if isinstance(env, dict) and "value" in env:
                    env["value"] = REDACTED
    return cast(bytes, msgpack.packb(data, use_bin_type=True))
