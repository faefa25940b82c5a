"""A real Airflow runs DAGs through kubestream and gets the states the LocalExecutor would give."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kubernetes import client as k8s

from kubestream.executor.launches import task_key

pytestmark = pytest.mark.e2e


def test_plain_mapped_failing_and_retried_tasks(e2e) -> None:
    e2e.start_workers()
    e2e.ensure_scheduler()
    assert e2e.run_dag("ks_basic", "run-basic") == "failed"  # `boom` fails on purpose
    states = e2e.stack.task_states("ks_basic", "run-basic")
    assert {k: v["state"] for k, v in states.items()} == {
        ("plain", -1): "success",
        ("square", 0): "success", ("square", 1): "success", ("square", 2): "success",
        ("boom", -1): "failed",
        ("flaky", -1): "success",
    }
    assert states[("flaky", -1)]["try_number"] == 2  # failed once, retried, succeeded
    assert all(v["try_number"] == 1 for k, v in states.items() if k[0] != "flaky")


def test_kubernetes_executor_dag_runs_unchanged(e2e, admin_api) -> None:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import annotations_to_key

    e2e.start_workers()
    e2e.ensure_scheduler()
    assert e2e.run_dag("ks_override", "run-override") == "failed"  # never_starts cannot pull its image
    states = e2e.stack.task_states("ks_override", "run-override")
    assert states[("with_override", -1)]["state"] == "success"  # the task itself asserts the override's env
    assert states[("never_starts", -1)]["state"] == "failed"
    core = k8s.CoreV1Api(admin_api)
    key = TaskInstanceKey("ks_override", "with_override", "run-override", 1, -1)
    pod = core.read_namespaced_pod(task_key(key).pod_name(), e2e.namespace)
    assert pod.metadata.labels["team"] == "data-eng" and pod.metadata.annotations["owner"] == "kubestream-e2e"
    base = pod.spec.containers[0]
    assert base.name == "base" and base.resources.limits == {"memory": "512Mi"}
    assert ("FROM_OVERRIDE", "hello") in [(e.name, e.value) for e in base.env]
    assert annotations_to_key(pod.metadata.annotations) == key  # the provider recovers the key
    # the pod that never started: its reason reaches the task's failure info
    extra = e2e.stack._scalar("select extra from log where event = 'state mismatch' and dag_id = :d and "
                              "task_id = :t", d="ks_override", t="never_starts")
    assert "ErrImagePull" in (extra or ""), extra


def test_get_task_log_and_airflow_cli_group(e2e, monkeypatch) -> None:
    out = e2e.stack.airflow("kubestream", "status")  # settings from [kubestream] via AIRFLOW__KUBESTREAM__*
    assert f"{{{e2e.settings.key_prefix}}}:launch:default" in out.stdout
    # get_task_log on an executor that was never started, as the API server calls it
    from kubestream.executor import KubeStreamExecutor

    for name, value in e2e.stack.env.items():
        if name.startswith("AIRFLOW__KUBESTREAM__"):
            monkeypatch.setenv(name, value)
    ti = SimpleNamespace(dag_id="ks_override", task_id="never_starts", run_id="run-override", map_index=-1)
    sources, logs = KubeStreamExecutor().get_task_log(ti, 1)
    assert logs == []
    assert "last state failed: ErrImagePull" in sources[0] and e2e.namespace in sources[0]
