"""The local demo's DAG: an extract, a mapped transform, a load, and a KubernetesExecutor-style pod_override."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task
from kubernetes.client import models as k8s


@dag(dag_id="kubestream_demo", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
     tags=["kubestream"])
def kubestream_demo():
    @task
    def extract() -> list[int]:
        return [1, 2, 3, 4, 5, 6]

    @task
    def transform(value: int) -> int:
        return value * value

    @task
    def load(values: list[int]) -> int:
        total = sum(values)
        print(f"loaded {len(values)} values, total {total}")
        return total

    @task(executor_config={"pod_override": k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(labels={"team": "demo"}),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(
            name="base", env=[k8s.V1EnvVar(name="GREETING", value="hello from pod_override")])]))})
    def greet() -> str:
        import os

        return os.environ["GREETING"]

    load(transform.expand(value=extract()))
    greet()


kubestream_demo()
