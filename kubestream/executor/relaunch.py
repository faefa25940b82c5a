"""Pod launch failure retries: a task whose pod failed before the task process started is launched again.

Parity with the cncf.kubernetes provider's ``pod_launch_failure_retries`` (>= 10.20): a pod that fails while
its task instance is still QUEUED in the Airflow DB (an image pull error, CreateContainerConfigError, an
admission denial, its node gone...) ran no task code, so the executor launches the same try again, up to
``pod_launch_failure_retries`` times (-1: no limit, 0: never), without reporting the failure to Airflow: no
task try is consumed. Failures whose reason is in ``pod_launch_failure_excluded_container_reasons``
(default ``Error``: the container ran and its process exited before it told Airflow it runs) are reported.

How (docs/architecture.md, "Pod launch failure retries"):

- ``decide`` (pure) tells relaunch from report for one FAILED event;
- ``Relauncher`` keeps, for each task this executor dispatched and has not seen RUNNING, its launch
  message and the attempts so far (in memory only: after a scheduler restart a failure is reported, as
  the provider does). A relaunch is one MULTI/EXEC: a RevokeTask of the failed pod's dispatch (its pod,
  Pending with ErrImagePull, is deleted: the new pod is never stuck behind it), the task record restarted
  for a new dispatch ``<external_executor_id>+relaunch-<n>`` (events of the old pod are dropped as a stale
  dispatch by the Lua publish, and its pod deleted by the watcher), the attempts' reasons in the record's
  ``launch_failures`` field (shown by ``get_task_log``) and the new LaunchTask;
- a failure that is not a pod's (the launcher refused the launch: pod policy, invalid spec, API error)
  is never relaunched: it would fail the same way.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from kubestream.executor.airflowtypes import LoggerLike
from kubestream.keys import Keys
from kubestream.messages import LaunchTask, RevokeTask, TaskStateChanged, encode
from kubestream.settings import Settings
from kubestream.signing import Signer, Unsigned
from kubestream.store import TaskStore
from kubestream.taskkey import TaskKey
from kubestream.text import as_text

DISPATCH_SEPARATOR = "+relaunch-"  # the dispatch of relaunch n of dispatch X: X+relaunch-n
RECORD_FIELD = "launch_failures"  # task record field: JSON list of the relaunched attempts
PRE_EXECUTION_DB_STATE = "queued"  # the task instance never ran: no task code started
POD_DELETED = "PodDeleted"  # reason class of "pod deleted while <phase>"
NOT_A_POD = "Launch"  # reason class of a launcher's failure (no pod ran)

_INIT_PREFIX = re.compile(r"^init container [^:]*: ")
_POD_REASON = re.compile(r"^([A-Z][A-Za-z0-9]*)(?=$|[:\s(])")


def reason_class(reason: str) -> str:
    """The Kubernetes reason a FAILED event's reason starts with (``ErrImagePull: ...`` ->
    ``ErrImagePull``, ``Error (exit code 1)`` -> ``Error``, init containers' too), ``PodDeleted`` for a pod
    deleted before it finished, ``Launch`` for anything else: a launcher's own failure (pod policy,
    invalid spec, API errors), where no pod ran."""
    text = (reason or "").strip()
    if text.startswith("pod deleted while"):
        return POD_DELETED
    match = _POD_REASON.match(_INIT_PREFIX.sub("", text))
    return match.group(1) if match else NOT_A_POD


@dataclass(frozen=True, slots=True)
class Decision:
    relaunch: bool
    why: str


def decide(*, reason: str, db_state: str | None, attempts: int, retries: int,
           excluded: frozenset[str] | tuple[str, ...]) -> Decision:
    """Relaunch or report one FAILED event of a task this executor dispatched and has not seen running.

    ``db_state``: the state of the event's try in the Airflow DB (None: unknown); ``attempts``: relaunches
    made so far; ``retries``: ``pod_launch_failure_retries`` (-1 unlimited, 0 off)."""
    cls = reason_class(reason)
    if retries == 0:
        return Decision(False, "pod_launch_failure_retries is 0")
    if cls == NOT_A_POD:
        return Decision(False, "not a pod failure: the launch itself was refused")
    if db_state != PRE_EXECUTION_DB_STATE:
        return Decision(False, f"the task instance is {db_state or 'unknown'} in the Airflow DB, not queued")
    if cls in excluded:
        return Decision(False, f"reason {cls} is in pod_launch_failure_excluded_container_reasons")
    if retries != -1 and attempts >= retries:
        return Decision(False, f"pod_launch_failure_retries={retries} exhausted")
    return Decision(True, f"relaunch {attempts + 1} of {'unlimited' if retries == -1 else retries}")


def dispatch_id(original: str, attempt: int) -> str:
    """The dispatch id of relaunch ``attempt`` (1, 2...) of the dispatch ``original``."""
    return f"{original}{DISPATCH_SEPARATOR}{attempt}"


def original_dispatch(dispatch: str) -> str:
    """The dispatch Airflow assigned, of a relaunch's dispatch (itself for any other)."""
    return dispatch.split(DISPATCH_SEPARATOR, 1)[0]


def log_lines(record: Mapping[str, str]) -> list[str]:
    """``get_task_log`` lines of the relaunched attempts a task record lists, oldest first."""
    try:
        attempts = json.loads(record.get(RECORD_FIELD) or "[]")
    except ValueError:
        return [f"kubestream: unreadable {RECORD_FIELD} in the task record"]
    if not isinstance(attempts, list):
        return []
    return [f"kubestream: launch attempt {i} (pod {a.get('pod', '?')}, dispatch {a.get('dispatch', '?')}) "
            f"failed before the task started, launched again: {a.get('reason', '')}"
            for i, a in enumerate(attempts, 1) if isinstance(a, dict)]


