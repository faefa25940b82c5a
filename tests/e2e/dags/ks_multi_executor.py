"""A DAG for a deployment with two executors (``[core] executor = kubestream...,LocalExecutor``):
each task picks its executor, and returns where it ran (a kubestream pod sets AIRFLOW_IS_K8S_EXECUTOR_POD;
the simulated kubelet runs it in the pod's own directory)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task


def _where() -> dict[str, str]:
    import os

    return {"pod": os.environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", ""), "cwd": os.getcwd()}


@dag(dag_id="ks_multi_executor", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def ks_multi_executor():
    @task
    def on_default() -> dict[str, str]:  # no executor given: the first one of [core] executor
        return _where()

    @task(executor="KubeStreamExecutor")
    def on_kubestream() -> dict[str, str]:
        return _where()

    @task(executor="LocalExecutor")
    def on_local() -> dict[str, str]:
        return _where()

    on_default() >> on_kubestream() >> on_local()


ks_multi_executor()
