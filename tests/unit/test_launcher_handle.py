"""``Launcher.handle`` against the real Redis and an in-memory PodApi (``devkit.fakekube``): no apiserver.

Launch and revoke messages are written as the executor writes them (``TaskStore.record_dispatch``
and an XADD of ``messages.encode``), read through the launcher's own consumer and handled one by
one; the pods the launcher made, the calls it sent and what it published are then checked.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from devkit.fakekube import FakePodApi, api_error
from devkit.workloads import DEV_SIGNING_KEYS, signed
from kubestream.keys import LAUNCH_GROUP, Keys
from kubestream.messages import (
    FIELD,
    LaunchTask,
    Message,
    RevokeTask,
    TaskState,
    TaskStateChanged,
    decode,
    encode,
    message_digest,
)
from kubestream.settings import Settings
from kubestream.signing import Signer, new_key, signer_for
from kubestream.store import TaskStore
from kubestream.taskkey import DISPATCH_ANNOTATION, PREFIX_ANNOTATION, TaskKey, key_from_annotations, task_annotations
from kubestream.workers.consumer import Entry, StreamConsumer
from kubestream.workers.launcher import REQUEST_FLOOR_SECONDS, Launcher, ack_now

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
        "reclaim_idle_seconds": "10", "signing_keys": DEV_SIGNING_KEYS,
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
    stream = keys.launch("default")
    pipe.xadd(stream, signed(settings, stream, encode(LaunchTask(key, "default", OWNER, "{}", dispatch_id))))
    pipe.execute()


def send(redis_client: redis.Redis, settings: Settings, message: Message) -> None:
    stream = Keys(settings.key_prefix).launch("default")
    redis_client.xadd(stream, signed(settings, stream, encode(message)))


def handle_all(launcher: Launcher) -> int:
    """Read what is new, handle each entry, acknowledge what settled; returns how many were read."""
    return handle_entries(launcher, launcher.consumer.read_new(100, 10))


def handle_entries(launcher: Launcher, entries: list[Entry]) -> int:
    works = launcher.prepare(entries)
    for work in works:
        launcher.handle(work)
    launcher.consumer.ack(launcher.settled())
    return len(works)


def read_delivered(launcher: Launcher, redis_client: redis.Redis, keys: Keys, times: int) -> list[Entry]:
    """Read what is new, claim it ``times - 2`` times (as launchers that died one after the other did),
    then read it as the launcher's own pending entries (a delivery too): delivered ``times`` times."""
    entries = launcher.consumer.read_new(100, 10)
    for _ in range(times - 2):
        redis_client.xclaim(keys.launch("default"), LAUNCH_GROUP, launcher.name, 0, [e.entry_id for e in entries])
    own = launcher.consumer.own_pending()
    assert [e.deliveries for e in own] == [times] * len(entries)
    return own


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
    assert annotations[PREFIX_ANNOTATION] == settings.key_prefix  # whose it is, in a shared namespace
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


def test_a_pod_kubestream_did_not_launch_holding_the_name_fails_the_task_and_is_left_alone(
        launcher, pods, redis_client, settings, keys) -> None:
    """Pod names are predictable: whoever may create pods in the namespace can take a future task's name with
    a pod of their own. It is neither taken for the task's pod (which would leave the task queued with no pod
    the watcher sees) nor deleted."""
    pods.add(NS, {"metadata": {"name": POD}, "spec": {"containers": [{"name": "x", "image": "squatter"}]}})
    dispatch(redis_client, settings, dispatch_id="d1")
    handle_all(launcher)
    (event,) = results(redis_client, keys)
    assert event.state is TaskState.FAILED
    assert event.reason == "the pod name is held by a pod kubestream did not launch (no dispatch annotation)"
    assert pods.calls_of("delete") == [] and pods.pod(NS, POD)["spec"]["containers"][0]["image"] == "squatter"
    assert pending(redis_client, keys) == 0 and launcher.metrics.snapshot().get("already_exists_total", 0) == 0


