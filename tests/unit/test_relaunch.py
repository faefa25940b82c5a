"""Pod launch failure retries (``executor/relaunch.py``): the pure decision and reason classes as tables,
and ``results.apply`` with a relauncher against a recording sink (no Redis: the relaunch itself is
recorded; the integration test ``test_relaunch`` runs it against Redis and a real apiserver)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest

from kubestream.executor.launches import airflow_key
from kubestream.executor.relaunch import (
    RECORD_FIELD,
    Relauncher,
    decide,
    dispatch_id,
    log_lines,
    original_dispatch,
    reason_class,
)
from kubestream.executor.results import apply
from kubestream.messages import LaunchTask, TaskState, TaskStateChanged
from kubestream.settings import Settings, SettingsError
from kubestream.taskkey import TaskKey

PULL = 'ErrImagePull: Failed to pull image "nope:1": not found'


@pytest.mark.parametrize(("reason", "expected"), [
    (PULL, "ErrImagePull"),
    ("ImagePullBackOff: Back-off pulling image", "ImagePullBackOff"),
    ('CreateContainerConfigError: secret "x" not found', "CreateContainerConfigError"),
    ("Error (exit code 1)", "Error"),
    ("Error (exit code 1): boom", "Error"),
    ("OOMKilled (exit code 137)", "OOMKilled"),
    ("init container setup: Error (exit code 2)", "Error"),
    ("Evicted: The node was low on resource: memory.", "Evicted"),
    ("ProviderFailed", "ProviderFailed"),
    ("pod deleted while Pending", "PodDeleted"),
    ("pod deleted while Pending (ErrImagePull: x)", "PodDeleted"),
    ("pod refused by pod_policy: baseline/host-path", "Launch"),
    ("invalid pod spec: bad", "Launch"),
    ("422 Unprocessable Entity: Pod is invalid", "Launch"),
    ("launch gave up after 5 deliveries", "Launch"),
    ("", "Launch"),
])
def test_reason_class(reason: str, expected: str) -> None:
    assert reason_class(reason) == expected


EXCLUDED = frozenset({"Error"})


@pytest.mark.parametrize(("reason", "db_state", "attempts", "retries", "excluded", "relaunch", "why"), [
    (PULL, "queued", 0, 1, EXCLUDED, True, "relaunch 1 of 1"),
    (PULL, "queued", 1, 1, EXCLUDED, False, "exhausted"),
    (PULL, "queued", 1, 2, EXCLUDED, True, "relaunch 2 of 2"),
    (PULL, "queued", 2, 2, EXCLUDED, False, "exhausted"),
    (PULL, "queued", 50, -1, EXCLUDED, True, "of unlimited"),
    (PULL, "queued", 0, 0, EXCLUDED, False, "is 0"),
    (PULL, "running", 0, 1, EXCLUDED, False, "running in the Airflow DB"),
    (PULL, "failed", 0, 1, EXCLUDED, False, "failed in the Airflow DB"),
    (PULL, None, 0, 1, EXCLUDED, False, "unknown in the Airflow DB"),
    ("Error (exit code 1)", "queued", 0, 1, EXCLUDED, False, "excluded"),
    ("Error (exit code 1)", "queued", 0, 1, frozenset(), True, "relaunch 1"),
    ("OOMKilled (exit code 137)", "queued", 0, 1, EXCLUDED, True, "relaunch 1"),
    ("pod deleted while Pending", "queued", 0, 1, EXCLUDED, True, "relaunch 1"),
    ("pod deleted while Running", "running", 0, 1, EXCLUDED, False, "not queued"),
    ("CreateContainerConfigError: x", "queued", 0, 3, frozenset({"CreateContainerConfigError"}), False, "excluded"),
    ("pod refused by pod_policy: x", "queued", 0, -1, frozenset(), False, "not a pod failure"),
])
def test_decide(reason: str, db_state: str | None, attempts: int, retries: int, excluded: frozenset[str],
                relaunch: bool, why: str) -> None:
    decision = decide(reason=reason, db_state=db_state, attempts=attempts, retries=retries, excluded=excluded)
    assert decision.relaunch is relaunch and why in decision.why


def test_dispatch_ids_of_relaunches_name_their_original() -> None:
    assert dispatch_id("abc", 2) == "abc+relaunch-2"
    assert original_dispatch(dispatch_id("abc", 2)) == "abc" and original_dispatch("abc") == "abc"


def test_log_lines_list_the_attempts_and_survive_a_bad_field() -> None:
    record = {RECORD_FIELD: '[{"pod": "p", "dispatch": "d", "reason": "ErrImagePull: x"}, '
                            '{"pod": "p", "dispatch": "d+relaunch-1", "reason": "ErrImagePull: y"}]'}
    lines = log_lines(record)
    assert len(lines) == 2 and "attempt 1" in lines[0] and "ErrImagePull: x" in lines[0]
    assert "d+relaunch-1" in lines[1]
    assert log_lines({}) == []
    assert "unreadable" in log_lines({RECORD_FIELD: "{"})[0]


@pytest.mark.parametrize(("values", "match"), [
    ({"pod_launch_failure_retries": "-2"}, "POD_LAUNCH_FAILURE_RETRIES"),
    ({"pod_launch_failure_retries": "one"}, "integer >= -1"),
    ({"pod_launch_failure_excluded_container_reasons": "Error,Err or"}, "not a container reason"),
    ({"pod_launch_failure_excluded_container_reasons": "Error;OOMKilled"}, "not a container reason"),
])
def test_bad_settings_are_refused_with_their_name(values: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        Settings.from_mapping(values)


def test_settings_defaults_are_the_providers() -> None:
    s = Settings()
    assert s.pod_launch_failure_retries == 1 and s.pod_launch_failure_excluded_container_reasons == ("Error",)
    assert Settings.from_mapping({"pod_launch_failure_excluded_container_reasons": ""}
                                 ).pod_launch_failure_excluded_container_reasons == ()
    assert Settings.from_mapping({"pod_launch_failure_retries": "-1"}).pod_launch_failure_retries == -1


# -- results.apply with a relauncher -------------------------------------------------------------------


class Sink:
    def __init__(self, db: dict[str, str | None], *running: TaskKey) -> None:
        self.running = {airflow_key(k) for k in running}
        self.log = logging.getLogger("test.relaunch")
        self.calls: list[tuple[str, str, Any]] = []
        self.db = db
        self.lookups = 0

    def fail(self, key: Any, info: Any = None) -> None:
        self.calls.append(("fail", key.task_id, info))
        self.running.discard(key)

    def change_state(self, key: Any, state: Any, info: Any = None, remove_running: bool = True) -> None:
        self.calls.append((str(state), key.task_id, info))

    def running_state(self, key: Any, info: Any = None) -> None:
        self.calls.append(("running", key.task_id, info))

    def external_id(self, ti_key: Any) -> str | None:
        return "ext"

    def task_states_from_db(self, keys: Sequence[TaskKey]) -> dict[TaskKey, str | None]:
        self.lookups += 1
        return {k: self.db.get(k.task_id) for k in keys}


class RecordingRelauncher(Relauncher):
    """The real bookkeeping and decision; the Redis write is recorded (it succeeds unless ``down``)."""

    def __init__(self, retries: int, down: bool = False) -> None:
        settings = Settings.from_mapping({"pod_launch_failure_retries": str(retries)})
        super().__init__(None, None, None, settings, None, logging.getLogger("test.relaunch"))  # type: ignore[arg-type]
        self.done: list[tuple[str, str]] = []
        self.down = down
        self.stale: set[TaskKey] = set()  # what superseded() answers

    def superseded(self, keys: Sequence[TaskKey]) -> set[TaskKey]:
        return {k for k in keys if k in self.stale}

    def relaunch(self, ti_key: Any, event: TaskStateChanged) -> bool:
        if self.down:
            return False
        launch = self._launches[ti_key]
        launch.attempts.append({"reason": event.reason})
        self.done.append((ti_key.task_id, event.reason))
        return True


def key(task: str) -> TaskKey:
    return TaskKey("dag", task, "run", 1)


def failed(task: str, reason: str = PULL) -> TaskStateChanged:
    return TaskStateChanged(key=key(task), state=TaskState.FAILED, reason=reason, pod_name=key(task).pod_name())


def dispatched(relauncher: Relauncher, *tasks: str) -> None:
    for task in tasks:
        msg = LaunchTask(key=key(task), queue="default", scheduler_id="s", workload_json="{}",
                         external_executor_id=f"ext-{task}")
        relauncher.remember(airflow_key(key(task)), msg, "ns", None)


def test_pre_execution_failures_are_relaunched_then_reported_once_exhausted() -> None:
    sink = Sink({"a": "queued", "b": "queued"}, key("a"), key("b"))
    rl = RecordingRelauncher(retries=2)
    dispatched(rl, "a", "b")
    apply(sink, [failed("a"), failed("b")], rl)
    assert rl.done == [("a", PULL), ("b", PULL)] and sink.calls == [] and sink.lookups == 1  # one DB query
    apply(sink, [failed("a", "ErrImagePull: second")], rl)
    assert sink.calls == []
    apply(sink, [failed("a", "ErrImagePull: third")], rl)  # retries=2 spent: reported, with the history
    assert [c[:2] for c in sink.calls] == [("fail", "a")]
    info = sink.calls[0][2]
    assert info.startswith("ErrImagePull: third") and PULL in info and "ErrImagePull: second" in info
    assert not rl.knows(airflow_key(key("a"))) and rl.knows(airflow_key(key("b")))


@pytest.mark.parametrize(("db", "reason"), [
    ("running", PULL),  # the task started (or Airflow moved it on): never run it twice
    ("queued", "Error (exit code 1)"),  # excluded by default
    ("queued", "pod refused by pod_policy: baseline/privileged"),  # the launcher refused it: no pod ran
])
def test_failures_that_may_have_run_code_or_cannot_change_are_reported(db: str, reason: str) -> None:
    sink = Sink({"a": db}, key("a"))
    rl = RecordingRelauncher(retries=-1)
    dispatched(rl, "a")
    apply(sink, [failed("a", reason)], rl)
    assert rl.done == [] and sink.calls == [("fail", "a", reason)]


def test_a_task_seen_running_is_never_relaunched_and_unknown_tasks_cost_no_db_query() -> None:
    sink = Sink({"a": "queued", "b": "queued"}, key("a"), key("b"))
    rl = RecordingRelauncher(retries=1)
    dispatched(rl, "a")
    running = TaskStateChanged(key=key("a"), state=TaskState.RUNNING)
    apply(sink, [running, failed("a"), failed("b")], rl)  # b: not dispatched since this executor started
    assert rl.done == [] and [c[:2] for c in sink.calls] == [("running", "a"), ("fail", "a"), ("fail", "b")]
    assert sink.lookups == 0


def test_a_failure_a_relaunch_answered_before_a_restart_is_not_reported_again() -> None:
    sink = Sink({}, key("a"), key("b"))
    rl = RecordingRelauncher(retries=1)  # restarted: it holds no launch
    rl.stale = {key("a")}
    apply(sink, [failed("a"), failed("b")], rl)
    assert sink.calls == [("fail", "b", PULL)] and sink.lookups == 0


def test_retries_zero_remembers_nothing_and_a_redis_failure_reports() -> None:
    sink = Sink({"a": "queued"}, key("a"))
    off = RecordingRelauncher(retries=0)
    dispatched(off, "a")
    assert not off.knows(airflow_key(key("a")))
    anonymous = RecordingRelauncher(retries=1)  # no dispatch id: the new pod could not be told from the old
    anonymous.remember(airflow_key(key("a")), LaunchTask(key=key("a"), queue="default", scheduler_id="s",
                                                         workload_json="{}"), "ns", None)
    assert not anonymous.knows(airflow_key(key("a")))
    down = RecordingRelauncher(retries=1, down=True)
    dispatched(down, "a")
    apply(sink, [failed("a")], down)
    assert sink.calls == [("fail", "a", PULL)]


# -- the relaunch write, against a real Redis --------------------------------------------------------


def test_relaunch_writes_revoke_record_and_launch_and_old_pod_events_are_stale(redis_client, keys, key_prefix,
                                                                               redis_server) -> None:
    from kubestream.messages import RevokeTask, decode
    from kubestream.signing import Unsigned
    from kubestream.store import TaskStore

    settings = Settings.from_mapping({"redis_url": redis_server.url, "key_prefix": key_prefix,
                                      "pod_launch_failure_retries": "2", "allow_unsigned": "true",
                                      "priority_bands": "100,10"})
    store = TaskStore(redis_client, keys, settings)
    counted: list[str] = []
    rl = Relauncher(redis_client, store, keys, settings, Unsigned(), logging.getLogger("test.relaunch"),
                    count=counted.append)
    k = key("flaky")
    msg = LaunchTask(key=k, queue="default", scheduler_id="sched", workload_json="{}", external_executor_id="ext")
    pipe = redis_client.pipeline(transaction=True)
    store.record_dispatch(pipe, k, owner="sched", queue="default", namespace="ns", dispatch="ext")
    pipe.execute()
    ti_key = airflow_key(k)
    rl.remember(ti_key, msg, "ns", 1)
    event = failed("flaky")
    assert store.publish(event, dispatch="ext").published

    assert rl.relaunch(ti_key, event) and counted == ["ErrImagePull"]
    # the revoke in the highest band, read first: behind a banded backlog the new launch would wait for the
    # failed pod's delete until it gave up
    revoke, = [decode(f[b"m"]) for _, f in redis_client.xrange(keys.launch("default", 0))]
    launch, = [decode(f[b"m"]) for _, f in redis_client.xrange(keys.launch("default", 1))]  # the task's band
    assert redis_client.xlen(keys.launch("default")) == 0
    assert isinstance(revoke, RevokeTask) and revoke.external_executor_id == "ext"
    assert isinstance(launch, LaunchTask) and launch.external_executor_id == "ext+relaunch-1"
    assert launch.key == k and launch.workload_json == "{}"
    record = store.record(k.pod_name())
    assert record["dispatch"] == "ext+relaunch-1" and "state" not in record and "revoked" not in record
    assert rl.dispatch_of(ti_key) == "ext+relaunch-1"
    assert len(log_lines(record)) == 1 and PULL in log_lines(record)[0]

    # the old pod's later events never speak for the new dispatch; the new pod's do
    late = TaskStateChanged(key=k, state=TaskState.FAILED, reason="pod deleted while Pending")
    assert store.publish(late, dispatch="ext").detail == "stale dispatch"
    assert store.publish(TaskStateChanged(key=k, state=TaskState.RUNNING), dispatch="ext+relaunch-1").published

    # after a restart (no launch held), the failure the relaunch answered is superseded; a failure of the
    # relaunched pod itself is not
    assert rl.superseded([k, key("other")]) == {k}

    # a second relaunch counts on from the original dispatch and keeps the first attempt's reason
    assert rl.relaunch(ti_key, failed("flaky", "ErrImagePull: again"))
    record = store.record(k.pod_name())
    assert record["dispatch"] == "ext+relaunch-2" and len(log_lines(record)) == 2
    assert store.publish(failed("flaky", "ErrImagePull: third"), dispatch="ext+relaunch-2").published
    assert rl.superseded([k]) == set()


def test_relaunch_with_redis_down_writes_nothing_and_says_so(redis_server, keys, key_prefix) -> None:
    import redis as redis_lib

    from devkit.procs import free_port
    from kubestream.signing import Unsigned
    from kubestream.store import TaskStore

    settings = Settings.from_mapping({"key_prefix": key_prefix, "allow_unsigned": "true"})
    dead = redis_lib.Redis(port=free_port(), socket_connect_timeout=0.5)
    rl = Relauncher(dead, TaskStore(dead, keys, settings), keys, settings, Unsigned(),
                    logging.getLogger("test.relaunch"))
    k = key("a")
    rl.remember(airflow_key(k), LaunchTask(key=k, queue="default", scheduler_id="s", workload_json="{}",
                                           external_executor_id="ext"), "ns", None)
    assert not rl.relaunch(airflow_key(k), failed("a"))
    assert rl.dispatch_of(airflow_key(k)) is None  # nothing changed: the next failure counts from 0
