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

import json
import time
from collections import Counter
from typing import Any

import msgpack
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from kubestream.executor.launches import task_key
from kubestream.keys import LAUNCH_GROUP
from devkit.procs import wait_for
from kubestream.messages import FIELD, TaskState, decode
from kubestream.taskkey import TaskKey
from kubestream.workers.podspec import build_pod
from tests.helpers import Components, Driver, jwt_with, proxied_kubeconfig, workload

pytestmark = pytest.mark.cluster

TIMEOUT = 90


@pytest.fixture
def core(admin_api) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(admin_api)


# -- helpers -----------------------------------------------------------------------------------------


def pod_name(w: Any) -> str:
    return task_key(w.ti.key).pod_name()


def dead_letters(redis_client, keys) -> list[dict[str, bytes]]:
    """The dead-letter stream's entries, field names decoded."""
    return [{k.decode(): v for k, v in fields.items()} for _, fields in redis_client.xrange(keys.dead)]


def results(redis_client, keys, scheduler_id: str = "sched-a") -> list[Any]:
    """Every TaskStateChanged on a scheduler's result stream (XRANGE: the executor's group is untouched)."""
    return [decode(fields[FIELD]) for _, fields in redis_client.xrange(keys.results(scheduler_id))]


def pending(redis_client, keys, queue: str = "default") -> int:
    return int(redis_client.xpending(keys.launch(queue), LAUNCH_GROUP)["pending"])


def launcher_metrics(redis_client, keys, name: str) -> dict[str, float]:
    raw = redis_client.hget(keys.health("launcher", name), "metrics")
    return json.loads(raw) if raw else {}


def infos(driver: Driver, key: Any) -> list[str]:
    return [info or "" for k, s, info in driver.events if k == key and s == "failed"]


