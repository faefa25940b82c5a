"""End-to-end DAG: a task whose first two pods cannot pull their image (simulated kubelet rule
``errimagepull:times=2``); the third pod runs it. With ``pod_launch_failure_retries >= 2`` it succeeds
in try 1, without retries of its own."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task
from kubernetes.client import models as k8s

PULLS_ON_THIRD_POD = k8s.V1Pod(metadata=k8s.V1ObjectMeta(annotations={"kubestream.io/sim": "errimagepull:times=2"}))


@dag(dag_id="ks_relaunch", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def ks_relaunch():
    @task(retries=0, executor_config={"pod_override": PULLS_ON_THIRD_POD})
    def pulls_late(**context) -> int:
        return int(context["ti"].try_number)

    pulls_late()


ks_relaunch()
