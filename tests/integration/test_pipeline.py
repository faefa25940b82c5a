"""The whole pipeline against real servers: executor -> Redis -> launcher processes -> real
kube-apiserver -> simulated kubelet -> watcher process -> Redis -> executor.sync().

The Airflow metadata DB is the one stand-in here (``DbStandIn``): a finished pod's
task state is read from it, and these tests have no scheduler writing it; the
end-to-end tests run the real thing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest
from kubernetes import client as k8s

from kubestream.keys import LAUNCH_GROUP
from devkit.procs import wait_for
from kubestream.messages import FIELD, TaskState, decode
from tests.helpers import Driver, sim, workload

pytestmark = pytest.mark.cluster


def results_per_key(redis_client, stream: str) -> Counter:
    """(pod name, state) -> how many times it was published."""
    counts: Counter = Counter()
    for _, fields in redis_client.xrange(stream):
        event = decode(fields[FIELD])
        counts[(event.key.pod_name(), event.state)] += 1
    return counts


OUTCOMES = [  # (rule, expected Airflow state, reason fragment)
    ("succeed", "success", ""),
    ("exit:3", "failed", "exit code 3"),
    ("errimagepull", "failed", "ErrImagePull"),
    ("oomkilled", "failed", "OOMKilled"),
    ("succeed:delay=0.5", "success", ""),
]


def test_300_tasks_with_mixed_outcomes(settings, cluster, kubelet, components, make_executor, redis_client, keys,
                                       admin_api) -> None:
    for i in range(2):
        components.start("launcher", settings, cluster.kubeconfig("launcher"))
    components.start("watcher", settings, cluster.kubeconfig("watcher"))
    driver = Driver(make_executor())
    work = [workload("mixed", f"t{i:03d}", executor_config=sim(OUTCOMES[i % 5][0])) for i in range(300)]
    driver.submit(work)
    assert len(driver.executor.running) == 300 and not driver.executor.queued_tasks
    finals = driver.run_until([w.ti.key for w in work], timeout=240)
    for i, w in enumerate(work):
        rule, expected, reason = OUTCOMES[i % 5]
        assert finals[w.ti.key] == expected, (rule, w.ti.key)
        if reason:
            infos = [info for k, s, info in driver.events if k == w.ti.key and s == "failed"]
            assert reason in (infos[0] or ""), (rule, infos)
    assert set(driver.final_counts().values()) == {1}  # exactly one final event per task
    assert not driver.executor.running
    wait_for(lambda: redis_client.xpending(keys.launch("default"), LAUNCH_GROUP)["pending"] == 0, timeout=30,
             what="every launch acknowledged")
    per_key = results_per_key(redis_client, keys.results("sched-a"))
    assert max(per_key.values()) == 1  # no state published twice
    # succeeded pods are deleted (delete_worker_pods), failed ones kept (delete_worker_pods_on_failure=False)
    core = k8s.CoreV1Api(admin_api)

    def pods_settled() -> bool:
        names = {p.metadata.name for p in core.list_namespaced_pod(settings.namespace).items}
        return all((_pod_name(w) in names) == (finals[w.ti.key] == "failed") for w in work)

    wait_for(pods_settled, timeout=60, what="succeeded pods deleted, failed pods kept")


def _pod_name(w) -> str:
    from kubestream.executor.launches import task_key

    return task_key(w.ti.key).pod_name()


def test_kill_9_launcher_mid_batch_loses_and_duplicates_nothing(settings, cluster, kubelet, components,
                                                                 make_executor, redis_client, keys, admin_api) -> None:
    # one slow launcher (2 creates in flight, 2 creates/s) is killed mid-batch; a second one reclaims
    victim = components.start("launcher", settings, cluster.kubeconfig("launcher"), launch_concurrency="2",
                              create_rate="2", create_burst="1")
    components.start("watcher", settings, cluster.kubeconfig("watcher"))
    driver = Driver(make_executor())
    work = [workload("kill9", f"t{i:03d}") for i in range(60)]
    driver.submit(work)
    wait_for(lambda: redis_client.xpending(keys.launch("default"), LAUNCH_GROUP)["pending"] > 0
             and redis_client.xlen(keys.results("sched-a")) >= 5, timeout=60, what="the first launcher mid-batch")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    components.start("launcher", settings, cluster.kubeconfig("launcher"))
    finals = driver.run_until([w.ti.key for w in work], timeout=180)
    assert set(finals.values()) == {"success"}
    assert set(driver.final_counts().values()) == {1}
    wait_for(lambda: redis_client.xpending(keys.launch("default"), LAUNCH_GROUP)["pending"] == 0, timeout=30,
             what="nothing left pending")
    per_key = results_per_key(redis_client, keys.results("sched-a"))
    assert all(per_key[(_pod_name(w), TaskState.SUCCEEDED)] == 1 for w in work)


def test_watcher_restart_and_apiserver_410_lose_and_repeat_nothing(settings, cluster, local_cluster, kubelet,
                                                                   components, make_executor, redis_client,
                                                                   keys) -> None:
    components.start("launcher", settings, cluster.kubeconfig("launcher"))
    watcher = components.start("watcher", settings, cluster.kubeconfig("watcher"))
    driver = Driver(make_executor())
    first = [workload("restart", f"a{i:02d}", executor_config=sim("run:delay=3")) for i in range(20)]
    driver.submit(first)
    wait_for(lambda: redis_client.scard(keys.live) >= 10, timeout=60, what="pods running")
    os.kill(watcher.pid, signal.SIGKILL)  # transitions happen while no watcher runs
    watcher.wait()
    second = [workload("restart", f"b{i:02d}", executor_config=sim("run:delay=3")) for i in range(20)]
    driver.submit(second)
    components.start("watcher", settings, cluster.kubeconfig("watcher"))
    wait_for(lambda: redis_client.scard(keys.live) >= 10, timeout=60, what="second batch running")
    local_cluster.restart_apiserver()  # the watcher's resourceVersion is now too old: a real 410
    third = [workload("restart", f"c{i:02d}") for i in range(20)]
    driver.submit(third)
    all_keys = [w.ti.key for w in first + second + third]
    finals = driver.run_until(all_keys, timeout=180)
    assert set(finals.values()) == {"success"}
    assert set(driver.final_counts().values()) == {1}
    per_key = results_per_key(redis_client, keys.results("sched-a"))
    assert max(per_key.values()) == 1  # none published twice
    assert all(per_key[(_pod_name(w), TaskState.SUCCEEDED)] == 1 for w in first + second + third)


def test_restarted_executor_applies_results_that_waited(settings, cluster, kubelet, components, make_executor,
                                                        redis_client, keys) -> None:
    first = Driver(make_executor())
    work = [workload("reboot", f"t{i:02d}") for i in range(30)]
    first.submit(work)
    components.start("launcher", settings, cluster.kubeconfig("launcher"))
    components.start("watcher", settings, cluster.kubeconfig("watcher"))
    stream = keys.results("sched-a")
    wait_for(lambda: sum(1 for _, f in redis_client.xrange(stream)
                         if decode(f[FIELD]).state is TaskState.SUCCEEDED) == 30, timeout=120,
             what="all results published while the scheduler is down")
    # the old scheduler read some results but died before applying / acknowledging them
    redis_client.xreadgroup("executor", "sched-a", {stream: ">"}, count=7)
    first.executor.terminate()
    second = Driver(make_executor())
    finals = second.run_until([w.ti.key for w in work], timeout=30)
    assert set(finals.values()) == {"success"}
    assert redis_client.xpending(stream, "executor")["pending"] == 0
