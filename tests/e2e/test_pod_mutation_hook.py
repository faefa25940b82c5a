"""A real Airflow with a pod_mutation_hook in airflow_local_settings (AIRFLOW_HOME/config, on the scheduler's
path as Airflow puts it): the task's pod, read from the kube-apiserver, has what the hook added on top of its
pod_template_file and pod_override; a task the hook raises for fails with the hook's error as the reason."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from kubestream.executor.launches import task_key

pytestmark = pytest.mark.e2e

LOCAL_SETTINGS = '''
from kubernetes.client import models as k8s


def pod_mutation_hook(pod):
    if pod.metadata.labels.get("dag_id") != "ks_mutation":
        return
    if pod.metadata.labels.get("task_id") == "refused":
        raise RuntimeError("cluster policy refuses task refused")
    pod.metadata.labels["policy"] = "applied"
    pod.spec.tolerations = [*(pod.spec.tolerations or []),
                            k8s.V1Toleration(key="dedicated", operator="Exists", effect="NoSchedule")]
    base = pod.spec.containers[0]
    base.env = [*(base.env or []), k8s.V1EnvVar(name="FROM_POLICY", value="applied")]
'''


def test_the_hook_mutates_the_task_pod_and_a_raising_hook_fails_the_task(e2e, admin_api) -> None:
    from airflow.models.taskinstancekey import TaskInstanceKey

    config = e2e.stack.home / "config"
    config.mkdir(exist_ok=True)
    (config / "airflow_local_settings.py").write_text(LOCAL_SETTINGS)
    e2e.start_workers()
    e2e.ensure_scheduler()  # started after the file is written: it imports airflow_local_settings at start
    assert e2e.run_dag("ks_mutation", "run-mutation") == "failed"  # `refused` fails on purpose
    states = e2e.stack.task_states("ks_mutation", "run-mutation")
    assert states[("mutated", -1)]["state"] == "success"  # the task itself asserts the template/override/hook env
    assert states[("refused", -1)]["state"] == "failed"

    key = TaskInstanceKey("ks_mutation", "mutated", "run-mutation", 1, -1)
    pod = k8s.CoreV1Api(admin_api).read_namespaced_pod(task_key(key).pod_name(), e2e.namespace)
    assert pod.metadata.labels["policy"] == "applied"  # the hook's
    assert pod.metadata.labels["team"] == "data-eng" and pod.metadata.labels["from-template"] == "yes"
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations or []
            if t.key == "dedicated"] == [("dedicated", "Exists", "NoSchedule")]
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env["FROM_POLICY"] == "applied" and env["FROM_OVERRIDE"] == "hello" and env["FROM_TEMPLATE"] == "yes"

    refused = TaskInstanceKey("ks_mutation", "refused", "run-mutation", 1, -1)
    assert not k8s.CoreV1Api(admin_api).list_namespaced_pod(
        e2e.namespace, field_selector=f"metadata.name={task_key(refused).pod_name()}").items  # never launched
    extra = e2e.stack._scalar("select extra from log where event = 'state mismatch' and dag_id = :d and "
                              "task_id = :t", d="ks_mutation", t="refused")
    assert "pod_mutation_hook failed: RuntimeError: cluster policy refuses task refused" in (extra or ""), extra