def pod_exists(core: k8s.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def start_pipeline(components: Components, settings, cluster, **launcher_overrides: str):
    launcher = components.start("launcher", settings, cluster.kubeconfig("launcher"), **launcher_overrides)
    components.start("watcher", settings, cluster.kubeconfig("watcher"))
    return launcher


def fails_beside_a_normal_task(bad: Any, components: Components, settings, cluster, make_executor) -> str:
    """Run ``bad`` next to a normal task: ``bad`` fails, the normal one succeeds, one final event
    each. Returns the failure info of ``bad``."""
    start_pipeline(components, settings, cluster)
    driver = Driver(make_executor())
    normal = workload("badinput", "normal")
    driver.submit([bad, normal])
    finals = driver.run_until([bad.ti.key, normal.ti.key], timeout=TIMEOUT)
    assert finals == {bad.ti.key: "failed", normal.ti.key: "success"}
    assert set(driver.final_counts().values()) == {1}
    (info,) = infos(driver, bad.ti.key)
    return info


# -- 1. not a message at all ---------------------------------------------------------------------------


def test_undecodable_entries_are_dead_lettered_and_the_launcher_keeps_serving(
        settings, cluster, kubelet, components, make_executor, redis_client, keys) -> None:
    stream = keys.launch("default")
    garbage_id = redis_client.xadd(stream, {FIELD: b"\xc1not msgpack"}).decode()
    no_field_id = redis_client.xadd(stream, {b"x": b"no m field"}).decode()
    launcher = start_pipeline(components, settings, cluster)

    wait_for(lambda: redis_client.xlen(keys.dead) >= 2, timeout=TIMEOUT, what="both entries dead-lettered")
    dead = {d["entry"].decode(): d for d in dead_letters(redis_client, keys)}
    assert set(dead) == {garbage_id, no_field_id}
    for entry_id, raw in ((garbage_id, b"\xc1not msgpack"), (no_field_id, b"")):
        reason = dead[entry_id]["reason"].decode()
        assert reason.startswith("decode: not msgpack"), reason
        assert dead[entry_id]["m"] == raw  # the bytes as they were, for a human to look at
        assert dead[entry_id]["stream"].decode() == stream
        assert dead[entry_id]["task"] == keys.task("-").encode()  # no key could be read

    driver = Driver(make_executor())
    normal = workload("badinput", "normal")
    driver.submit([normal])
    finals = driver.run_until([normal.ti.key], timeout=TIMEOUT)
    assert finals == {normal.ti.key: "success"}
    assert driver.final_counts()[normal.ti.key] == 1
    assert launcher.poll() is None  # the garbage did not take the launcher down
    wait_for(lambda: pending(redis_client, keys) == 0, timeout=30, what="nothing pending in group launchers")
    assert redis_client.xlen(stream) == 0  # settled entries are deleted too
    assert {e.key for e in results(redis_client, keys)} == {task_key(normal.ti.key)}  # no stray result
    assert redis_client.xlen(keys.dead) == 2


# -- 2. a message from a newer (or foreign) producer ------------------------------------------------------------


def test_unknown_schema_version_is_dead_lettered_and_fails_its_task(
        settings, cluster, kubelet, components, make_executor, redis_client, keys) -> None:
    driver = Driver(make_executor())
    normal = workload("badinput", "normal")
    driver.submit([normal])  # its record (owner sched-a) and launch written by the executor

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
    v99_id = redis_client.xadd(keys.launch("default"), {FIELD: raw}).decode()
    launcher = start_pipeline(components, settings, cluster)

    finals = driver.run_until([normal.ti.key], timeout=TIMEOUT)
    assert finals[normal.ti.key] == "success"
    assert driver.final_counts()[normal.ti.key] == 1

    wait_for(lambda: redis_client.xlen(keys.dead) >= 1, timeout=TIMEOUT, what="the v99 entry dead-lettered")
    (dead,) = dead_letters(redis_client, keys)
    assert dead["entry"].decode() == v99_id
    assert "unknown schema version 99" in dead["reason"].decode()
    assert dead["m"] == raw
    assert dead["task"] == keys.task(ghost.pod_name()).encode()

    def ghost_failed() -> list[Any]:
        return [e for e in results(redis_client, keys) if e.key == ghost]

    (event,) = wait_for(ghost_failed, timeout=TIMEOUT, what="a failed result for the v99 task")
    assert event.state is TaskState.FAILED
    assert "schema version 99" in event.reason and event.pod_name == ghost.pod_name()
    assert redis_client.hget(keys.task(ghost.pod_name()), "state") == b"failed"
    assert launcher.poll() is None
    wait_for(lambda: pending(redis_client, keys) == 0, timeout=30, what="nothing pending in group launchers")


# -- 3. a pod_override that is not a pod -------------------------------------------------------------------


def test_invalid_pod_override_fails_the_task_and_is_dead_lettered(
        settings, cluster, kubelet, components, make_executor, redis_client, keys, core) -> None:
    bad = workload("badinput", "bad-spec", executor_config={"pod_override": {"spec": {"containers": "not-a-list"}}})
    info = fails_beside_a_normal_task(bad, components, settings, cluster, make_executor)
    assert info.startswith("invalid pod spec:") and "containers must be a list" in info, info

    (dead,) = dead_letters(redis_client, keys)
    assert dead["reason"].decode().startswith("pod spec:")
    assert dead["task"] == keys.task(pod_name(bad)).encode()
    assert decode(dead["m"]).key == task_key(bad.ti.key)  # the launch message itself, decodable
    assert not pod_exists(core, settings.namespace, pod_name(bad))
    wait_for(lambda: pending(redis_client, keys) == 0, timeout=30, what="nothing pending in group launchers")


# -- 3b. a workload whose token expired while it waited --------------------------------------------------


def test_launch_with_an_expired_token_is_skipped_and_the_task_left_to_airflow(
        settings, cluster, kubelet, components, make_executor, redis_client, keys, core) -> None:
    start_pipeline(components, settings, cluster)
    driver = Driver(make_executor())
    stale = workload("badinput", "stale-token", token=jwt_with({"exp": time.time() - 60, "sub": "ti"}))
    fresh = workload("badinput", "fresh-token", token=jwt_with({"exp": time.time() + 600, "sub": "ti"}))
    driver.submit([stale, fresh])
    assert driver.run_until([fresh.ti.key], timeout=TIMEOUT)[fresh.ti.key] == "success"
    wait_for(lambda: pending(redis_client, keys) == 0 and redis_client.xlen(keys.launch("default")) == 0,
             timeout=30, what="both launches settled")
    # no pod would have passed /run: none is created, and no result fails the task; it stays queued
    # until Airflow's task_queued_timeout (the token's lifetime) revokes and requeues it
    assert not pod_exists(core, settings.namespace, pod_name(stale))
    assert stale.ti.key not in driver.finals() and stale.ti.key in driver.executor.running
    assert "workload token expired" in (components.log_dir / "launcher-0.log").read_text()
    assert dead_letters(redis_client, keys) == []


# -- 4. a pod the API server rejects -------------------------------------------------------------------------


def test_pod_rejected_by_the_api_with_422_fails_the_task(
        settings, cluster, kubelet, components, make_executor, redis_client, keys, core) -> None:
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

    info = fails_beside_a_normal_task(bad, components, settings, cluster, make_executor)
    assert info.startswith("422 ") and "Invalid value" in info and "Bad_Name!" in info, info
    assert not pod_exists(core, settings.namespace, pod_name(bad))
    wait_for(lambda: pending(redis_client, keys) == 0, timeout=30, what="nothing pending in group launchers")
    assert redis_client.xlen(keys.launch("default")) == 0


# -- 5. quota exceeded: transient, until the quota is raised ------------------------------------------------------


def test_quota_403_keeps_launches_pending_until_the_quota_is_raised(
        settings, cluster, kubelet, components, make_executor, redis_client, keys, core) -> None:
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
    start_pipeline(components, settings, cluster, consumer_name=name, retry_budget_seconds="1",
                   reclaim_idle_seconds="3", max_deliveries="50", health_ttl_seconds="3")
    driver = Driver(make_executor())
    work = [workload("quota", f"t{i}") for i in range(3)]
    driver.submit(work)
    stream = keys.launch("default")

    def redelivered() -> bool:
        driver.step()
        rows = redis_client.xpending_range(stream, LAUNCH_GROUP, min="-", max="+", count=10)
        return len(rows) == 3 and all(int(r["times_delivered"]) >= 2 for r in rows)

    # every launch was retried within its budget, left pending, reclaimed and tried again
    wait_for(redelivered, timeout=TIMEOUT, what="all 3 launches refused, left pending and redelivered")
    wait_for(lambda: launcher_metrics(redis_client, keys, name).get("transient_errors_total", 0) >= 6,
             timeout=30, what="transient errors counted")
    assert "exceeded quota" in (components.log_dir / f"{name}.log").read_text()
    assert not driver.finals()  # not failed: still waiting
    assert not core.list_namespaced_pod(ns).items
    assert redis_client.xlen(keys.dead) == 0

    core.patch_namespaced_resource_quota("pods", ns, {"spec": {"hard": {"pods": "100"}}})
    prime("100", "1")
    finals = driver.run_until([w.ti.key for w in work], timeout=TIMEOUT)
    assert set(finals.values()) == {"success"}
    assert set(driver.final_counts().values()) == {1}
    wait_for(lambda: pending(redis_client, keys) == 0, timeout=30, what="nothing pending in group launchers")
    assert redis_client.xlen(keys.dead) == 0


# -- 6. a storm of 429s -------------------------------------------------------------------------------------


def test_429_storm_is_retried_and_every_task_succeeds_once(
        fault_proxy, settings, cluster, kubelet, components, make_executor, redis_client, keys,
        tmp_path) -> None:
    kubeconfig = proxied_kubeconfig(tmp_path, fault_proxy, cluster.tokens["launcher"], "launcher")
    name = "storm-launcher"
    # a budget that outlasts a few Retry-After: 1 rounds, so the storm is ridden out by retries
    components.start("launcher", settings, kubeconfig, consumer_name=name, retry_budget_seconds="10",
                     reclaim_idle_seconds="20", health_ttl_seconds="3")
    components.start("watcher", settings, cluster.kubeconfig("watcher"))
    fault_proxy.fail_next(15, status=429, retry_after="1", only_method="POST", path_contains="/pods")

    driver = Driver(make_executor())
    work = [workload("storm", f"t{i:02d}") for i in range(10)]
    driver.submit(work)
    finals = driver.run_until([w.ti.key for w in work], timeout=TIMEOUT)
    assert set(finals.values()) == {"success"}
    assert set(driver.final_counts().values()) == {1}  # no task has more than one final event
    assert fault_proxy.faults_injected == 15
    assert fault_proxy.requests_seen >= 25  # 15 refused + 10 forwarded creates

    counts = Counter((e.key, e.state) for e in results(redis_client, keys))
    assert all(counts[(task_key(w.ti.key), TaskState.SUCCEEDED)] == 1 for w in work)
    assert max(counts.values()) == 1
    wait_for(lambda: launcher_metrics(redis_client, keys, name).get("created_total") == 10, timeout=30,
             what="the launcher's metrics to show 10 creates")
    metrics = launcher_metrics(redis_client, keys, name)
    assert metrics.get("transient_errors_total") == 15 and not metrics.get("failed_total")
    assert pending(redis_client, keys) == 0
    assert redis_client.xlen(keys.dead) == 0