def test_a_pod_of_an_earlier_dispatch_is_retried_then_left_for_redelivery(launcher, pods, redis_client, settings,
                                                                          keys) -> None:
    pods.add(NS, pod_of(KEY, "d0"))  # a revoked dispatch's pod, still terminating
    dispatch(redis_client, settings, dispatch_id="d1")
    handle_all(launcher)
    assert len(pods.calls_of("create")) >= 2  # retried within the budget
    assert pods.pod(NS, POD)["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d0"
    assert pending(redis_client, keys) == 1 and launcher.settled() == []  # not settled: redelivered later
    assert results(redis_client, keys) == []


def test_a_launch_this_launcher_would_put_in_another_namespace_than_the_records_fails_with_the_reason(
        launcher, pods, redis_client, settings, keys) -> None:
    """The watcher hears only a pod in the namespace the scheduler recorded: a pod created elsewhere (the
    launchers' namespace settings differ from the scheduler's) would leave the task running for ever."""
    store = TaskStore(redis_client, keys, settings)
    pipe = redis_client.pipeline(transaction=True)
    store.record_dispatch(pipe, KEY, owner=OWNER, queue="default", namespace="elsewhere", dispatch="d1")
    pipe.execute()
    send(redis_client, settings, LaunchTask(KEY, "default", OWNER, "{}", "d1"))
    handle_all(launcher)
    (event,) = results(redis_client, keys)
    assert event.state is TaskState.FAILED and event.reason == (
        f"this launcher would create the pod in namespace {NS!r} but the scheduler recorded 'elsewhere': "
        "their namespace, queue_namespaces or allowed_namespaces differ")
    assert pods.calls_of("create") == [] and pending(redis_client, keys) == 0


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


def test_a_launch_into_a_namespace_the_launcher_does_not_allow_fails_its_task(launcher, pods, redis_client,
                                                                             settings, keys) -> None:
    """The executor refuses such a launch already; a message that asks anyway (another executor's settings,
    a forged record) meets the launcher's own allowed_namespaces: no pod, the task failed with the reason."""
    store = TaskStore(redis_client, keys, settings)
    pipe = redis_client.pipeline(transaction=True)
    store.record_dispatch(pipe, KEY, owner=OWNER, queue="default", namespace="kube-system", dispatch="d1")
    pipe.execute()
    send(redis_client, settings, LaunchTask(KEY, "default", OWNER, "{}", "d1",
                                            pod_override={"metadata": {"namespace": "kube-system"}}))
    handle_all(launcher)
    (event,) = results(redis_client, keys)
    assert event.state is TaskState.FAILED and "pod_override namespace 'kube-system' is not allowed" in event.reason
    assert pods.calls_of("create") == [] and pending(redis_client, keys) == 0 and redis_client.xlen(keys.dead) == 0
    assert launcher.metrics.snapshot()["namespace_refused_total"] == 1


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


def test_a_403_forbidden_that_persists_through_every_delivery_fails_the_task(launcher, pods, redis_client,
                                                                             settings, keys) -> None:
    pods.fail_next("create", *[api_error(403, FORBIDDEN) for _ in range(10_000)])
    dispatch(redis_client, settings)
    handle_all(launcher)  # first delivery: retried for the budget, then left for redelivery
    assert results(redis_client, keys) == [] and pending(redis_client, keys) == 1
    def redeliver() -> list[Entry]:  # this launcher's pending entries read again, as after a restart
        return StreamConsumer(redis_client, [keys.launch("default")], launcher.name, min_idle_ms=1).own_pending()

    (entry,) = redeliver()  # a later delivery, still not the last: left again
    assert entry.deliveries < settings.max_deliveries
    handle_entries(launcher, [entry])
    assert results(redis_client, keys) == [] and pending(redis_client, keys) == 1
    for _ in range(settings.max_deliveries - 3):
        redis_client.xclaim(keys.launch("default"), LAUNCH_GROUP, launcher.name, 0, [entry.entry_id])
    (last,) = redeliver()
    assert last.deliveries == settings.max_deliveries
    handle_entries(launcher, [last])
    (event,) = results(redis_client, keys)
    assert event.key == KEY and event.state is TaskState.FAILED
    assert event.reason.startswith("403 Forbidden: pods is forbidden")
    assert "still denied after 5 deliveries" in event.reason
    assert pods.names(NS) == set() and pending(redis_client, keys) == 0


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
    send(redis_client, settings, RevokeTask(KEY, "default", "stuck in queued", external_executor_id="d1"))
    handle_all(launcher)
    assert pods.pod(NS, POD) is None
    (delete,) = pods.calls_of("delete")
    assert (delete.name, delete.uid, delete.grace_period_seconds) == (POD, uid, 0)
    assert pending(redis_client, keys) == 0
    assert launcher.metrics.snapshot()["revoked_total"] == 1


def test_a_revoke_leaves_a_later_dispatchs_pod_alone(launcher, pods, redis_client, settings, keys) -> None:
    pods.add(NS, pod_of(KEY, "d2"))  # the task was queued again (same try, same pod name) and launched
    send(redis_client, settings, RevokeTask(KEY, "default", "stuck in queued", external_executor_id="d1"))
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
    send(redis_client, settings, RevokeTask(KEY, "default", "stuck in queued", external_executor_id="d1"))
    handle_all(launcher)
    assert [c.uid for c in pods.calls_of("delete")] == [old_uid]  # 409 (precondition), then read again: not ours
    assert pods.pod(NS, POD)["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d2"
    assert pending(redis_client, keys) == 0


# -- past max_deliveries: the pod decides ------------------------------------------------------------


def test_a_launch_past_max_deliveries_whose_pod_exists_is_acknowledged_not_failed(launcher, pods, redis_client,
                                                                                  settings, keys) -> None:
    # an earlier delivery created the pod, then its launcher died before acknowledging, five times over
    pods.add(NS, pod_of(KEY, "d1"))
    dispatch(redis_client, settings, dispatch_id="d1")
    handle_entries(launcher, read_delivered(launcher, redis_client, keys, settings.max_deliveries + 1))
    assert [c.verb for c in pods.calls] == ["get"]  # looked up, not created again
    assert results(redis_client, keys) == [] and redis_client.xlen(keys.dead) == 0
    assert pending(redis_client, keys) == 0
    assert launcher.metrics.snapshot()["already_exists_total"] == 1


@pytest.mark.parametrize("holder", [None, "d0", ""])
def test_a_launch_past_max_deliveries_without_its_pod_is_failed_and_dead_lettered(launcher, pods, redis_client,
                                                                                  settings, keys, holder) -> None:
    if holder is not None:  # the name is held by another dispatch's pod, or by one naming none: not this one's
        pods.add(NS, pod_of(KEY, holder))
    dispatch(redis_client, settings, dispatch_id="d1")
    handle_entries(launcher, read_delivered(launcher, redis_client, keys, settings.max_deliveries + 1))
    (event,) = results(redis_client, keys)
    assert event.state is TaskState.FAILED and event.reason.startswith("launch gave up after 5 deliveries")
    assert ("held by a pod of dispatch d0" in event.reason) == bool(holder)
    assert ("held by a pod kubestream did not launch" in event.reason) == (holder == "")
    assert redis_client.xlen(keys.dead) == 1 and pending(redis_client, keys) == 0
    assert pods.calls_of("create") == []


def test_a_launch_past_max_deliveries_whose_lookup_fails_stays_pending(launcher, pods, redis_client, settings,
                                                                       keys) -> None:
    pods.fail_next("get", *[api_error(503, "etcdserver: leader changed") for _ in range(10_000)])
    dispatch(redis_client, settings, dispatch_id="d1")
    handle_entries(launcher, read_delivered(launcher, redis_client, keys, settings.max_deliveries + 1))
    assert len(pods.calls_of("get")) >= 2 and pods.calls_of("create") == []  # retried within the budget
    assert results(redis_client, keys) == [] and redis_client.xlen(keys.dead) == 0
    assert pending(redis_client, keys) == 1 and launcher.settled() == []  # looked up again at the next delivery


def test_a_launch_past_max_deliveries_of_a_superseded_dispatch_is_skipped(launcher, pods, redis_client, settings,
                                                                          keys) -> None:
    dispatch(redis_client, settings, dispatch_id="d1")
    entries = read_delivered(launcher, redis_client, keys, settings.max_deliveries + 1)
    dispatch(redis_client, settings, dispatch_id="d2")  # requeued meanwhile
    handle_entries(launcher, entries)
    assert pods.calls == [] and results(redis_client, keys) == [] and redis_client.xlen(keys.dead) == 0
    assert launcher.metrics.snapshot()["skipped_total"] == 1


# -- each delivery is bounded by the retry budget ------------------------------------------------------


def test_each_request_gets_no_more_than_what_is_left_of_the_budget(launcher, pods, redis_client, settings,
                                                                  keys) -> None:
    pods.fail_next("create", *[api_error(503) for _ in range(3)])
    dispatch(redis_client, settings)
    handle_all(launcher)
    assert pods.pod(NS, POD) is not None
    reads = [c.timeout[1] for c in pods.calls_of("create") if c.timeout is not None]
    assert len(reads) == 4, pods.calls
    assert all(REQUEST_FLOOR_SECONDS <= t <= settings.retry_budget_seconds for t in reads)
    assert reads == sorted(reads, reverse=True)  # each attempt gets what is left


def test_an_entry_whose_budget_ran_out_before_it_was_handled_is_left_pending_without_a_request(
        launcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings)
    # the entry waited in hand (create threads busy) for longer than its budget since it was read
    (entry,) = launcher.consumer.read_new(10, 10)
    stale = dataclasses.replace(entry, read_at=time.monotonic() - settings.retry_budget_seconds - 1)
    handle_entries(launcher, [stale])
    assert pods.calls == []
    assert pending(redis_client, keys) == 1 and launcher.settled() == []
    assert launcher.metrics.snapshot()["released_total"] == 1


def test_the_rate_limiters_wait_ends_at_the_budgets_deadline(settings, redis_client, pods, keys) -> None:
    slow = dataclasses.replace(settings, create_rate=0.001, create_burst=1)  # one token per 1000 s
    launcher = Launcher(slow, redis_client, None, name="test-launcher", pods=pods)
    launcher.consumer.ensure_groups()
    assert launcher.limiter.take() == 0  # the only token is gone
    dispatch(redis_client, settings)
    done = threading.Event()

    def handle() -> None:
        handle_all(launcher)
        done.set()

    threading.Thread(target=handle, daemon=True).start()
    try:
        assert done.wait(60), "the launch waited for a token past its budget"
    finally:
        launcher.stop()  # ends a wait that would have gone on
    assert pods.calls == []
    assert pending(redis_client, keys) == 1 and launcher.settled() == []
    assert launcher.metrics.snapshot()["released_total"] == 1


# -- an earlier dispatch's pod holds the name ------------------------------------------------------------


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_finished_pod_of_an_earlier_dispatch_is_replaced_by_this_dispatchs_pod(launcher, pods, redis_client,
                                                                                 settings, keys, phase) -> None:
    # a reschedule-mode sensor: its first poke's pod ended and was kept (delete_worker_pods=False); the
    # second poke is a new dispatch of the same try, hence the same pod name
    old_uid = pods.add(NS, pod_of(KEY, "d1"))["metadata"]["uid"]
    pods.set_phase(NS, POD, phase)
    dispatch(redis_client, settings, dispatch_id="d2")
    handle_all(launcher)
    (delete,) = pods.calls_of("delete")
    assert (delete.uid, delete.grace_period_seconds) == (old_uid, 0)
    pod = pods.pod(NS, POD)
    assert pod is not None and pod["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d2"
    assert pod["metadata"]["uid"] != old_uid
    assert pending(redis_client, keys) == 0 and results(redis_client, keys) == []
    snapshot = launcher.metrics.snapshot()
    assert snapshot["replaced_finished_total"] == 1 and snapshot["created_total"] == 1


def test_a_finished_pod_replaced_between_the_read_and_the_delete_is_not_deleted(launcher, pods, redis_client,
                                                                                settings, keys) -> None:
    old_uid = pods.add(NS, pod_of(KEY, "d1"))["metadata"]["uid"]
    pods.set_phase(NS, POD, "Succeeded")

    def replace() -> None:  # another launcher replaced it first, with this dispatch's pod
        pods.remove(NS, POD)
        pods.add(NS, pod_of(KEY, "d2"))

    pods.on_next("delete", replace)
    dispatch(redis_client, settings, dispatch_id="d2")
    handle_all(launcher)
    assert [c.uid for c in pods.calls_of("delete")] == [old_uid]  # 409 (precondition): nothing deleted
    assert pods.pod(NS, POD)["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d2"
    assert pending(redis_client, keys) == 0 and launcher.metrics.snapshot()["already_exists_total"] == 1


def test_a_launch_superseded_after_its_verdict_leaves_the_newer_dispatchs_pod_alone(launcher, pods, redis_client,
                                                                                    settings, keys) -> None:
    dispatch(redis_client, settings, dispatch_id="d1")
    works = launcher.prepare(launcher.consumer.read_new(10, 10))  # d1 may go ahead...
    dispatch(redis_client, settings, dispatch_id="d2")  # ...then the task is requeued, launched and done
    pods.add(NS, pod_of(KEY, "d2"))
    pods.set_phase(NS, POD, "Succeeded")
    for work in works:
        launcher.handle(work)
    launcher.consumer.ack(launcher.settled())
    assert pods.calls_of("delete") == []
    assert pods.pod(NS, POD)["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d2"
    assert pending(redis_client, keys) == 0 and launcher.metrics.snapshot()["skipped_total"] == 1


# -- a reclaimed launch whose task already finished ------------------------------------------------------


@pytest.mark.parametrize("state", [TaskState.SUCCEEDED, TaskState.FAILED])
def test_a_reclaimed_launch_whose_task_already_finished_creates_no_pod(launcher, pods, redis_client, settings,
                                                                       keys, state) -> None:
    dispatch(redis_client, settings, dispatch_id="d1")
    (entry,) = launcher.consumer.read_new(10, 10)
    # meanwhile another launcher created the pod, the task ran, the watcher published its end and
    # deleted the pod; this launcher held the entry all along (or reclaims it now)
    store = TaskStore(redis_client, keys, settings)
    end = TaskStateChanged(KEY, state, "", POD, NS, time.time())
    assert store.publish(end, "d1").published
    handle_entries(launcher, [entry])
    assert pods.calls == []
    assert pending(redis_client, keys) == 0
    assert launcher.metrics.snapshot()["skipped_total"] == 1


def test_a_later_dispatch_of_a_finished_task_is_launched(launcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings, dispatch_id="d1")
    store = TaskStore(redis_client, keys, settings)
    assert store.publish(TaskStateChanged(KEY, TaskState.SUCCEEDED, "", POD, NS, time.time()), "d1").published
    dispatch(redis_client, settings, dispatch_id="d2")  # e.g. the next poke of a reschedule-mode sensor
    handle_all(launcher)
    assert pods.pod(NS, POD)["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d2"
    assert pending(redis_client, keys) == 0


# -- the consumer ----------------------------------------------------------------------------------------


def test_own_pending_entries_come_back_a_batch_at_a_time_with_their_counts(launcher, redis_client, settings,
                                                                           keys) -> None:
    for i in range(5):
        dispatch(redis_client, settings, TaskKey("dag", f"t{i}", "run-1", 1))
    first = launcher.consumer.read_new(10, 10)  # delivered once, then this launcher "restarts"
    redis_client.xclaim(keys.launch("default"), LAUNCH_GROUP, launcher.name, 0, [first[0].entry_id])
    restarted = Launcher(settings, redis_client, None, name=launcher.name, pods=FakePodApi())
    batches = [restarted.consumer.own_pending(2) for _ in range(4)]
    assert [len(b) for b in batches] == [2, 2, 1, 0]
    assert [e.entry_id for b in batches for e in b] == [e.entry_id for e in first]
    assert [e.deliveries for b in batches for e in b] == [3, 2, 2, 2, 2]  # reading them again is a delivery


FORGED_OVERRIDE = {  # the review's pod: a node takeover
    "spec": {
        "hostNetwork": True, "hostPID": True, "hostIPC": True, "nodeName": "node-1",
        "serviceAccountName": "cluster-admin-sa",
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [{"name": "base", "image": "evil/img", "command": ["nsenter", "-t", "1", "-m", "sh"],
                        "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
                        "volumeMounts": [{"name": "root", "mountPath": "/host"}]}],
    },
}


def test_a_pod_the_policy_refuses_fails_its_task_naming_the_rules(launcher, pods, redis_client, settings,
                                                                   keys) -> None:
    store = TaskStore(redis_client, keys, settings)
    pipe = redis_client.pipeline(transaction=True)
    store.record_dispatch(pipe, KEY, owner=OWNER, queue="default", namespace=NS, dispatch="d1")
    stream = keys.launch("default")
    pipe.xadd(stream, signed(settings, stream, encode(LaunchTask(KEY, "default", OWNER, "{}", "d1",
                                                                 pod_override=FORGED_OVERRIDE))))
    pipe.execute()
    handle_all(launcher)
    assert pods.calls_of("create") == [] and pods.names(NS) == set()
    (event,) = results(redis_client, keys)
    assert event.state is TaskState.FAILED and event.reason.startswith("pod refused by pod_policy:")
    for rule in ("privileged", "hostNetwork", "hostPath", "nodeName", "capabilities", "serviceAccount"):
        assert rule in event.reason, rule
    assert redis_client.xlen(keys.dead) == 0 and pending(redis_client, keys) == 0


def test_the_queue_and_namespace_come_from_the_stream_not_the_message(pods, redis_client, settings, keys) -> None:
    settings = Settings.from_mapping({**settings.to_env(""), "queue_namespaces": "gpu=gpu-pool"}, source="")
    launcher = Launcher(settings, redis_client, None, name="test-launcher", pods=pods)
    launcher.consumer.ensure_groups()
    store = TaskStore(redis_client, keys, settings)
    pipe = redis_client.pipeline(transaction=True)
    store.record_dispatch(pipe, KEY, owner=OWNER, queue="default", namespace=NS, dispatch="d1")
    # written to the default queue's stream, claiming a queue that maps to another namespace
    stream = keys.launch("default")
    pipe.xadd(stream, signed(settings, stream, encode(LaunchTask(KEY, "gpu", OWNER, "{}", "d1"))))
    pipe.execute()
    handle_all(launcher)
    launcher.stop()
    assert pods.names(NS) == {POD} and pods.names("gpu-pool") == set()
    assert {c.namespace for c in pods.calls_of("create")} == {NS}


# -- signed messages ----------------------------------------------------------------------------------------


def _launcher_with(settings: Settings, redis_client: redis.Redis, pods: FakePodApi, keys_text: str) -> Launcher:
    launcher = Launcher(Settings.from_mapping({**settings.to_env(""), "signing_keys": keys_text}, source=""),
                        redis_client, None, name="test-launcher", pods=pods)
    launcher.consumer.ensure_groups()
    return launcher


def test_the_reviews_forged_launch_written_straight_to_redis_creates_no_pod(launcher, pods, redis_client, settings,
                                                                             keys) -> None:
    stream = keys.launch("default")
    forged = encode(LaunchTask(KEY, "default", OWNER, '{"token": "eyJ.stolen.jwt"}', "d1",
                               pod_override=FORGED_OVERRIDE))
    redis_client.xadd(stream, {FIELD: forged})  # no record needed, no signature
    handle_all(launcher)
    assert pods.calls_of("create") == [] and results(redis_client, keys) == []  # nothing created, nothing failed
    (dead,) = redis_client.xrange(keys.dead)
    assert dead[1][b"reason"] == b"signature: unsigned message"
    assert b"stolen" not in dead[1][b"m"] and b"<redacted>" in dead[1][b"m"]  # no token at rest
    assert launcher.metrics.snapshot()["refused_messages_total"] == 1 and pending(redis_client, keys) == 0


def test_a_copy_of_the_schedulers_launch_without_its_signature_fails_nothing(launcher, pods, redis_client, settings,
                                                                              keys) -> None:
    """Whoever can read and write a launch stream can add the genuine message again without its signature:
    its digest is the record's, but the record also keeps the id of the entry the scheduler wrote."""
    stream = keys.launch("default")
    raw = encode(LaunchTask(KEY, "default", OWNER, "{}", "d1"))
    redis_client.xadd(stream, {FIELD: raw}, id="1-1")  # read first
    pipe = redis_client.pipeline(transaction=True)
    TaskStore(redis_client, keys, settings, signer_for(settings)).dispatch(
        pipe, KEY, owner=OWNER, queue="default", namespace=NS, dispatch="d1", stream=stream, message=raw)
    pipe.execute()
    handle_all(launcher)
    assert results(redis_client, keys) == [] and pods.names(NS) == {POD}  # the genuine entry launched it
    (dead,) = redis_client.xrange(keys.dead)
    assert dead[1][b"reason"] == b"signature: unsigned message" and dead[1][b"entry"] == b"1-1"
    assert pending(redis_client, keys) == 0


def test_a_message_signed_with_a_rotated_out_key_is_refused_and_either_current_key_accepted(
        pods, redis_client, settings, keys) -> None:
    old, new, older = (f"{name}={new_key()}" for name in ("old", "new", "older"))
    launcher = _launcher_with(settings, redis_client, pods, f"{new},{old}")  # mid-rotation: new signs, both verify
    stream = keys.launch("default")
    for i, signer_keys in enumerate((old, new, older)):
        key = TaskKey("dag", f"t{i}", "run-1", 1)
        raw = encode(LaunchTask(key, "default", OWNER, "{}", "d1"))
        store = TaskStore(redis_client, keys, settings)
        pipe = redis_client.pipeline(transaction=True)
        store.record_dispatch(pipe, key, owner=OWNER, queue="default", namespace=NS, dispatch="d1",
                              digest=message_digest(raw))
        pipe.xadd(stream, Signer.parse(signer_keys).sign(stream, raw))
        pipe.execute()
    handle_all(launcher)
    launcher.stop()
    assert pods.names(NS) == {TaskKey("dag", "t0", "run-1", 1).pod_name(), TaskKey("dag", "t1", "run-1", 1).pod_name()}
    (dead,) = redis_client.xrange(keys.dead)
    assert dead[1][b"reason"] == b"signature: signed with unknown key id 'older'"
    # the record proves the refused message was the executor's own (its digest): the task fails, not hangs
    (event,) = results(redis_client, keys)
    assert event.key == TaskKey("dag", "t2", "run-1", 1) and event.state is TaskState.FAILED
    assert event.reason == "launch message refused: signature: signed with unknown key id 'older'"


def test_a_launch_over_the_size_cap_is_dead_lettered_at_read(pods, redis_client, settings, keys) -> None:
    launcher = Launcher(Settings.from_mapping({**settings.to_env(""), "max_message_bytes": "2048"}, source=""),
                        redis_client, None, name="test-launcher", pods=pods)
    launcher.consumer.ensure_groups()
    stream = keys.launch("default")
    raw = encode(LaunchTask(KEY, "default", OWNER, "{}", "d1", pod_override={"metadata": {"annotations": {
        "blob": "x" * 5000}}}))
    redis_client.xadd(stream, signed(settings, stream, raw))
    handle_all(launcher)
    launcher.stop()
    assert pods.calls_of("create") == []
    (dead,) = redis_client.xrange(keys.dead)
    assert dead[1][b"reason"].startswith(b"size: ") and b"over max_message_bytes=2048" in dead[1][b"reason"]


def test_ack_settles_a_batch_spread_over_several_streams_and_nothing_else(redis_client, keys) -> None:
    streams = [keys.launch("default", 100), keys.launch("default")]  # a priority band's stream and the plain one
    consumer = StreamConsumer(redis_client, streams, "acker-test", min_idle_ms=60_000)
    consumer.ensure_groups()
    for stream in streams:  # the same entry ids in both streams: an id names an entry only with its stream
        for i in range(1, 4):
            redis_client.xadd(stream, {"m": f"{stream}-{i}"}, id=f"1-{i}")
    read = consumer.read_new(10, block_ms=10)
    assert [(e.stream, e.entry_id) for e in read] == [(s, f"1-{i}") for s in streams for i in range(1, 4)]
    kept = [read[0], read[-1]]  # one entry of each stream
    consumer.ack(read[1:-1])
    assert [redis_client.xlen(s) for s in streams] == [1, 1]  # acknowledged entries deleted, one per stream kept
    assert sum(redis_client.xpending(s, LAUNCH_GROUP)["pending"] for s in streams) == 2
    consumer.ack([])
    consumer.ack(kept)
    assert [redis_client.xlen(s) for s in streams] == [0, 0] and consumer.nothing_pending()


@pytest.mark.parametrize("settled, in_flight, stopping, now", [
    (0, 0, False, False),  # nothing to acknowledge
    (0, 5, True, False),
    (1, 5, False, False),  # creates still in flight: linger, they join the same round trip
    (15, 16, False, False),
    (16, 16, False, True),  # a batch's worth: at once
    (40, 16, False, True),
    (1, 0, False, True),  # nothing else in flight: nothing to wait for
    (1, 5, True, True),  # stopping: at once
])
def test_the_acker_lingers_only_while_creates_can_still_join_the_batch(settled, in_flight, stopping, now) -> None:
    assert ack_now(settled, in_flight, batch=16, stopping=stopping) is now
