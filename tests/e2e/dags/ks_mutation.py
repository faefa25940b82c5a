"""A KubernetesExecutor DAG, unchanged, for a deployment with a pod_mutation_hook (test_pod_mutation_hook.py
writes the hook to AIRFLOW_HOME/config/airflow_local_settings.py): pod_override with a namespace,
pod_template_file, and a task the hook refuses."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, task
from kubernetes.client import models as k8s

TEMPLATE = str(Path(__file__).with_name("templates") / "ks_mutation_pod.yaml")
# the namespace the deployment runs its pods in (the DAG names it, as a KubernetesExecutor DAG names its own)
NAMESPACE = os.environ.get("AIRFLOW__KUBESTREAM__NAMESPACE", "default")
OVERRIDE = k8s.V1Pod(
    metadata=k8s.V1ObjectMeta(namespace=NAMESPACE, labels={"team": "data-eng"}),
    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", env=[k8s.V1EnvVar(name="FROM_OVERRIDE",
                                                                                  value="hello")])]),
)


@dag(dag_id="ks_mutation", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def ks_mutation():
    @task(executor_config={"pod_override": OVERRIDE, "pod_template_file": TEMPLATE})
    def mutated() -> None:
        import os

        # template, override and the hook's env all reached the running pod
        assert os.environ["FROM_TEMPLATE"] == "yes", os.environ.get("FROM_TEMPLATE")
        assert os.environ["FROM_OVERRIDE"] == "hello", os.environ.get("FROM_OVERRIDE")
        assert os.environ["FROM_POLICY"] == "applied", os.environ.get("FROM_POLICY")

    @task
    def refused() -> None:
        pass

    mutated()
    refused()


ks_mutation()
