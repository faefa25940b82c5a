"""A real Airflow: a task whose pod fails to pull its image twice is launched again by the executor
(``pod_launch_failure_retries``) and succeeds in try 1; the attempts show in ``get_task_log``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kubestream.executor.launches import task_key

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.airflow_config(AIRFLOW__KUBESTREAM__POD_LAUNCH_FAILURE_RETRIES="2"),
]


def test_errimagepull_twice_then_the_task_runs_in_try_1(e2e, monkeypatch) -> None:
    from airflow.models.taskinstancekey import TaskInstanceKey

    e2e.start_workers()
    e2e.ensure_scheduler()
    assert e2e.run_dag("ks_relaunch", "run-relaunch") == "success"
    state = e2e.stack.task_states("ks_relaunch", "run-relaunch")[("pulls_late", -1)]
    assert state["state"] == "success" and state["try_number"] == 1
    pod = task_key(TaskInstanceKey("ks_relaunch", "pulls_late", "run-relaunch", 1, -1)).pod_name()
    assert e2e.kubelet.pod_ordinals.count(e2e.namespace, pod) == 3  # two pods that never pulled, one that ran

    from kubestream.executor import KubeStreamExecutor

    for name, value in e2e.stack.env.items():
        if name.startswith("AIRFLOW__KUBESTREAM__"):
            monkeypatch.setenv(name, value)
    ti = SimpleNamespace(dag_id="ks_relaunch", task_id="pulls_late", run_id="run-relaunch", map_index=-1)
    sources, _ = KubeStreamExecutor().get_task_log(ti, 1)
    attempts = [line for line in sources if "launch attempt" in line]
    assert len(attempts) == 2 and all("ErrImagePull" in line for line in attempts), sources
