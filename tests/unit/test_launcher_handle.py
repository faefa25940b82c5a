"""``Launcher.handle`` against the real Redis and an in-memory PodApi (``devkit.fakekube``): no apiserver.

Launch and revoke messages are written as the executor writes them (``TaskStore.record_dispatch``
and an XADD of ``messages.encode``), read through the launcher's own consumer and handled one by
one; the pods the launcher made, the calls it sent and what it published are then checked.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from devkit.fakekube import FakePodApi, api_error
from kubestream.keys import LAUNCH_GROUP, Keys
from kubestream.messages import FIELD, LaunchTask, Message, RevokeTask, TaskState, TaskStateChanged, decode, encode
from kubestream.settings import Settings
from kubestream.store import TaskStore
from kubestream.taskkey import DISPATCH_ANNOTATION, TaskKey, key_from_annotations, task_annotations
from kubestream.workers.launcher import Launcher

NS = "tasks"
OWNER = "sched-a"
KEY = TaskKey("dag", "task", "run-1", 1)
POD = KEY.pod_name()


@pytest.fixture
def settings(redis_server, key_prefix: str) -> Settings:
    """Fast retries; no cluster (this module's own ``settings``, not the cluster-bound one)."""
    return Settings.from_mapping({
        "redis_url": redis_server.url, "key_prefix": key_prefix, "namespace": NS, "scheduler_id": OWNER,
        "retry_base_seconds": "0.01", "retry_max_seconds": "0.05", "retry_budget_seconds": "2",
        "reclaim_idle_seconds": "10",
    })


@pytest.fixture
def pods() -> FakePodApi:
    return FakePodApi()


@pytest.fixture
def launcher(settings: Settings, redis_client: redis.Redis, pods: FakePodApi) -> Iterator[Launcher]:
    launcher = Launcher(settings, redis_client, None, name="test-launcher", pods=pods)
    launcher.consumer.ensure_groups()
    yield launcher
    launcher.stop()


def dispatch(redis_client: redis.Redis, settings: Settings, key: TaskKey = KEY, dispatch_id: str = "d1") -> None:
    """What the executor's ``_process_workloads`` writes for one task: its record and a LaunchTask."""
    store, keys = TaskStore(redis_client, Keys(settings.key_prefix), settings), Keys(settings.key_prefix)
    pipe = redis_client.pipeline(transaction=True)
    store.record_dispatch(pipe, key, owner=OWNER, queue="default", namespace=NS, dispatch=dispatch_id)
    pipe.xadd(keys.launch("default"), {FIELD: encode(LaunchTask(key, "default", OWNER, "{}", dispatch_id))})
    pipe.execute()


def send(redis_client: redis.Redis, keys: Keys, message: Message) -> None:
    redis_client.xadd(keys.launch("default"), {FIELD: encode(message)})


def handle_all(launcher: Launcher) -> int:
    """Read what is new, handle each entry, acknowledge what settled; returns how many were read."""
    works = launcher.prepare(launcher.consumer.read_new(100, 10))
    for work in works:
        launcher.handle(work)
    launcher.consumer.ack(launcher.settled())
    return len(works)


def pending(redis_client: redis.Redis, keys: Keys) -> int:
    return int(redis_client.xpending(keys.launch("default"), LAUNCH_GROUP)["pending"])


def results(redis_client: redis.Redis, keys: Keys) -> list[TaskStateChanged]:
    out = []
    for _, fields in redis_client.xrange(keys.results(OWNER)):
        event = decode(fields[FIELD])
        assert isinstance(event, TaskStateChanged)
        out.append(event)
    return out


def pod_of(key: TaskKey, dispatch_id: str) -> dict:
    """A task pod as a launcher of dispatch ``dispatch_id`` made it."""
    return {"metadata": {"name": key.pod_name(), "annotations": {**task_annotations(key),
                                                                 DISPATCH_ANNOTATION: dispatch_id}},
            "spec": {"containers": [{"name": "base", "image": "img"}]}}


def test_a_launch_creates_the_task_pod_and_settles_the_entry(launcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings)
    assert handle_all(launcher) == 1
    pod = pods.pod(NS, POD)
    assert pod is not None, pods.calls
    annotations = pod["metadata"]["annotations"]
    assert key_from_annotations(annotations) == KEY and annotations[DISPATCH_ANNOTATION] == "d1"
    assert [c.verb for c in pods.calls] == ["create"]
    assert pending(redis_client, keys) == 0 and redis_client.xlen(keys.launch("default")) == 0
    assert results(redis_client, keys) == []  # the watcher, not the launcher, reports a created pod
    assert launcher.metrics.snapshot()["created_total"] == 1


def test_a_redelivered_launch_meets_409_and_counts_as_success(launcher, pods, redis_client, settings,
                                                               keys) -> None:
    pods.add(NS, pod_of(KEY, "d1"))  # an earlier delivery created it, then its launcher died
    dispatch(redis_client, settings)
    handle_all(launcher)
    assert [c.verb for c in pods.calls] == ["create", "get"]  # the get: is the existing pod ours?
    assert pending(redis_client, keys) == 0
    assert results(redis_client, keys) == []
    assert launcher.metrics.snapshot()["already_exists_total"] == 1


def test_a_pod_of_an_earlier_dispatch_is_retried_then_left_for_redelivery(launcher, pods, redis_client, settings,
                                                                          keys) -> None:
    pods.add(NS, pod_of(KEY, "d0"))  # a revoked dispatch's pod, still terminating
    dispatch(redis_client, settings, dispatch_id="d1")
    handle_all(launcher)
    assert len(pods.calls_of("create")) >= 2  # retried within the budget
    assert pods.pod(NS, POD)["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d0"
    assert pending(redis_client, keys) == 1 and launcher.settled() == []  # not settled: redelivered later
    assert results(redis_client, keys) == []


def test_a_422_fails_the_task_with_the_apis_message(launcher, pods, redis_client, settings, keys) -> None:
    message = f'Pod "{POD}" is invalid: spec.containers[0].name: Invalid value: "Bad_Name!"'
    pods.fail_next("create", api_error(422, message))
    dispatch(redis_client, settings)
    handle_all(launcher)
    (event,) = results(redis_client, keys)
    assert event.key == KEY and event.state is TaskState.FAILED
    assert event.reason == f"422 Unprocessable Entity: {message}"
    assert event.namespace == NS and event.pod_name == POD
    assert pods.pod(NS, POD) is None and len(pods.calls_of("create")) == 1  # permanent: not retried
    assert pending(redis_client, keys) == 0
    assert redis_client.hget(keys.task(POD), "state") == b"failed"
    assert redis_client.xlen(keys.dead) == 0  # a refused pod is not a poison message


FORBIDDEN = 'pods is forbidden: User "kubestream-launcher" cannot create resource "pods"'


def test_a_403_forbidden_from_a_restarting_apiserver_is_retried_and_the_pod_created(launcher, pods, redis_client,
                                                                                    settings, keys) -> None:
    # right after a restart the apiserver denies until its RBAC cache is warm (this failed tasks before)
    pods.fail_next("create", api_error(403, 'pods "x" is forbidden: exceeded quota: pods, requested: pods=1'),
                   api_error(403, FORBIDDEN), api_error(403, FORBIDDEN))
    dispatch(redis_client, settings)
    handle_all(launcher)
    assert pods.names(NS) == {POD} and len(pods.calls_of("create")) == 4
    assert results(redis_client, keys) == [] and pending(redis_client, keys) == 0


def test_a_403_forbidden_that_persists_past_the_retry_budget_fails_the_task(launcher, pods, redis_client, settings,
                                                                           keys) -> None:
    pods.fail_next("create", *[api_error(403, FORBIDDEN) for _ in range(10_000)])
    dispatch(redis_client, settings)
    handle_all(launcher)
    (event,) = results(redis_client, keys)
    assert event.key == KEY and event.state is TaskState.FAILED
    assert event.reason.startswith("403 Forbidden: pods is forbidden") and "still denied after 2s" in event.reason
    assert pods.names(NS) == set() and len(pods.calls_of("create")) > 2
    assert pending(redis_client, keys) == 0


def test_a_429_is_retried_after_its_retry_after(launcher, pods, redis_client, settings, keys) -> None:
    pods.fail_next("create", api_error(429, "too many requests", retry_after="0"),
                   api_error(429, "too many requests", retry_after="0"))
    dispatch(redis_client, settings)
    handle_all(launcher)
    assert len(pods.calls_of("create")) == 3 and pods.pod(NS, POD) is not None
    assert pending(redis_client, keys) == 0 and results(redis_client, keys) == []
    snapshot = launcher.metrics.snapshot()
    assert snapshot["transient_errors_total"] == 2 and snapshot["created_total"] == 1


def test_a_connection_error_is_retried(launcher, pods, redis_client, settings, keys) -> None:
    pods.fail_next("create", ConnectionResetError(104, "Connection reset by peer"))
    dispatch(redis_client, settings)
    handle_all(launcher)
    assert len(pods.calls_of("create")) == 2 and pods.pod(NS, POD) is not None
    assert pending(redis_client, keys) == 0


def test_a_revoked_task_is_skipped(launcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings)
    TaskStore(redis_client, keys, settings).revoke([POD])
    handle_all(launcher)
    assert pods.calls == []
    assert pending(redis_client, keys) == 0 and results(redis_client, keys) == []
    assert launcher.metrics.snapshot()["skipped_total"] == 1


def test_a_launch_of_a_superseded_dispatch_is_skipped(launcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings, dispatch_id="d1")
    dispatch(redis_client, settings, dispatch_id="d2")  # requeued: the record now says d2
    handle_all(launcher)
    assert [c.verb for c in pods.calls] == ["create"]
    assert pods.pod(NS, POD)["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d2"
    assert pending(redis_client, keys) == 0


def test_a_revoke_deletes_its_own_dispatchs_pod_with_a_uid_precondition(launcher, pods, redis_client, settings,
                                                                        keys) -> None:
    dispatch(redis_client, settings, dispatch_id="d1")
    handle_all(launcher)
    uid = pods.pod(NS, POD)["metadata"]["uid"]
    TaskStore(redis_client, keys, settings).revoke([POD])
    send(redis_client, keys, RevokeTask(KEY, "default", "stuck in queued", external_executor_id="d1"))
    handle_all(launcher)
    assert pods.pod(NS, POD) is None
    (delete,) = pods.calls_of("delete")
    assert (delete.name, delete.uid, delete.grace_period_seconds) == (POD, uid, 0)
    assert pending(redis_client, keys) == 0
    assert launcher.metrics.snapshot()["revoked_total"] == 1


def test_a_revoke_leaves_a_later_dispatchs_pod_alone(launcher, pods, redis_client, settings, keys) -> None:
    pods.add(NS, pod_of(KEY, "d2"))  # the task was queued again (same try, same pod name) and launched
    send(redis_client, keys, RevokeTask(KEY, "default", "stuck in queued", external_executor_id="d1"))
    handle_all(launcher)
    assert pods.calls_of("delete") == [] and pods.pod(NS, POD) is not None
    assert pending(redis_client, keys) == 0


def test_a_revoke_whose_pod_was_replaced_meanwhile_deletes_nothing(launcher, pods, redis_client, settings,
                                                                   keys) -> None:
    old_uid = pods.add(NS, pod_of(KEY, "d1"))["metadata"]["uid"]

    def replace() -> None:  # between the launcher's read and its delete: a later dispatch's pod
        pods.remove(NS, POD)
        pods.add(NS, pod_of(KEY, "d2"))

    pods.on_next("delete", replace)
    send(redis_client, keys, RevokeTask(KEY, "default", "stuck in queued", external_executor_id="d1"))
    handle_all(launcher)
    assert [c.uid for c in pods.calls_of("delete")] == [old_uid]  # 409 (precondition), then read again: not ours
    assert pods.pod(NS, POD)["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d2"
    assert pending(redis_client, keys) == 0
