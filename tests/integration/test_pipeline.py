"""The whole pipeline against real servers: executor -> Redis -> launcher processes -> real
kube-apiserver -> simulated kubelet -> watcher process -> Redis -> executor.sync().

The Airflow metadata DB is the one stand-in here (``DbStandIn``): a finished pod's
task state is read from it, and these tests have no scheduler writing it; the
end-to-end tests run the real thing.
"""

from __future__ import annotations

import os
import signal

import pytest

from devkit.procs import wait_for
from devkit.workloads import pod_name, sim, workload
from kubestream.messages import TaskState

pytestmark = pytest.mark.cluster


OUTCOMES = [  # (rule, expected Airflow state, reason fragment)
    ("succeed", "success", ""),
    ("exit:3", "failed", "exit code 3"),
    ("errimagepull", "failed", "ErrImagePull"),
    ("oomkilled", "failed", "OOMKilled"),
    ("succeed:delay=0.5", "success", ""),
]


def test_300_tasks_with_mixed_outcomes(pipeline, streams) -> None:
    pipeline.start(launchers=2)
    work = [workload("mixed", f"t{i:03d}", executor_config=sim(OUTCOMES[i % 5][0])) for i in range(300)]
    pipeline.submit(work)
    assert len(pipeline.executor.running) == 300 and not pipeline.executor.queued_tasks
    finals = pipeline.run_until([w.ti.key for w in work], timeout=240)
    for i, w in enumerate(work):
        rule, expected, reason = OUTCOMES[i % 5]
        assert finals[w.ti.key] == expected, (rule, w.ti.key)
        if reason:
            infos = pipeline.driver.failures(w.ti.key)
            assert reason in infos[0], (rule, infos)
    assert set(pipeline.driver.final_counts().values()) == {1}  # exactly one final event per task
    assert not pipeline.executor.running
    wait_for(lambda: streams.pending() == 0, timeout=30, what="every launch acknowledged")
    assert max(streams.published().values()) == 1  # no state published twice

    # succeeded pods are deleted (delete_worker_pods), failed ones kept (delete_worker_pods_on_failure=False)
    def pods_settled() -> bool:
        names = streams.pods()
        return all((pod_name(w) in names) == (finals[w.ti.key] == "failed") for w in work)

    wait_for(pods_settled, timeout=60, what="succeeded pods deleted, failed pods kept")


def test_kill_9_launcher_mid_batch_loses_and_duplicates_nothing(pipeline, streams) -> None:
    # one slow launcher (2 creates in flight, 2 creates/s) is killed mid-batch; a second one reclaims
    victim = pipeline.launcher(launch_concurrency="2", create_rate="2", create_burst="1")
    pipeline.watcher()
    work = [workload("kill9", f"t{i:03d}") for i in range(60)]
    pipeline.submit(work)
    wait_for(lambda: streams.pending() > 0 and streams.results_len() >= 5, timeout=60,
             what="the first launcher mid-batch")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    pipeline.launcher()
    finals = pipeline.run_until([w.ti.key for w in work], timeout=180)
    assert set(finals.values()) == {"success"}
    assert set(pipeline.driver.final_counts().values()) == {1}
    wait_for(lambda: streams.pending() == 0, timeout=30, what="nothing left pending")
    published = streams.published()
    assert all(published[(pod_name(w), TaskState.SUCCEEDED)] == 1 for w in work)


def test_watcher_restart_and_apiserver_410_lose_and_repeat_nothing(pipeline, streams, local_cluster) -> None:
    pipeline.launcher()
    watcher = pipeline.watcher()
    first = [workload("restart", f"a{i:02d}", executor_config=sim("run:delay=3")) for i in range(20)]
    pipeline.submit(first)
    wait_for(lambda: streams.live() >= 10, timeout=60, what="pods running")
    os.kill(watcher.pid, signal.SIGKILL)  # transitions happen while no watcher runs
    watcher.wait()
    second = [workload("restart", f"b{i:02d}", executor_config=sim("run:delay=3")) for i in range(20)]
    pipeline.submit(second)
    pipeline.watcher()
    wait_for(lambda: streams.live() >= 10, timeout=60, what="second batch running")
    local_cluster.restart_apiserver()  # the watcher's resourceVersion is now too old: a real 410
    third = [workload("restart", f"c{i:02d}") for i in range(20)]
    pipeline.submit(third)
    all_keys = [w.ti.key for w in first + second + third]
    finals = pipeline.run_until(all_keys, timeout=180)
    assert set(finals.values()) == {"success"}
    assert set(pipeline.driver.final_counts().values()) == {1}
    published = streams.published()
    assert max(published.values()) == 1  # none published twice
    assert all(published[(pod_name(w), TaskState.SUCCEEDED)] == 1 for w in first + second + third)


def test_restarted_executor_applies_results_that_waited(pipeline, streams, redis_client, keys) -> None:
    first = pipeline.driver
    work = [workload("reboot", f"t{i:02d}") for i in range(30)]
    first.submit(work)
    pipeline.start()
    wait_for(lambda: streams.succeeded() == 30, timeout=120,
             what="all results published while the scheduler is down")
    # the old scheduler read some results but died before applying / acknowledging them
    redis_client.xreadgroup("executor", "sched-a", {keys.results("sched-a"): ">"}, count=7)
    first.executor.terminate()
    second = pipeline.new_driver()
    finals = second.run_until([w.ti.key for w in work], timeout=30)
    assert set(finals.values()) == {"success"}
    assert streams.results_pending() == 0


def test_a_watcher_that_starts_while_a_pull_backs_off_still_fails_the_task(pipeline, streams, core) -> None:
    """ErrImagePull is fatal, ImagePullBackOff (between two pulls) is not: a watcher that starts (or relists)
    while the pod backs off sees Pending, and fails the task at the kubelet's next pull, as with a real
    kubelet (the simulated one used to back off forever, so such a task stayed pending)."""
    pipeline.launcher()
    work = workload("late", "pull", executor_config=sim("errimagepull"))
    pipeline.submit([work])

    def backing_off() -> bool:
        pod = core.read_namespaced_pod(pod_name(work), pipeline.settings.namespace)
        statuses = pod.status.container_statuses or []
        return any(cs.state.waiting and cs.state.waiting.reason == "ImagePullBackOff" for cs in statuses)

    wait_for(backing_off, timeout=60, what="the pod backing off its image pull")
    pipeline.watcher()
    finals = pipeline.run_until([work.ti.key], timeout=90)
    assert finals[work.ti.key] == "failed"
    assert "ErrImagePull" in pipeline.driver.failures(work.ti.key)[0]
