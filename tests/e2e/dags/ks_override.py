"""A DAG written for the KubernetesExecutor, unchanged: executor_config with a V1Pod pod_override."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task
from kubernetes.client import models as k8s

OVERRIDE = k8s.V1Pod(
    metadata=k8s.V1ObjectMeta(labels={"team": "data-eng"}, annotations={"owner": "kubestream-e2e"}),
    spec=k8s.V1PodSpec(containers=[k8s.V1Container(
        name="base",
        env=[k8s.V1EnvVar(name="FROM_OVERRIDE", value="hello")],
        resources=k8s.V1ResourceRequirements(limits={"memory": "512Mi"}, requests={"cpu": "100m"}),
    )]),
)


@dag(dag_id="ks_override", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def ks_override():
    @task(executor_config={"pod_override": OVERRIDE})
    def with_override() -> str:
        import os

        assert os.environ["FROM_OVERRIDE"] == "hello"
        return os.environ["FROM_OVERRIDE"]

    @task(executor_config={"pod_override": k8s.V1Pod(metadata=k8s.V1ObjectMeta(
        annotations={"kubestream.io/sim": "errimagepull"}))})
    def never_starts() -> None:
        pass

    with_override()
    never_starts()


ks_override()
