"""Scheduler restarts do not kill running tasks; tasks stuck in queued are revoked for good."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from devkit.procs import wait_for
from kubestream.executor.launches import task_key
from kubestream.keys import Keys
from kubestream.taskkey import DISPATCH_ANNOTATION, TaskKey
from kubestream.workers.podspec import build_pod
from tests.e2e.airflow_config import FAST_ADOPTION

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.airflow_config(
        **FAST_ADOPTION,
        AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="30",
        AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL="5",
        AIRFLOW__SCHEDULER__NUM_STUCK_IN_QUEUED_RETRIES="1",
    ),
]


def test_scheduler_killed_while_tasks_run_adopts_them_and_kills_none(e2e, redis_client) -> None:
    e2e.start_workers()
    e2e.ensure_scheduler("s1")
    e2e.stack.wait_dag_parsed("ks_slow")
    e2e.stack.trigger("ks_slow", "run-adopt")
    wait_for(lambda: [v["state"] for v in e2e.stack.task_states("ks_slow", "run-adopt").values()] == ["running"] * 4,
             timeout=120, interval=0.5, what="all four sleepers running")
    first_job = {v["queued_by_job_id"] for v in e2e.stack.task_states("ks_slow", "run-adopt").values()}
    e2e.stack.kill("s1")  # kill -9 while the tasks run
    e2e.stack.start_scheduler("s2")
    assert e2e.wait_run("ks_slow", "run-adopt", timeout=240) == "success"
    states = e2e.stack.task_states("ks_slow", "run-adopt")
    # none failed, none ran a second try because of the restart
    assert [(v["state"], v["try_number"]) for v in states.values()] == [("success", 1)] * 4
    adopted_by = {v["queued_by_job_id"] for v in states.values()}
    assert len(adopted_by) == 1 and adopted_by != first_job  # the new scheduler adopted all of them
    keys = Keys(e2e.settings.key_prefix)
    owners = {redis_client.hget(keys.task(TaskKey("ks_slow", "sleeper", "run-adopt", 1, i).pod_name()), "owner")
              for i in range(4)}
    assert owners == {f"job-{adopted_by.pop()}".encode()}


def test_tasks_stuck_in_queued_are_revoked_and_no_pod_ever_runs(e2e, admin_api, redis_client) -> None:
    from airflow.models.taskinstancekey import TaskInstanceKey

    e2e.start_workers()
    e2e.ensure_scheduler("s2")
    e2e.stack.wait_dag_parsed("ks_queue")
    e2e.stack.trigger("ks_queue", "run-stuck")
    # no launcher serves "unserved": revoked after 30 s, requeued once, revoked again, failed
    assert e2e.wait_run("ks_queue", "run-stuck", timeout=240) == "failed"
    revokes = e2e.stack._scalar("select count(*) from log where dag_id = 'ks_queue' and event like '%stuck in queued%'")
    assert revokes >= 2
    keys = Keys(e2e.settings.key_prefix)
    pod_name = task_key(TaskInstanceKey("ks_queue", "stuck", "run-stuck", 1, -1)).pod_name()
    assert redis_client.hget(keys.task(pod_name), "revoked") == b"1"
    # a launcher for that queue comes up late: it skips every revoked / superseded launch
    launcher = e2e.components.start("launcher", e2e.settings, e2e.cluster.kubeconfig("launcher"), queues="unserved")
    stream = keys.launch("unserved")
    wait_for(lambda: redis_client.xlen(stream) == 0 and redis_client.xpending(stream, "launchers")["pending"] == 0,
             timeout=60, what="the late launcher to settle every launch")
    assert launcher.poll() is None
    core = k8s.CoreV1Api(admin_api)
    assert pod_name not in {p.metadata.name for p in core.list_namespaced_pod(e2e.namespace).items}
    # a pod that appears anyway for the revoked dispatch is deleted by the watcher
    dispatch = redis_client.hget(keys.task(pod_name), "dispatch").decode()
    pod = build_pod(key=TaskKey("ks_queue", "stuck", "run-stuck", 1), namespace=e2e.namespace, image="img",
                    workload_json="{}", scheduler_id="late", template=None,
                    pod_override={"metadata": {"annotations": {DISPATCH_ANNOTATION: dispatch,
                                                               "kubestream.io/sim": "run"}}})
    core.create_namespaced_pod(e2e.namespace, pod)
    wait_for(lambda: pod_name not in {p.metadata.name for p in core.list_namespaced_pod(e2e.namespace).items},
             timeout=60, what="the late pod of a revoked task deleted")