@dataclass(slots=True)
class Launch:
    """What a dispatched task needs to be launched again."""

    message: LaunchTask
    namespace: str
    band: int | None
    attempts: list[dict[str, Any]] = field(default_factory=list)  # the relaunched attempts, oldest first

    @property
    def dispatch(self) -> str:
        return self.message.external_executor_id


class Relauncher:
    """The executor's launch failure retries: the launches it may redo, and the redo itself."""

    def __init__(self, client: redis.Redis, store: TaskStore, keys: Keys, settings: Settings,
                 signer: Signer | Unsigned, log: LoggerLike,
                 count: Callable[[str], None] = lambda reason_class: None) -> None:
        self.redis, self.store, self.keys, self.settings, self.signer = client, store, keys, settings, signer
        self.log = log
        self.count = count  # called with the reason class of each relaunch (a metric)
        self._launches: dict[Any, Launch] = {}

    @property
    def enabled(self) -> bool:
        return self.settings.pod_launch_failure_retries != 0

    def remember(self, ti_key: Any, message: LaunchTask, namespace: str, band: int | None) -> None:
        """A task was dispatched (a new dispatch starts a new count). A launch without a dispatch id is never
        redone: only a dispatch id tells the new pod from the failed one (Airflow always assigns one)."""
        if self.enabled and message.external_executor_id:
            self._launches[ti_key] = Launch(message, namespace, band)

    def forget(self, ti_key: Any) -> None:
        """The task started, finished, was revoked or handed back: it is never relaunched."""
        self._launches.pop(ti_key, None)

    def knows(self, ti_key: Any) -> bool:
        """A FAILED event of this task may be relaunched (dispatched here, not seen running)."""
        return ti_key in self._launches

    def dispatch_of(self, ti_key: Any) -> str | None:
        """The current dispatch of a task this executor relaunched, else None."""
        launch = self._launches.get(ti_key)
        return launch.dispatch if launch is not None and launch.attempts else None

    def history(self, ti_key: Any) -> str:
        """The relaunched attempts' reasons, for a failure reported at last ('' if none)."""
        launch = self._launches.get(ti_key)
        if launch is None or not launch.attempts:
            return ""
        return "; earlier launch attempts: " + " | ".join(a["reason"] for a in launch.attempts)

    def superseded(self, keys: Sequence[TaskKey]) -> set[TaskKey]:
        """Of the keys of FAILED events this executor does not hold a launch for, those whose task record
        holds a relaunch's dispatch that has not failed: the event is the failure that relaunch answered,
        applied again after a restart between the relaunch and the event's acknowledgement. One round trip;
        a Redis error answers none (the failures are reported)."""
        if not keys:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self.keys.task(key.pod_name()), "dispatch", "state")
        try:
            rows = pipe.execute()
        except redis.RedisError as exc:
            self.log.warning("could not read %d task records, reporting their failures: %s", len(keys), exc)
            return set()
        return {key for key, (dispatch, state) in zip(keys, rows, strict=True)
                if DISPATCH_SEPARATOR in as_text(dispatch) and as_text(state) != "failed"}

    def decide(self, ti_key: Any, event: TaskStateChanged, db_state: str | None) -> Decision:
        launch = self._launches.get(ti_key)
        if launch is None:
            return Decision(False, "not dispatched by this executor since it started")
        return decide(reason=event.reason, db_state=db_state, attempts=len(launch.attempts),
                      retries=self.settings.pod_launch_failure_retries,
                      excluded=self.settings.pod_launch_failure_excluded_container_reasons)

    def relaunch(self, ti_key: Any, event: TaskStateChanged) -> bool:
        """Launch the task again under a new dispatch, in one MULTI/EXEC; False when Redis failed (nothing
        was written: the caller reports the failure)."""
        launch = self._launches[ti_key]
        old, attempt = launch.message, len(launch.attempts) + 1
        new = dataclasses.replace(old, external_executor_id=dispatch_id(original_dispatch(old.external_executor_id),
                                                                         attempt))
        raw = encode(new)
        attempts = [*launch.attempts, {"attempt": attempt, "pod": event.pod_name or old.pod_name,
                                       "dispatch": old.external_executor_id, "reason": event.reason[:500],
                                       "at": round(event.at or time.time(), 3)}]
        revoke = RevokeTask(key=old.key, queue=old.queue, external_executor_id=old.external_executor_id,
                            reason=f"pod failed before the task started ({event.reason[:200]}): launched again")
        pipe = self.redis.pipeline(transaction=True)
        revokes = self.settings.revoke_stream(self.keys, old.queue)
        pipe.xadd(revokes, self.signer.sign(revokes, encode(revoke)), maxlen=self.settings.launch_maxlen,
                  approximate=True)
        self.store.dispatch(pipe, new.key, owner=old.scheduler_id, queue=old.queue, namespace=launch.namespace,
                            dispatch=new.external_executor_id, message=raw,
                            stream=self.keys.launch(old.queue, launch.band))
        pipe.hset(self.keys.task(new.pod_name), RECORD_FIELD, json.dumps(attempts))
        try:
            pipe.execute()
        except redis.RedisError as exc:
            self.log.warning("could not relaunch %s (pod %s): Redis unavailable, reporting its failure: %s",
                             new.key, new.pod_name, exc)
            return False
        launch.message, launch.attempts = new, attempts
        cls = reason_class(event.reason)
        self.count(cls)
        self.log.warning("pod %s of task %s failed before the task started (%s): launch attempt %d as dispatch %s, "
                         "no task try consumed", new.pod_name, new.key, event.reason, attempt + 1,
                         new.external_executor_id)
        return True
