"""The launcher against the real kube-apiserver when a launch meets trouble around its pod.

A launcher runs in the test process (real Redis, the apiserver as the ``launcher`` identity); launch
messages are written as the executor writes them and handled one batch at a time, so each step is
observed:

- a launch delivered more than ``max_deliveries`` times is settled by its pod: the pod of its
  dispatch exists = launched (acknowledged, no failure); no pod (404) = failed and dead-lettered;
- a finished pod of an earlier dispatch of the same try (kept: ``delete_worker_pods=False``) is
  deleted with a uid precondition and the new dispatch's pod created (the second poke of a
  reschedule-mode sensor);
- an apiserver slower than the retry budget cannot hold a launch past it: the create's request
  timeout ends with the budget, the entry is left pending, and its redelivery meets the pod the
  slow create made after all (409: launched).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from kubernetes import client as k8s

from devkit.cluster import ClusterState
from devkit.faultproxy import HttpFaultProxy
from devkit.isolated import proxied_kubeconfig
from devkit.procs import wait_for
from devkit.workloads import signed
from kubestream.keys import LAUNCH_GROUP, Keys
from kubestream.kubeapi import api_client
from kubestream.messages import FIELD, LaunchTask, TaskState, decode, encode
from kubestream.settings import Settings
from kubestream.store import TaskStore
from kubestream.taskkey import DISPATCH_ANNOTATION, TaskKey
from kubestream.workers.consumer import Entry
from kubestream.workers.launcher import Launcher

pytestmark = pytest.mark.cluster

OWNER = "sched-a"
KEY = TaskKey("faults", "sensor", "run-1", 1)
POD = KEY.pod_name()


@pytest.fixture
def launchers(settings: Settings, redis_client: redis.Redis,
              api_for: Callable[[str], object]) -> Iterator[Callable[..., Launcher]]:
    """``make(name, api=None, **overrides)``: a launcher in this process (the ``launcher`` identity unless
    ``api`` is given), its group created; stopped at teardown."""
    made: list[Launcher] = []

    def make(name: str, api: Any = None, **overrides: Any) -> Launcher:
        launcher = Launcher(dataclasses.replace(settings, **overrides), redis_client,
                            api if api is not None else api_for("launcher"), name=name)
        launcher.consumer.ensure_groups()
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        launcher.stop()


def dispatch(redis_client: redis.Redis, settings: Settings, dispatch_id: str) -> None:
    """What the executor's ``_process_workloads`` writes for one task: its record and a LaunchTask."""
    keys = Keys(settings.key_prefix)
    pipe = redis_client.pipeline(transaction=True)
    TaskStore(redis_client, keys, settings).record_dispatch(pipe, KEY, owner=OWNER, queue="default",
                                                            namespace=settings.namespace, dispatch=dispatch_id)
    pipe.xadd(keys.launch("default"), signed(settings, keys.launch("default"),
                                             encode(LaunchTask(KEY, "default", OWNER, "{}", dispatch_id))))
    pipe.execute()


def handle(launcher: Launcher, entries: list[Entry], *, ack: bool = True) -> None:
    """Handle a batch; acknowledge what settled unless ``ack`` is False (the launcher died first)."""
    for work in launcher.prepare(entries):
        launcher.handle(work)
    if ack:
        launcher.consumer.ack(launcher.settled())


def pending(redis_client: redis.Redis, keys: Keys) -> int:
    return int(redis_client.xpending(keys.launch("default"), LAUNCH_GROUP)["pending"])


