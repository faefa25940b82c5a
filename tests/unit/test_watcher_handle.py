"""``Watcher.handle`` (and one namespace's relist and watch) against the real Redis and an in-memory
PodApi (``devkit.fakekube``): no apiserver.

Task records are written as the executor writes them (``TaskStore.record_dispatch``), pods as a
launcher made them; the pods then move on as a kubelet would move them (``set_phase``), and each
event is handed to the watcher.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from devkit.fakekube import Call, FakePodApi
from kubestream.keys import Keys
from kubestream.kubeapi import Gone
from kubestream.messages import FIELD, TaskState, TaskStateChanged, decode
from kubestream.settings import Settings
from kubestream.store import TaskStore
from kubestream.taskkey import DISPATCH_ANNOTATION, MANAGED_LABEL, TaskKey, task_annotations
from kubestream.watcher.watcher import NamespaceWatch, Watcher

NS = "tasks"
OWNER = "sched-a"
KEY = TaskKey("dag", "task", "run-1", 1)
POD = KEY.pod_name()


@pytest.fixture
def settings(redis_server, key_prefix: str) -> Settings:
    """No cluster (this module's own ``settings``, not the cluster-bound one)."""
    return Settings.from_mapping({"redis_url": redis_server.url, "key_prefix": key_prefix, "namespace": NS,
                                  "scheduler_id": OWNER})


@pytest.fixture
def pods() -> FakePodApi:
    return FakePodApi()


@pytest.fixture
def watcher(settings: Settings, redis_client: redis.Redis, pods: FakePodApi) -> Iterator[Watcher]:
    watcher = Watcher(settings, redis_client, None, name="test-watcher", pods=pods)
    yield watcher
    watcher.close()


def dispatch(redis_client: redis.Redis, settings: Settings, key: TaskKey = KEY, dispatch_id: str = "d1") -> None:
    """The task's record, as the executor's ``_process_workloads`` writes it."""
    store = TaskStore(redis_client, Keys(settings.key_prefix), settings)
    pipe = redis_client.pipeline(transaction=True)
    store.record_dispatch(pipe, key, owner=OWNER, queue="default", namespace=NS, dispatch=dispatch_id)
    pipe.execute()


def launched(pods: FakePodApi, key: TaskKey = KEY, dispatch_id: str = "d1") -> dict:
    """The task's pod, as a launcher of dispatch ``dispatch_id`` created it (Pending)."""
    return pods.add(NS, {
        "metadata": {"name": key.pod_name(), "labels": {MANAGED_LABEL: "true"},
                     "annotations": {**task_annotations(key), DISPATCH_ANNOTATION: dispatch_id}},
        "spec": {"containers": [{"name": "base", "image": "img"}]}})


def results(redis_client: redis.Redis, keys: Keys) -> list[tuple[TaskKey, TaskState, str]]:
    out = []
    for _, fields in redis_client.xrange(keys.results(OWNER)):
        event = decode(fields[FIELD])
        assert isinstance(event, TaskStateChanged)
        out.append((event.key, event.state, event.reason))
    return out


def exit_code(code: int) -> dict:
    return {"containerStatuses": [{"name": "base", "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]}


def test_running_and_succeeded_are_published_once_and_the_pod_deleted_by_uid(watcher, pods, redis_client, settings,
                                                                              keys) -> None:
    dispatch(redis_client, settings)
    uid = launched(pods)["metadata"]["uid"]
    watcher.handle(pods.pod(NS, POD), "ADDED")
    running = pods.set_phase(NS, POD, "Running")
    watcher.handle(running, "MODIFIED")
    watcher.handle(running, "MODIFIED")  # a replayed event (a watch resumed from an older checkpoint)
    succeeded = pods.set_phase(NS, POD, "Succeeded")
    watcher.handle(succeeded, "MODIFIED")
    watcher.handle(succeeded, "MODIFIED")
    watcher.close()  # the deletes in flight are done
    assert results(redis_client, keys) == [(KEY, TaskState.PENDING, ""), (KEY, TaskState.RUNNING, ""),
                                           (KEY, TaskState.SUCCEEDED, "")]
    # every succeeded event asks for the delete (a failed one is retried that way), always with the pod's uid
    assert {(d.name, d.uid) for d in pods.calls_of("delete")} == {(POD, uid)}
    assert pods.pod(NS, POD) is None
    assert redis_client.sismember(keys.live, f"{NS}/{POD}") == 0


def test_a_failed_pod_is_published_with_its_reason_and_kept(watcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings)
    launched(pods)
    watcher.handle(pods.set_phase(NS, POD, "Failed", **exit_code(3)), "MODIFIED")
    watcher.close()
    assert results(redis_client, keys) == [(KEY, TaskState.FAILED, "Error (exit code 3)")]
    assert pods.calls_of("delete") == [] and pods.pod(NS, POD) is not None  # delete_worker_pods_on_failure=False


def test_a_pod_without_task_annotations_is_ignored(watcher, pods, redis_client, settings, keys) -> None:
    other = pods.add(NS, {"metadata": {"name": "not-a-task", "labels": {MANAGED_LABEL: "true"}},
                          "spec": {"containers": [{"name": "c", "image": "img"}]}})
    watcher.handle(other, "ADDED")
    watcher.handle(pods.set_phase(NS, "not-a-task", "Succeeded"), "MODIFIED")
    watcher.close()
    assert results(redis_client, keys) == [] and pods.calls == []
    assert redis_client.scard(keys.live) == 0


def test_a_pod_of_an_unknown_task_is_not_published_and_only_cleaned_up_once_finished(
        watcher, pods, redis_client, keys) -> None:
    uid = launched(pods)["metadata"]["uid"]  # no task record: e.g. it expired long ago
    watcher.handle(pods.set_phase(NS, POD, "Running"), "MODIFIED")
    watcher.handle(pods.set_phase(NS, POD, "Succeeded"), "MODIFIED")
    watcher.close()
    assert results(redis_client, keys) == []
    assert pods.calls == [Call("delete", NS, POD, uid=uid)]  # one delete: for the Succeeded event only


def test_a_stale_dispatchs_pod_is_deleted_without_publishing(watcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings, dispatch_id="d2")  # the task was queued again since its pod was made
    uid = launched(pods, dispatch_id="d1")["metadata"]["uid"]
    watcher.handle(pods.set_phase(NS, POD, "Running"), "MODIFIED")
    watcher.close()
    assert results(redis_client, keys) == []
    assert [(d.name, d.uid) for d in pods.calls_of("delete")] == [(POD, uid)]


def test_a_revoked_tasks_pod_is_deleted_without_publishing(watcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings)
    uid = launched(pods)["metadata"]["uid"]
    TaskStore(redis_client, keys, settings).revoke([POD])
    watcher.handle(pods.set_phase(NS, POD, "Running"), "MODIFIED")
    watcher.close()
    assert results(redis_client, keys) == []
    assert [(d.name, d.uid) for d in pods.calls_of("delete")] == [(POD, uid)]


def test_the_delete_spares_a_newer_pod_of_the_same_name(watcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings)
    old_uid = launched(pods)["metadata"]["uid"]
    succeeded = pods.set_phase(NS, POD, "Succeeded")

    def replace() -> None:  # before the delete reaches the API: the old pod is gone, a new one took its name
        pods.remove(NS, POD)
        launched(pods, dispatch_id="d2")

    pods.on_next("delete", replace)
    watcher.handle(succeeded, "MODIFIED")
    watcher.close()
    assert [d.uid for d in pods.calls_of("delete")] == [old_uid]  # answered 409: precondition failed
    assert pods.pod(NS, POD)["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d2"


def test_a_relist_publishes_current_states_and_fails_vanished_live_tasks(watcher, pods, redis_client, settings,
                                                                          keys) -> None:
    vanished, current = TaskKey("dag", "gone", "run-1", 1), TaskKey("dag", "here", "run-1", 1)
    for key in (vanished, current):
        dispatch(redis_client, settings, key=key)
        launched(pods, key=key)
    watcher.handle(pods.set_phase(NS, vanished.pod_name(), "Running"), "MODIFIED")
    pods.remove(NS, vanished.pod_name())  # deleted while no watcher watched
    pods.set_phase(NS, current.pod_name(), "Running")
    rv = NamespaceWatch(watcher, NS, threading.Event()).relist()
    assert results(redis_client, keys) == [
        (vanished, TaskState.RUNNING, ""),
        (current, TaskState.RUNNING, ""),
        (vanished, TaskState.FAILED, "pod deleted while running"),
    ]
    assert redis_client.get(keys.resource_version(NS)) == rv.encode()
    assert redis_client.smembers(keys.live) == {f"{NS}/{current.pod_name()}".encode()}


def test_a_watch_publishes_the_changes_after_its_checkpoint_and_an_expired_one_is_gone(
        watcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings)
    launched(pods)
    ns_watch = NamespaceWatch(watcher, NS, threading.Event())
    rv = ns_watch.relist()  # publishes pending
    pods.set_phase(NS, POD, "Running")
    last = pods.set_phase(NS, POD, "Succeeded")["metadata"]["resourceVersion"]
    assert ns_watch.watch(rv) == last
    watcher.close()
    assert [state for _, state, _ in results(redis_client, keys)] == [
        TaskState.PENDING, TaskState.RUNNING, TaskState.SUCCEEDED]
    assert redis_client.get(keys.resource_version(NS)) == last.encode()
    (watch,) = pods.calls_of("watch")
    assert watch.resource_version == rv
    pods.compact()
    with pytest.raises(Gone):
        ns_watch.watch(rv)
