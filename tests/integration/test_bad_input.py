"""Bad input and hostile API answers against real servers: Redis, the local kube-apiserver, the
simulated kubelet, launcher and watcher processes started through the CLI.

Each test also runs normal tasks (no sim rule: the kubelet's default "succeed") that must end
"success": one bad message or one refused pod never hurts unrelated tasks (in the quota and 429
tests every task is a normal one, held back by the API until it relents).

- garbage on a launch stream is dead-lettered, the launcher keeps serving;
- a message of an unknown schema version is dead-lettered and its task (the key could be read)
  fails on its owner's result stream;
- a pod_override that is not a pod fails its task ("invalid pod spec") and is dead-lettered;
- a pod the API rejects (422) fails its task with the API's message;
- a quota 403 ("exceeded quota") is transient: the launches stay pending, then succeed once the
  quota is raised;
- a storm of 429s (injected by ``HttpFaultProxy``) is retried: every task succeeds, once.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import msgpack
import pytest
from kubernetes.client.exceptions import ApiException

from devkit.isolated import proxied_kubeconfig
from devkit.procs import wait_for
from devkit.workloads import jwt_with, pod_name, signed, workload
from kubestream.executor.launches import task_key
from kubestream.messages import TaskState, decode, redact
from kubestream.taskkey import TaskKey
from kubestream.workers.podspec import build_pod

pytestmark = pytest.mark.cluster

TIMEOUT = 90


def fails_beside_a_normal_task(bad: Any, pipeline) -> str:
    """Run ``bad`` next to a normal task: ``bad`` fails, the normal one succeeds, one final event
    each. Returns the failure info of ``bad``."""
    pipeline.start()
    normal = workload("badinput", "normal")
    pipeline.submit([bad, normal])
    finals = pipeline.run_until([bad.ti.key, normal.ti.key], timeout=TIMEOUT)
    assert finals == {bad.ti.key: "failed", normal.ti.key: "success"}
    assert set(pipeline.driver.final_counts().values()) == {1}
    (info,) = pipeline.driver.failures(bad.ti.key)
    return info


# -- 1. not a message at all ---------------------------------------------------------------------------


def test_undecodable_entries_are_dead_lettered_and_the_launcher_keeps_serving(
        settings, pipeline, streams, redis_client, keys) -> None:
    stream = keys.launch("default")
    garbage_id = redis_client.xadd(stream, signed(settings, stream, b"\xc1not msgpack")).decode()
    no_field_id = redis_client.xadd(stream, {b"x": b"no m field"}).decode()
    (launcher,) = pipeline.start()

    wait_for(lambda: streams.dead_count() >= 2, timeout=TIMEOUT, what="both entries dead-lettered")
    dead = {d.entry: d for d in streams.dead_letters()}
    assert set(dead) == {garbage_id, no_field_id}
    for entry_id, raw, why in ((garbage_id, redact(b"\xc1not msgpack"), "decode: not msgpack"),
                               (no_field_id, b"", "signature: no message field")):
        reason = dead[entry_id].reason
        assert reason.startswith(why), reason
        assert dead[entry_id].m == raw  # what is safe to keep at rest (its size and digest only)
        assert dead[entry_id].stream == stream
        assert dead[entry_id].task == keys.task("-")  # no key could be read

    normal = workload("badinput", "normal")
    pipeline.submit([normal])
    finals = pipeline.run_until([normal.ti.key], timeout=TIMEOUT)
    assert finals == {normal.ti.key: "success"}
    assert pipeline.driver.final_counts()[normal.ti.key] == 1
    assert launcher.poll() is None  # the garbage did not take the launcher down
    wait_for(lambda: streams.pending() == 0, timeout=30, what="nothing pending in group launchers")
    assert streams.launch_len() == 0  # settled entries are deleted too
    assert {e.key for e in streams.results()} == {task_key(normal.ti.key)}  # no stray result
    assert streams.dead_count() == 2


# -- 2. a message from a newer (or foreign) producer ------------------------------------------------------------


def test_unknown_schema_version_is_dead_lettered_and_fails_its_task(
        settings, pipeline, streams, redis_client, keys) -> None:
    normal = workload("badinput", "normal")
    pipeline.submit([normal])  # its record (owner sched-a) and launch written by the executor

    # A task whose launch message comes from a producer speaking schema v99; its record says
    # sched-a owns it, so the failed result must be routed to sched-a's result stream.
    ghost = TaskKey("badinput", "from-the-future", "run-1", 1, -1)
    redis_client.hset(keys.task(ghost.pod_name()), mapping={
        "owner": "sched-a", "dag_id": ghost.dag_id, "task_id": ghost.task_id, "run_id": ghost.run_id,
        "try_number": ghost.try_number, "map_index": ghost.map_index, "queue": "default",
        "namespace": settings.namespace})
    raw = msgpack.packb({"v": 99, "type": "launch", "key": list(ghost.as_tuple()), "queue": "default",
                         "scheduler_id": "sched-a", "workload_json": "{}", "new_field": [1, 2, 3]},
                        use_bin_type=True)
    v99_id = redis_client.xadd(keys.launch("default"), signed(settings, keys.launch("default"), raw)).decode()
    (launcher,) = pipeline.start()

    finals = pipeline.run_until([normal.ti.key], timeout=TIMEOUT)
    assert finals[normal.ti.key] == "success"
    assert pipeline.driver.final_counts()[normal.ti.key] == 1

    wait_for(lambda: streams.dead_count() >= 1, timeout=TIMEOUT, what="the v99 entry dead-lettered")
    (dead,) = streams.dead_letters()
    assert dead.entry == v99_id
    assert "unknown schema version 99" in dead.reason
    assert dead.m == raw
    assert dead.task == keys.task(ghost.pod_name())

    def ghost_failed() -> list[Any]:
        return [e for e in streams.results() if e.key == ghost]

    (event,) = wait_for(ghost_failed, timeout=TIMEOUT, what="a failed result for the v99 task")
    assert event.state is TaskState.FAILED
    assert "schema version 99" in event.reason and event.pod_name == ghost.pod_name()
    assert streams.task(ghost.pod_name())["state"] == "failed"
    assert launcher.poll() is None
    wait_for(lambda: streams.pending() == 0, timeout=30, what="nothing pending in group launchers")


# -- 3. a pod_override that is not a pod -------------------------------------------------------------------


def test_invalid_pod_override_fails_the_task_and_is_dead_lettered(pipeline, streams, keys) -> None:
    bad = workload("badinput", "bad-spec", executor_config={"pod_override": {"spec": {"containers": "not-a-list"}}})
    info = fails_beside_a_normal_task(bad, pipeline)
    assert info.startswith("invalid pod spec:") and "containers must be a list" in info, info

    (dead,) = streams.dead_letters()
    assert dead.reason.startswith("pod spec:")
    assert dead.task == keys.task(pod_name(bad))
    assert dead.m is not None and decode(dead.m).key == task_key(bad.ti.key)  # the launch message itself
    assert not streams.pod_exists(pod_name(bad))
    wait_for(lambda: streams.pending() == 0, timeout=30, what="nothing pending in group launchers")


# -- 3b. a workload whose token expired while it waited --------------------------------------------------


def test_launch_with_an_expired_token_is_skipped_and_the_task_left_to_airflow(
        pipeline, streams, components) -> None:
    pipeline.start()
    stale = workload("badinput", "stale-token", token=jwt_with({"exp": time.time() - 60, "sub": "ti"}))
    fresh = workload("badinput", "fresh-token", token=jwt_with({"exp": time.time() + 600, "sub": "ti"}))
    pipeline.submit([stale, fresh])
    assert pipeline.run_until([fresh.ti.key], timeout=TIMEOUT)[fresh.ti.key] == "success"
    wait_for(lambda: streams.pending() == 0 and streams.launch_len() == 0, timeout=30,
             what="both launches settled")
    # no pod would have passed /run: none is created, and no result fails the task; it stays queued
    # until Airflow's task_queued_timeout (the token's lifetime) revokes and requeues it
    assert not streams.pod_exists(pod_name(stale))
    assert stale.ti.key not in pipeline.driver.finals() and stale.ti.key in pipeline.executor.running
    assert "workload token expired" in components.log("launcher-0")
    assert streams.dead_letters() == []


# -- 4. a pod the API server rejects -------------------------------------------------------------------------


def test_pod_rejected_by_the_api_with_422_fails_the_task(settings, pipeline, streams, core) -> None:
    override = {"spec": {"containers": [{"name": "Bad_Name!"}]}}
    bad = workload("badinput", "bad-name", executor_config={"pod_override": override})
    # The merged pod is well-formed for the launcher (the override's container merges into
    # "base") but invalid for the API server: a dry run as admin gets the real 422.
    merged = build_pod(key=task_key(bad.ti.key), namespace=settings.namespace, image=settings.worker_image,
                       workload_json="{}", scheduler_id="sched-a", template=None, pod_override=override)
    assert merged["spec"]["containers"][0]["name"] == "Bad_Name!"
    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(settings.namespace, merged, dry_run="All")
    assert rejected.value.status == 422

    info = fails_beside_a_normal_task(bad, pipeline)
    assert info.startswith("422 ") and "Invalid value" in info and "Bad_Name!" in info, info
    assert not streams.pod_exists(pod_name(bad))
    wait_for(lambda: streams.pending() == 0, timeout=30, what="nothing pending in group launchers")
    assert streams.launch_len() == 0


# -- 5. quota exceeded: transient, until the quota is raised ------------------------------------------------------


def test_quota_403_keeps_launches_pending_until_the_quota_is_raised(
        settings, pipeline, streams, components, core) -> None:
    ns = settings.namespace
    core.create_namespaced_resource_quota(ns, {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "1"}}})

    def prime(hard: str, used: str) -> None:  # no controller-manager: the test plays the quota controller
        core.patch_namespaced_resource_quota_status("pods", ns, {"status": {
            "hard": {"pods": hard}, "used": {"pods": used}}})

    def quota_rejects() -> bool:
        probe = {"metadata": {"name": "probe"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
        try:
            core.create_namespaced_pod(ns, probe, dry_run="All")
        except ApiException as exc:
            if exc.status == 403 and "exceeded quota" in exc.body:
                return True
            raise
        return False

    # quota admission reads quotas from an informer: wait until it sees the full one
    prime("1", "1")
    wait_for(quota_rejects, timeout=30, what="admission to see the full quota")

    name = "quota-launcher"
    pipeline.start(consumer_name=name, retry_budget_seconds="1", reclaim_idle_seconds="3", max_deliveries="50",
                   health_ttl_seconds="3")
    work = [workload("quota", f"t{i}") for i in range(3)]
    pipeline.submit(work)

    def redelivered() -> bool:
        pipeline.step()
        rows = streams.pending_entries(count=10)
        return len(rows) == 3 and all(int(r["times_delivered"]) >= 2 for r in rows)

    # every launch was retried within its budget, left pending, reclaimed and tried again
    wait_for(redelivered, timeout=TIMEOUT, what="all 3 launches refused, left pending and redelivered")
    wait_for(lambda: streams.launcher_metrics(name).get("transient_errors_total", 0) >= 6,
             timeout=30, what="transient errors counted")
    assert "exceeded quota" in components.log(name)
    assert not pipeline.driver.finals()  # not failed: still waiting
    assert not streams.pods()
    assert streams.dead_count() == 0

    core.patch_namespaced_resource_quota("pods", ns, {"spec": {"hard": {"pods": "100"}}})
    prime("100", "1")
    finals = pipeline.run_until([w.ti.key for w in work], timeout=TIMEOUT)
    assert set(finals.values()) == {"success"}
    assert set(pipeline.driver.final_counts().values()) == {1}
    wait_for(lambda: streams.pending() == 0, timeout=30, what="nothing pending in group launchers")
    assert streams.dead_count() == 0


# -- 6. a storm of 429s -------------------------------------------------------------------------------------


def test_429_storm_is_retried_and_every_task_succeeds_once(fault_proxy, cluster, pipeline, streams,
                                                           tmp_path) -> None:
    kubeconfig = proxied_kubeconfig(tmp_path, fault_proxy.url, cluster.tokens["launcher"], "launcher")
    name = "storm-launcher"
    # a budget that outlasts a few Retry-After: 1 rounds, so the storm is ridden out by retries
    pipeline.launcher(kubeconfig=kubeconfig, consumer_name=name, retry_budget_seconds="10",
                      reclaim_idle_seconds="20", health_ttl_seconds="3")
    pipeline.watcher()
    fault_proxy.fail_next(15, status=429, retry_after="1", only_method="POST", path_contains="/pods")

    work = [workload("storm", f"t{i:02d}") for i in range(10)]
    pipeline.submit(work)
    finals = pipeline.run_until([w.ti.key for w in work], timeout=TIMEOUT)
    assert set(finals.values()) == {"success"}
    assert set(pipeline.driver.final_counts().values()) == {1}  # no task has more than one final event
    assert fault_proxy.faults_injected == 15
    assert fault_proxy.requests_seen >= 25  # 15 refused + 10 forwarded creates

    counts = Counter((e.key, e.state) for e in streams.results())
    assert all(counts[(task_key(w.ti.key), TaskState.SUCCEEDED)] == 1 for w in work)
    assert max(counts.values()) == 1
    wait_for(lambda: streams.launcher_metrics(name).get("created_total") == 10, timeout=30,
             what="the launcher's metrics to show 10 creates")
    metrics = streams.launcher_metrics(name)
    assert metrics.get("transient_errors_total") == 15 and not metrics.get("failed_total")
    assert streams.pending() == 0
    assert streams.dead_count() == 0
