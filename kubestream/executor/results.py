"""Apply TaskStateChanged events to the executor (the body of sync()).

Rules (docs/architecture.md, "state mapping"):
- an event for a try this executor runs applies; an event for a try it does not
  run (anymore) is ignored when it runs a newer try of that task instance (found
  with one walk of ``running``, only when such an event comes: a sync of events
  for running tries costs no walk, whatever the number of tasks running);
- PENDING changes nothing in Airflow; RUNNING sets the task running (with its
  external executor id, when this executor knows it);
- FAILED fails the task with the reason as info, unless the pod failed before the task process
  started and ``relaunch`` launches it again (``kubestream.executor.relaunch``: the task instance is
  still QUEUED in the Airflow DB, one query per sync for all such events);
  a failure already answered by a relaunch (re-read after a restart) is ignored;
- an event naming another dispatch than the one this executor runs for that try
  (``external_executor_id``) is ignored: the try was queued again (a deferred
  task resumed, a sensor rescheduled) and dispatched anew before the old pod's
  end was applied;
- SUCCEEDED means the pod's process exited 0, which the workload does even
  when the task failed: the executor reports the state the task wrote to the
  Airflow DB (one query per sync for all such events), as the
  KubernetesExecutor does. A try back in ``scheduled`` (resumed after a
  deferral, rescheduled) is reported as such, which the scheduler ignores; one
  back in ``queued`` reports nothing (its new dispatch owns the key); one being
  cleared (``restarting``) is reported ``success``, on which the scheduler
  resets it for a new run instead of handling a failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kubestream.executor.airflowtypes import ResultSink, TaskInstanceKeyLike
from kubestream.executor.launches import airflow_key
from kubestream.executor.relaunch import Relauncher, original_dispatch
from kubestream.messages import DecodeError, TaskState, TaskStateChanged, decode
from kubestream.signing import SignatureError, Signer, Unsigned
from kubestream.taskkey import TaskKey
from kubestream.text import StreamFields

FINAL_DB_STATES = {"success", "failed", "up_for_retry", "up_for_reschedule", "upstream_failed", "skipped",
                    "removed", "deferred"}
RESCHEDULED_DB_STATE = "scheduled"  # the pod's try was put back by a trigger or a reschedule: nothing failed
REQUEUED_DB_STATE = "queued"  # ... and queued again: a newer dispatch of the same key takes it over
CLEARED_DB_STATE = "restarting"  # cleared while it ran: the scheduler resets it on a success


def decode_entries(
    entries: Iterable[tuple[str, StreamFields | None]], stream: str, signer: Signer | Unsigned,
) -> tuple[list[TaskStateChanged], list[tuple[str, str]]]:
    """Verify each entry's signature for ``stream``, then decode it; (events, [(entry id, why not)])."""
    events: list[TaskStateChanged] = []
    bad: list[tuple[str, str]] = []
    for eid, fields in entries:
        try:
            msg = decode(signer.verify(stream, fields or {}))
        except SignatureError as exc:
            bad.append((eid, f"signature: {exc}"))
            continue
        except DecodeError as exc:
            bad.append((eid, str(exc)))
            continue
        if isinstance(msg, TaskStateChanged):
            events.append(msg)
        else:
            bad.append((eid, f"unexpected {type(msg).__name__} on a result stream"))
    return events, bad


def _newest_tries(running: Iterable[TaskInstanceKeyLike]) -> dict[tuple[str, str, str, int], int]:
    newest: dict[tuple[str, str, str, int], int] = {}
    for k in running:
        instance = (k.dag_id, k.task_id, k.run_id, k.map_index)
        newest[instance] = max(newest.get(instance, 0), k.try_number)
    return newest


