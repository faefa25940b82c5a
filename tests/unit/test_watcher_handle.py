"""``Watcher.handle`` (and one namespace's relist and watch, and the whole watcher running in a thread)
against the real Redis and an in-memory PodApi (``devkit.fakekube``): no apiserver.

Task records are written as the executor writes them (``TaskStore.record_dispatch``), pods as a
launcher made them; the pods then move on as a kubelet would move them (``set_phase``), and each
event is handed to the watcher. Every delete the watcher makes must carry the pod's uid as a
precondition (checked when each test ends).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
import redis

from devkit.fakekube import Call, FakePodApi, api_error
from devkit.procs import wait_for
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.keys import Keys
from kubestream.kubeapi import Gone
from kubestream.luascripts import Script
from kubestream.messages import FIELD, TaskState, TaskStateChanged, decode
from kubestream.settings import Settings
from kubestream.store import TaskStore
from kubestream.taskkey import DISPATCH_ANNOTATION, MANAGED_LABEL, PREFIX_ANNOTATION, TaskKey, task_annotations
from kubestream.watcher.watcher import GIVE_UP_AFTER, Deposed, NamespaceWatch, Term, Watcher, WatcherFailed

NS = "tasks"
OWNER = "sched-a"
KEY = TaskKey("dag", "task", "run-1", 1)
POD = KEY.pod_name()


@pytest.fixture
def settings(redis_server, key_prefix: str) -> Settings:
    """No cluster (this module's own ``settings``, not the cluster-bound one)."""
    return Settings.from_mapping({"redis_url": redis_server.url, "key_prefix": key_prefix, "namespace": NS,
                                  "scheduler_id": OWNER, "signing_keys": DEV_SIGNING_KEYS})


@pytest.fixture
def pods() -> Iterator[FakePodApi]:
    """Watches end 0.2 s after their last event (as at a server timeout), so a running watcher does not spin."""
    fake = FakePodApi(watch_idle_seconds=0.2)
    yield fake
    assert all(call.uid for call in fake.calls_of("delete")), "every delete carries a uid precondition"


@pytest.fixture
def watcher(settings: Settings, redis_client: redis.Redis, pods: FakePodApi) -> Iterator[Watcher]:
    """A watcher holding the lease (its writes are fenced by it)."""
    watcher = Watcher(settings, redis_client, None, name="test-watcher", pods=pods)
    assert watcher.try_lead() is not None
    yield watcher
    watcher.close()


def dispatch(redis_client: redis.Redis, settings: Settings, key: TaskKey = KEY, dispatch_id: str = "d1") -> None:
    """The task's record, as the executor's ``_process_workloads`` writes it."""
    store = TaskStore(redis_client, Keys(settings.key_prefix), settings)
    pipe = redis_client.pipeline(transaction=True)
    store.record_dispatch(pipe, key, owner=OWNER, queue="default", namespace=NS, dispatch=dispatch_id)
    pipe.execute()


def launched(pods: FakePodApi, key: TaskKey = KEY, dispatch_id: str | None = "d1", name: str = "") -> dict:
    """The task's pod, as a launcher of dispatch ``dispatch_id`` created it (Pending); no dispatch
    annotation when None, and another name than the task's when given."""
    dispatched = {DISPATCH_ANNOTATION: dispatch_id} if dispatch_id is not None else {}
    return pods.add(NS, {
        "metadata": {"name": name or key.pod_name(), "labels": {MANAGED_LABEL: "true"},
                     "annotations": {**task_annotations(key), **dispatched}},
        "spec": {"containers": [{"name": "base", "image": "img"}]}})


def results(redis_client: redis.Redis, keys: Keys) -> list[tuple[TaskKey, TaskState, str]]:
    out = []
    for _, fields in redis_client.xrange(keys.results(OWNER)):
        event = decode(fields[FIELD])
        assert isinstance(event, TaskStateChanged)
        out.append((event.key, event.state, event.reason))
    return out


def leading(watcher: Watcher) -> Term:
    term = watcher.try_lead()
    assert term is not None, "the watcher leads"
    return term


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
    rv = NamespaceWatch(watcher, NS, leading(watcher)).relist()
    assert results(redis_client, keys) == [
        (vanished, TaskState.RUNNING, ""),
        (current, TaskState.RUNNING, ""),
        (vanished, TaskState.FAILED, "pod deleted while running"),
    ]
    assert redis_client.get(keys.resource_version(NS)) == rv.encode()
    assert redis_client.smembers(keys.live) == {f"{NS}/{current.pod_name()}/d1".encode()}


def test_a_watch_publishes_the_changes_after_its_checkpoint_and_an_expired_one_is_gone(
        watcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings)
    launched(pods)
    ns_watch = NamespaceWatch(watcher, NS, leading(watcher))
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


# -- 1. the dispatch id travels through every publish ------------------------------------------


def test_vanished_relist_never_fails_a_newer_dispatch_of_the_same_pod_name(watcher, pods, redis_client, settings,
                                                                           keys) -> None:
    dispatch(redis_client, settings, dispatch_id="d1")
    launched(pods, dispatch_id="d1")
    watcher.handle(pods.set_phase(NS, POD, "Running"), "MODIFIED")
    pods.remove(NS, POD)  # d1's pod is deleted while no watcher watches...
    dispatch(redis_client, settings, dispatch_id="d2")  # ...and the task is queued again (stuck-in-queued requeue,
    # a reschedule-mode sensor, a deferral resume): same try, same pod name, its pod not created yet
    NamespaceWatch(watcher, NS, leading(watcher)).relist()
    assert results(redis_client, keys) == [(KEY, TaskState.RUNNING, "")]  # d2 is not failed for d1's pod
    assert redis_client.scard(keys.live) == 0  # d1 is done with
    launched(pods, dispatch_id="d2")
    watcher.handle(pods.pod(NS, POD), "ADDED")
    assert results(redis_client, keys)[1:] == [(KEY, TaskState.PENDING, "")]
    assert redis_client.smembers(keys.live) == {f"{NS}/{POD}/d2".encode()}


def test_a_relist_seeing_the_newer_dispatchs_pod_drops_the_older_live_member_and_fails_nobody(
        watcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings, dispatch_id="d1")
    launched(pods, dispatch_id="d1")
    watcher.handle(pods.set_phase(NS, POD, "Running"), "MODIFIED")
    pods.remove(NS, POD)
    dispatch(redis_client, settings, dispatch_id="d2")
    launched(pods, dispatch_id="d2")
    NamespaceWatch(watcher, NS, leading(watcher)).relist()
    assert results(redis_client, keys) == [(KEY, TaskState.RUNNING, ""), (KEY, TaskState.PENDING, "")]
    assert redis_client.smembers(keys.live) == {f"{NS}/{POD}/d2".encode()}


# -- 2. the watcher trusts only its own pods; deletes carry uid preconditions -------------------


def test_a_pod_whose_name_is_not_its_tasks_pod_name_is_ignored_with_a_warning(watcher, pods, redis_client, settings,
                                                                             keys, caplog) -> None:
    dispatch(redis_client, settings)
    launched(pods, name="impostor")  # the annotations of KEY on a pod of another name
    watcher.handle(pods.pod(NS, "impostor"), "ADDED")
    watcher.handle(pods.set_phase(NS, "impostor", "Succeeded"), "MODIFIED")
    watcher.close()
    assert results(redis_client, keys) == [] and pods.calls_of("delete") == []
    assert pods.pod(NS, "impostor") is not None
    assert "ignored a pod whose name is not its task's pod name" in caplog.text
    assert watcher.metrics.snapshot()["foreign_pods_total"] == 2


def test_a_look_alike_pod_in_another_namespace_never_speaks_for_the_task(watcher, pods, redis_client, settings,
                                                                         keys) -> None:
    """Whoever may create pods in another namespace the watcher serves can copy the task pod's name, labels
    and annotations (its dispatch included, which the real pod shows): the record names the namespace the
    scheduler chose, and only a pod there speaks for the task."""
    dispatch(redis_client, settings)
    real = launched(pods)
    look_alike = pods.add("other", {"metadata": {**real["metadata"], "namespace": "other"}, "spec": real["spec"]})
    pods.set_phase("other", POD, "Failed", **exit_code(1))
    watcher.handle(pods.pod("other", POD), "MODIFIED")
    assert results(redis_client, keys) == [] and "state" not in redis_client.hgetall(keys.task(POD))
    assert look_alike["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d1"
    pods.set_phase(NS, POD, "Running")
    watcher.handle(pods.pod(NS, POD), "MODIFIED")
    assert results(redis_client, keys) == [(KEY, TaskState.RUNNING, "")]


def test_a_pod_without_a_dispatch_annotation_never_speaks_for_a_dispatched_task(watcher, pods, redis_client,
                                                                                settings, keys) -> None:
    dispatch(redis_client, settings, dispatch_id="d2")
    uid = launched(pods, dispatch_id=None)["metadata"]["uid"]
    watcher.handle(pods.set_phase(NS, POD, "Succeeded"), "MODIFIED")
    watcher.close()
    assert results(redis_client, keys) == []
    assert [(d.name, d.uid) for d in pods.calls_of("delete")] == [(POD, uid)]  # not d2's: deleted by its uid


def test_an_old_pods_late_event_never_publishes_for_or_deletes_the_new_pod(watcher, pods, redis_client, settings,
                                                                           keys) -> None:
    dispatch(redis_client, settings, dispatch_id="d1")
    old_uid = launched(pods, dispatch_id="d1")["metadata"]["uid"]
    watcher.handle(pods.set_phase(NS, POD, "Running"), "MODIFIED")
    late = pods.set_phase(NS, POD, "Succeeded")  # its event is not handled yet
    pods.remove(NS, POD)
    dispatch(redis_client, settings, dispatch_id="d2")
    new_uid = launched(pods, dispatch_id="d2")["metadata"]["uid"]
    watcher.handle(late, "MODIFIED")
    watcher.close()
    assert results(redis_client, keys) == [(KEY, TaskState.RUNNING, "")]
    assert [d.uid for d in pods.calls_of("delete")] == [old_uid]  # answered 409: precondition failed
    assert pods.pod(NS, POD)["metadata"]["uid"] == new_uid


def test_a_pod_without_a_uid_is_never_deleted(watcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings)
    launched(pods)
    succeeded = pods.set_phase(NS, POD, "Succeeded")
    del succeeded["metadata"]["uid"]  # an event the delete could not be made conditional on
    watcher.handle(succeeded, "MODIFIED")
    watcher.close()
    assert results(redis_client, keys) == [(KEY, TaskState.SUCCEEDED, "")]
    assert pods.calls_of("delete") == [] and pods.pod(NS, POD) is not None


# -- 3. a namespace's watch never dies quietly --------------------------------------------------


class Running:
    """``watcher.run()`` in a thread; ``error`` is what it raised."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="watcher-under-test", daemon=True)

    def _run(self) -> None:
        try:
            self.watcher.run()
        except BaseException as exc:  # noqa: BLE001 - kept for the test's assertions
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watcher.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the watcher stopped"


def errors(watcher: Watcher) -> float:
    return watcher.metrics.snapshot().get("watch_errors_total", 0)


def test_a_redis_error_reading_the_checkpoint_is_retried_and_the_namespace_watched_after_all(
        settings, pods, redis_client, keys) -> None:
    redis_client.hset(keys.resource_version(NS), "not", "a string")  # reading the checkpoint fails: WRONGTYPE
    dispatch(redis_client, settings)
    launched(pods)
    watcher = Watcher(settings, redis_client, None, name="w", pods=pods)
    with Running(watcher) as run:
        wait_for(lambda: errors(watcher) >= 2, timeout=30, what="the checkpoint read retried")
        assert watcher.leading and results(redis_client, keys) == []
        redis_client.delete(keys.resource_version(NS))
        wait_for(lambda: results(redis_client, keys) == [(KEY, TaskState.PENDING, "")], timeout=30,
                 what="the namespace listed once Redis answers")
        pods.set_phase(NS, POD, "Running")
        wait_for(lambda: len(results(redis_client, keys)) == 2, timeout=30, what="the namespace watched")
    assert run.error is None


@pytest.mark.parametrize("error", [ValueError("an answer that cannot be read"), api_error(401, "Unauthorized")],
                         ids=["unexpected", "401"])
def test_a_watch_that_cannot_go_on_gives_the_lease_up_and_stops_the_watcher(settings, pods, redis_client, keys,
                                                                             error: Exception) -> None:
    pods.fail_next("list", *[error] * GIVE_UP_AFTER)
    watcher = Watcher(settings, redis_client, None, name="w", pods=pods)
    with Running(watcher) as run:
        run.thread.join(timeout=60)
        assert not run.thread.is_alive(), "the watcher stopped on its own"
    assert isinstance(run.error, WatcherFailed) and run.error.__cause__ is error
    assert redis_client.get(keys.watcher_lease) is None  # given up: a standby takes over at once
    assert len(pods.calls_of("list")) == GIVE_UP_AFTER  # retried with backoff before giving up


def test_transient_api_errors_are_retried_for_as_long_as_they_last(settings, pods, redis_client, keys) -> None:
    pods.fail_next("list", *[api_error(503)] * (GIVE_UP_AFTER + 1))
    dispatch(redis_client, settings)
    launched(pods)
    watcher = Watcher(settings, redis_client, None, name="w", pods=pods)
    with Running(watcher) as run:
        wait_for(lambda: results(redis_client, keys) == [(KEY, TaskState.PENDING, "")], timeout=60,
                 what="the namespace listed once the API answers")
    assert run.error is None and errors(watcher) == GIVE_UP_AFTER + 1


def test_a_leader_whose_watch_is_refused_for_ever_reports_unhealthy_until_the_api_answers_again(
        settings, pods, redis_client, keys) -> None:
    """A 403 after an RBAC change (or a CA no longer trusted) is retried for as long as it lasts, while the
    lease is kept: the health key must not stay green while nothing is published."""
    quick = Settings.from_mapping({**settings.to_env(""), "health_ttl_seconds": "2", "lease_seconds": "1"},
                                  source="")
    forbidden = api_error(403, 'pods is forbidden: User "system:serviceaccount:ks:watcher" cannot list resource '
                               '"pods" in the namespace "tasks"', reason="Forbidden")
    allowed = threading.Event()  # refused until the test allows it (an RBAC fix)

    def refuse() -> None:
        if not allowed.is_set():
            raise forbidden

    for _ in range(1000):
        pods.on_next("list", refuse)
    dispatch(redis_client, settings)
    launched(pods)
    watcher = Watcher(quick, redis_client, None, name="w", pods=pods)
    with Running(watcher) as run:
        wait_for(lambda: errors(watcher) >= 3 and not watcher.heartbeat.healthy(), timeout=30,
                 what="the leader reported unhealthy while its list is refused")
        wait_for(lambda: not redis_client.exists(keys.health("watcher", "w")), timeout=30,
                 what="its health key expired (--check fails)")
        assert watcher.leading and results(redis_client, keys) == []
        allowed.set()
        wait_for(lambda: results(redis_client, keys) == [(KEY, TaskState.PENDING, "")], timeout=60,
                 what="the namespace listed once the API answers")
        wait_for(watcher.heartbeat.healthy, timeout=30, what="healthy again")
    assert run.error is None


# -- 4. fencing ---------------------------------------------------------------------------------


def test_two_watchers_of_one_name_never_both_lead(settings, pods, redis_client, keys) -> None:
    first = Watcher(settings, redis_client, None, name="same", pods=pods)
    second = Watcher(settings, redis_client, None, name="same", pods=pods)
    assert first.try_lead() is not None
    assert first.try_lead() is not None and first.leading  # renewed
    assert second.try_lead() is not None  # taken for a restart of the same watcher: it takes over at once
    assert first.try_lead() is None and not first.leading  # the first one is fenced out
    dispatch(redis_client, settings)
    launched(pods)
    with pytest.raises(Deposed):  # and writes nothing
        first.handle(pods.pod(NS, POD), "ADDED")
    assert results(redis_client, keys) == []
    for _ in range(3):  # and they do not take the lease from each other back and forth
        assert first.try_lead() is None and second.try_lead() is not None


def test_a_restarted_watcher_of_the_same_name_leads_at_once(settings, pods, redis_client, keys) -> None:
    old = Watcher(settings, redis_client, None, name="same", pods=pods)
    assert old.try_lead() is not None  # then it is killed: its lease would take lease_seconds to expire
    other = Watcher(settings, redis_client, None, name="other", pods=pods)
    assert other.try_lead() is None  # another name waits for it
    restarted = Watcher(settings, redis_client, None, name="same", pods=pods)
    term = restarted.try_lead()
    assert term is not None and term.fence.epoch == 2
    assert old.try_lead() is None and not old.leading


def test_a_standby_relists_from_its_warm_list_when_it_takes_over_without_a_checkpoint(
        settings, pods, redis_client, keys) -> None:
    dispatch(redis_client, settings)
    launched(pods)
    leader = Watcher(settings, redis_client, None, name="leader", pods=pods)
    assert leader.try_lead() is not None  # a leader that dies before its first checkpoint
    standby = Watcher(settings, redis_client, None, name="standby", pods=pods)
    with Running(standby):
        wait_for(lambda: pods.calls_of("watch"), timeout=30, what="the standby's warm list watching")
        pods.set_phase(NS, POD, "Running")  # seen by the warm list's watch only
        lists = len(pods.calls_of("list"))
        redis_client.delete(keys.watcher_lease)  # the leader's lease expired
        wait_for(lambda: results(redis_client, keys) == [(KEY, TaskState.RUNNING, "")], timeout=30,
                 what="the takeover's relist")
        # counted once the relist has also checked for vanished pods and checkpointed
        snapshot = wait_for(lambda: "relists_warm_total" in (s := standby.metrics.snapshot()) and s, timeout=30,
                            what="the relist counted")
        assert snapshot["relists_warm_total"] == 1 and "relists_api_total" not in snapshot
        assert len(pods.calls_of("list")) == lists + 1  # the one limit=1 list reading the current resourceVersion


def test_a_warm_list_that_lags_is_not_trusted_for_the_takeover(settings, pods, redis_client, keys) -> None:
    dispatch(redis_client, settings)
    launched(pods)
    leader = Watcher(settings, redis_client, None, name="leader", pods=pods)
    assert leader.try_lead() is not None
    standby = Watcher(settings, redis_client, None, name="standby", pods=pods)
    pods.fail_next("watch", *[api_error(503)] * 1000)  # the warm list lists once, then cannot follow
    with Running(standby):
        wait_for(lambda: len(pods.calls_of("watch")) > 1, timeout=30, what="the warm list's watch failing")
        pods.set_phase(NS, POD, "Running")  # the warm list does not see it
        redis_client.delete(keys.watcher_lease)
        # from a stale copy the pod would be published Pending; listed from the apiserver it is Running
        wait_for(lambda: results(redis_client, keys) == [(KEY, TaskState.RUNNING, "")], timeout=30,
                 what="the takeover's relist from the apiserver")
        # counted once the relist has also checked for vanished pods and checkpointed
        snapshot = wait_for(lambda: "relists_api_total" in (s := standby.metrics.snapshot()) and s, timeout=30,
                            what="the relist counted")
        assert snapshot["relists_api_total"] == 1 and "relists_warm_total" not in snapshot


def test_a_pod_of_another_kubestream_in_the_namespace_is_neither_published_nor_deleted(
        watcher, pods, redis_client, settings, keys) -> None:
    """Another team's (or deployment's) kubestream shares the namespace: its pods are left alone, even one
    whose task key is the same as one of ours."""
    dispatch(redis_client, settings)
    theirs = launched(pods)
    pods.remove(NS, theirs["metadata"]["name"])
    theirs["metadata"]["annotations"][PREFIX_ANNOTATION] = f"{settings.key_prefix}.other"
    pods.add(NS, theirs)
    pod = pods.set_phase(NS, POD, "Succeeded")
    assert watcher.handle(pod, "MODIFIED") is None  # returned before any publish or delete
    assert results(redis_client, keys) == [] and pods.calls_of("delete") == []
    ours = dict(pod, metadata={**pod["metadata"], "annotations": {
        **pod["metadata"]["annotations"], PREFIX_ANNOTATION: settings.key_prefix}})
    assert watcher.handle(ours, "MODIFIED") is not None  # one of ours (or without the annotation) is handled
    assert results(redis_client, keys) == [(KEY, TaskState.SUCCEEDED, "")]


def take_over(redis_client: redis.Redis, keys: Keys) -> None:
    """Another process takes the lease through the lease script, as after the leader paused past its lease."""
    redis_client.delete(keys.watcher_lease)  # expired
    assert Script(redis_client, "lease_renew.lua")(lease=keys.watcher_lease, fence=keys.watcher_fence,
                                                   holder="other", token="other-token", epoch="0", ms=60000,
                                                   resume="0")


def test_a_leader_whose_lease_was_taken_over_has_its_next_publish_refused_and_stops_leading(
        watcher, pods, redis_client, settings, keys) -> None:
    dispatch(redis_client, settings)
    launched(pods)
    watcher.handle(pods.pod(NS, POD), "ADDED")
    take_over(redis_client, keys)
    with pytest.raises(Deposed):
        watcher.handle(pods.set_phase(NS, POD, "Succeeded"), "MODIFIED")
    watcher.close()
    assert not watcher.leading and watcher.metrics.snapshot()["deposed_total"] == 1
    assert results(redis_client, keys) == [(KEY, TaskState.PENDING, "")]
    assert pods.calls_of("delete") == []  # the refused publish decides no delete either
    assert watcher.try_lead() is None  # a standby now
    with pytest.raises(Deposed):
        watcher.checkpoint(NS, "1")


def test_a_running_leader_refused_by_redis_stops_its_watches_at_once(settings, pods, redis_client, keys) -> None:
    dispatch(redis_client, settings)
    launched(pods)
    watcher = Watcher(settings, redis_client, None, name="w", pods=pods)
    with Running(watcher) as run:
        wait_for(lambda: len(results(redis_client, keys)) == 1, timeout=30, what="the pod's pending published")
        take_over(redis_client, keys)
        pods.set_phase(NS, POD, "Running")  # its publish is refused
        wait_for(lambda: not watcher.leading, timeout=30, what="the deposed leader to stand by")
        assert results(redis_client, keys) == [(KEY, TaskState.PENDING, "")]
        assert redis_client.get(keys.watcher_lease) == b"other"
    assert run.error is None


# -- 5. Redis losing its data -------------------------------------------------------------------


def test_redis_losing_its_data_is_logged_counted_and_every_namespace_relisted(
        settings, pods, redis_client, keys, key_prefix, caplog) -> None:
    dispatch(redis_client, settings)
    launched(pods)
    watcher = Watcher(dataclasses.replace(settings, lease_seconds=1.5), redis_client, None, name="w", pods=pods)
    with Running(watcher):
        wait_for(lambda: len(results(redis_client, keys)) == 1, timeout=30, what="pending published")
        pods.set_phase(NS, POD, "Running")
        wait_for(lambda: len(results(redis_client, keys)) == 2, timeout=30, what="running published")
        lists = len(pods.calls_of("list"))
        # Redis restarts without persistence; the task's record is written again (e.g. dispatched anew)
        store = TaskStore(redis_client, keys, settings)
        pipe = redis_client.pipeline(transaction=True)
        pipe.delete(*redis_client.keys(f"{keys.base}:*"))
        store.record_dispatch(pipe, KEY, owner=OWNER, queue="default", namespace=NS, dispatch="d1")
        pipe.execute()
        # the running pod reports again: only a relist can tell (no event comes from an unchanged pod)
        wait_for(lambda: results(redis_client, keys) == [(KEY, TaskState.RUNNING, "")], timeout=30,
                 what="the relist after the reset")
        assert len(pods.calls_of("list")) > lists
        assert watcher.metrics.snapshot()["redis_resets_total"] == 1
    assert "Redis lost its data" in caplog.text