def pod_or_none(core: k8s.CoreV1Api, namespace: str) -> Any:
    try:
        return core.read_namespaced_pod(POD, namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise


@pytest.mark.parametrize("pod_survives", [True, False])
def test_a_launch_past_max_deliveries_is_settled_by_its_pod(launchers, redis_client, settings, keys, core,
                                                            namespace, pod_survives) -> None:
    first = launchers("faults-a", max_deliveries=1)
    dispatch(redis_client, settings, "d1")
    handle(first, first.consumer.read_new(10, 100), ack=False)  # created the pod, died before acknowledging
    assert pod_or_none(core, namespace) is not None
    if not pod_survives:
        core.delete_namespaced_pod(POD, namespace, grace_period_seconds=0)
        wait_for(lambda: pod_or_none(core, namespace) is None, timeout=30, what="the pod gone")
    # the entry comes back to a launcher of the same name (a restart): its third delivery
    redis_client.xclaim(keys.launch("default"), LAUNCH_GROUP, "faults-a", 0,
                        [e["message_id"] for e in redis_client.xpending_range(keys.launch("default"), LAUNCH_GROUP,
                                                                              "-", "+", 10)])
    restarted = launchers("faults-a", max_deliveries=1)
    (entry,) = restarted.consumer.own_pending()
    assert entry.deliveries == 3
    handle(restarted, [entry])
    assert pending(redis_client, keys) == 0
    events = [decode(fields[FIELD]) for _, fields in redis_client.xrange(keys.results(OWNER))]
    if pod_survives:  # launched: nothing to fail
        assert events == [] and redis_client.xlen(keys.dead) == 0
        pod = pod_or_none(core, namespace)
        assert pod is not None and pod.metadata.annotations[DISPATCH_ANNOTATION] == "d1"
        assert restarted.metrics.snapshot()["already_exists_total"] == 1
    else:  # the apiserver says 404: the launch never made a pod that lasted
        (event,) = events
        assert event.state is TaskState.FAILED and event.reason == "launch gave up after 2 deliveries"
        assert redis_client.xlen(keys.dead) == 1 and pod_or_none(core, namespace) is None


def test_a_finished_pod_of_an_earlier_dispatch_is_replaced(launchers, redis_client, settings, keys, core,
                                                           namespace) -> None:
    launcher = launchers("faults-b")
    dispatch(redis_client, settings, "d1")  # a reschedule-mode sensor's first poke
    handle(launcher, launcher.consumer.read_new(10, 100))
    old = core.read_namespaced_pod(POD, namespace)
    # it ended; with delete_worker_pods=False (or a failed delete) its pod keeps the name
    core.patch_namespaced_pod_status(POD, namespace, {"status": {"phase": "Succeeded"}})
    dispatch(redis_client, settings, "d2")  # the second poke: same try, same pod name
    handle(launcher, launcher.consumer.read_new(10, 100))
    pod = core.read_namespaced_pod(POD, namespace)
    assert pod.metadata.annotations[DISPATCH_ANNOTATION] == "d2" and pod.metadata.uid != old.metadata.uid
    assert pending(redis_client, keys) == 0 and redis_client.xlen(keys.results(OWNER)) == 0
    assert launcher.metrics.snapshot()["replaced_finished_total"] == 1


def test_an_apiserver_slower_than_the_budget_cannot_hold_a_launch_past_it(
        launchers, redis_client, settings, keys, core, namespace, cluster: ClusterState,
        fault_proxy: HttpFaultProxy, tmp_path: Path) -> None:
    kubeconfig = proxied_kubeconfig(tmp_path, fault_proxy.url, cluster.tokens["launcher"], "launcher")
    slow_api = api_client(kubeconfig)
    try:
        slow = launchers("faults-slow", api=slow_api)
        fault_proxy.latency_ms = 4 * settings.retry_budget_seconds * 1000  # each request answered that late
        dispatch(redis_client, settings, "d1")
        handle(slow, slow.consumer.read_new(10, 100))
        # the create's request timeout ended with the budget: left pending, not settled
        assert slow.settled() == [] and pending(redis_client, keys) == 1
        snapshot = slow.metrics.snapshot()
        assert snapshot["transient_errors_total"] >= 1 and snapshot["released_total"] == 1
        assert "created_total" not in snapshot
    finally:
        fault_proxy.latency_ms = 0
        slow_api.close()
    # the slow create reached the apiserver after all
    wait_for(lambda: pod_or_none(core, namespace) is not None, timeout=60, what="the late create's pod")
    other = launchers("faults-other")
    entries = wait_for(other.consumer.reclaim, timeout=60, what="the entry reclaimed once idle")
    handle(other, cast(list[Entry], entries))
    assert pending(redis_client, keys) == 0 and redis_client.xlen(keys.results(OWNER)) == 0
    assert other.metrics.snapshot()["already_exists_total"] == 1