def apply(executor: ResultSink, events: Sequence[TaskStateChanged], relauncher: Relauncher | None = None) -> None:
    succeeded: list[TaskKey] = []
    launch_failures: list[TaskStateChanged] = []
    other_failures: list[TaskStateChanged] = []  # with a relauncher: checked for a relaunch that superseded them
    newest: dict[tuple[str, str, str, int], int] | None = None  # walked from running when first needed
    for event in events:
        k = event.key
        ti_key = airflow_key(k)
        if event.dispatch and _earlier_dispatch(executor, ti_key, event.dispatch):
            executor.log.info("ignoring %s of an earlier dispatch %s of %s (pod %s)", event.state.value,
                              event.dispatch, event.key, event.pod_name)
            continue
        if ti_key not in executor.running:
            if newest is None:
                newest = _newest_tries(executor.running)
            if newest.get((k.dag_id, k.task_id, k.run_id, k.map_index), 0) > k.try_number:
                executor.log.info("ignoring %s for an older try: %s", event.state.value, event.key)
                continue
        if event.state is TaskState.RUNNING:
            if relauncher is not None:
                relauncher.forget(ti_key)  # its container started: a failure from now on is reported
            ext = executor.external_id(ti_key)
            if ext:
                executor.running_state(ti_key, info=ext)
        elif event.state is TaskState.FAILED:
            if relauncher is not None:
                (launch_failures if relauncher.knows(ti_key) else other_failures).append(event)
                continue
            executor.log.info("task failed: %s: %s (pod %s)", event.key, event.reason, event.pod_name)
            executor.fail(ti_key, info=event.reason or None)
        elif event.state is TaskState.SUCCEEDED:
            succeeded.append(event.key)
    if other_failures and relauncher is not None:
        superseded = relauncher.superseded([e.key for e in other_failures])
        for event in other_failures:
            if event.key in superseded:
                executor.log.info("ignoring failed for a pod launched again since: %s: %s (pod %s)", event.key,
                                  event.reason, event.pod_name)
                continue
            executor.log.info("task failed: %s: %s (pod %s)", event.key, event.reason, event.pod_name)
            executor.fail(airflow_key(event.key), info=event.reason or None)
    if launch_failures and relauncher is not None:
        relaunch_or_fail(executor, relauncher, launch_failures)
    if succeeded:
        report_db_states(executor, succeeded)


def _earlier_dispatch(executor: ResultSink, ti_key: TaskInstanceKeyLike, dispatch: str) -> bool:
    """Whether ``dispatch`` (a relaunch's counts as the dispatch it relaunches) is not the one this executor
    runs for ``ti_key``, when it knows one."""
    current = executor.external_id(ti_key)
    return bool(current) and original_dispatch(dispatch) != current


def relaunch_or_fail(executor: ResultSink, relauncher: Relauncher, events: Sequence[TaskStateChanged]) -> None:
    """FAILED events of tasks dispatched here and not seen running: launched again when the pod failed before
    the task process started (one Airflow DB query for them all), else reported with the earlier attempts."""
    states = executor.task_states_from_db([e.key for e in events])
    for event in events:
        ti_key = airflow_key(event.key)
        decision = relauncher.decide(ti_key, event, states.get(event.key))
        if decision.relaunch and relauncher.relaunch(ti_key, event):
            continue
        reason = (event.reason or "pod failed") + relauncher.history(ti_key)
        relauncher.forget(ti_key)
        executor.log.info("task failed: %s: %s (pod %s; not launched again: %s)", event.key, reason,
                          event.pod_name, decision.why)
        executor.fail(ti_key, info=reason)


def apply_adopted(executor: ResultSink, adopted: Sequence[tuple[TaskKey, tuple[str, str]]]) -> None:
    """Report what adoption learned: the last state published for each adopted task."""
    events = [TaskStateChanged(key=key, state=TaskState(state), reason=reason)
              for key, (state, reason) in adopted if state in {s.value for s in TaskState}]
    apply(executor, events)


def report_db_states(executor: ResultSink, keys: Sequence[TaskKey]) -> None:
    """Pods that ended well: report the state each task wrote to the Airflow DB."""
    states = executor.task_states_from_db(keys)
    for key in keys:
        ti_key = airflow_key(key)
        state = states.get(key)
        if state in FINAL_DB_STATES or state == RESCHEDULED_DB_STATE:
            executor.change_state(ti_key, state, None)
        elif state == REQUEUED_DB_STATE:
            executor.log.info("pod of %s succeeded after its try was queued again: nothing to report", key)
        elif state == CLEARED_DB_STATE:
            executor.change_state(ti_key, "success", None)
        else:
            executor.fail(ti_key, info=f"pod succeeded but the task's state is {state or 'unknown'}")


def db_states(keys: Sequence[TaskKey]) -> dict[TaskKey, str | None]:
    """The state of each key's task instance in the Airflow DB, None unless its current try is the key's
    (one query, its rows read by position)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    which = TaskInstance.filter_for_tis([airflow_key(k) for k in keys])
    if which is None:  # no keys
        return {}
    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.dag_id, TaskInstance.task_id, TaskInstance.run_id, TaskInstance.map_index,
                   TaskInstance.try_number, TaskInstance.state).where(which)
        ).all()
    found: dict[tuple[str, str, str, int], tuple[int, Any]] = {
        (dag_id, task_id, run_id, map_index): (try_number, state)
        for dag_id, task_id, run_id, map_index, try_number, state in rows}
    out: dict[TaskKey, str | None] = {}
    for key in keys:
        try_number, state = found.get((key.dag_id, key.task_id, key.run_id, key.map_index), (None, None))
        current = state and try_number == key.try_number
        out[key] = str(getattr(state, "value", state)) if current else None
    return out
