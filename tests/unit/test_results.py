"""Applying result events to the executor (``executor/results.py``) against a recording sink: which
try and dispatch an event applies to, what a pod that ended well reports for each state its task left in
the Airflow DB, and that a sync of events for running tries never walks ``running``."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from kubestream.executor.launches import airflow_key
from kubestream.executor.results import apply
from kubestream.messages import TaskState, TaskStateChanged
from kubestream.taskkey import TaskKey


class Running(set[Any]):
    """``running`` that counts the walks over it (``in`` does not walk)."""

    walks = 0

    def __iter__(self) -> Iterator[Any]:
        self.walks += 1
        return super().__iter__()


class Sink:
    def __init__(self, *running: TaskKey, db_state: str | None = "success") -> None:
        self.running = Running(airflow_key(k) for k in running)
        self.db_state = db_state
        self.log = logging.getLogger("test.results")
        self.calls: list[tuple[str, Any]] = []

    def fail(self, key: Any, info: Any = None) -> None:
        self.calls.append(("fail", key.try_number))
        self.running.discard(key)

    def change_state(self, key: Any, state: Any, info: Any = None, remove_running: bool = True) -> None:
        self.calls.append((str(state), key.try_number))
        self.running.discard(key)

    def running_state(self, key: Any, info: Any = None) -> None:
        self.calls.append(("running", key.try_number))

    def external_id(self, ti_key: Any) -> str | None:
        return "ext"

    def task_states_from_db(self, keys: Sequence[TaskKey]) -> dict[TaskKey, str | None]:
        return {k: self.db_state for k in keys}


def key(task: str, try_number: int) -> TaskKey:
    return TaskKey("dag", task, "run", try_number)


def event(k: TaskKey, state: TaskState, dispatch: str = "") -> TaskStateChanged:
    return TaskStateChanged(key=k, state=state, reason="", dispatch=dispatch)


def test_events_for_running_tries_apply_without_walking_running() -> None:
    sink = Sink(*(key(f"t{i}", 1) for i in range(1000)))
    apply(sink, [event(key("t1", 1), TaskState.RUNNING), event(key("t2", 1), TaskState.FAILED),
                 event(key("t3", 1), TaskState.SUCCEEDED)])
    assert sink.calls == [("running", 1), ("fail", 1), ("success", 1)]
    assert sink.running.walks == 0  # at 10k running the walk cost up to 0.2 s per sync


def test_an_event_for_an_older_try_is_ignored_while_a_newer_one_runs() -> None:
    sink = Sink(key("t", 2))
    apply(sink, [event(key("t", 1), TaskState.FAILED), event(key("t", 1), TaskState.SUCCEEDED)])
    assert sink.calls == [] and sink.running == {airflow_key(key("t", 2))}
    assert sink.running.walks == 1  # once for the whole batch


def test_an_event_for_a_try_not_running_applies_when_no_newer_one_runs() -> None:
    """e.g. adopted from another scheduler: its key is not in running yet."""
    sink = Sink(key("other", 1))
    apply(sink, [event(key("t", 3), TaskState.FAILED)])
    assert sink.calls == [("fail", 3)]


def test_a_stale_try_left_in_running_is_settled_by_its_own_event() -> None:
    """Both tries in running (the older one's end was never reported): its event removes it, so it
    does not hold a slot for ever; Airflow ignores an event whose try is not the task's current one."""
    sink = Sink(key("t", 1), key("t", 2))
    apply(sink, [event(key("t", 1), TaskState.FAILED)])
    assert sink.calls == [("fail", 1)] and sink.running == {airflow_key(key("t", 2))}


@pytest.mark.parametrize("dispatch", ["earlier", "earlier+relaunch-1"])
def test_an_event_of_an_earlier_dispatch_of_the_same_try_is_ignored(dispatch: str) -> None:
    """A deferred task resumed (same try, a new external_executor_id) and was dispatched again before its
    old pod's end was read: that end says nothing of the new dispatch, which keeps its key in running."""
    sink = Sink(key("t", 1), db_state="queued")  # the executor runs dispatch "ext" of this try
    apply(sink, [event(key("t", 1), state, dispatch) for state in TaskState])
    assert sink.calls == [] and sink.running == {airflow_key(key("t", 1))}


@pytest.mark.parametrize("dispatch", ["ext", "ext+relaunch-2", ""])
def test_an_event_of_the_current_dispatch_or_of_an_unknown_one_applies(dispatch: str) -> None:
    sink = Sink(key("t", 1))
    apply(sink, [event(key("t", 1), TaskState.SUCCEEDED, dispatch)])
    assert sink.calls == [("success", 1)]


@pytest.mark.parametrize(("db_state", "reported"), [
    ("success", [("success", 1)]), ("up_for_retry", [("up_for_retry", 1)]), ("deferred", [("deferred", 1)]),
    ("up_for_reschedule", [("up_for_reschedule", 1)]),
    # the trigger fired (or the reschedule came) before the pod's end was read: Airflow ignores "scheduled",
    # where a failure would have made the scheduler fail the resumed task as killed externally
    ("scheduled", [("scheduled", 1)]),
    ("queued", []),  # ... and the scheduler queued it again: its new dispatch owns the key
    ("restarting", [("success", 1)]),  # cleared while it ran: on a success the scheduler resets it, no retry
    ("running", [("fail", 1)]), (None, [("fail", 1)]),  # the process ended and the task wrote no end
])
def test_a_pod_that_ended_well_reports_what_its_task_left_in_the_db(db_state: str | None,
                                                                    reported: list[tuple[str, int]]) -> None:
    sink = Sink(key("t", 1), db_state=db_state)
    apply(sink, [event(key("t", 1), TaskState.SUCCEEDED, "ext")])
    assert sink.calls == reported
