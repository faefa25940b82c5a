"""Real-node DAG: tasks whose pods fail as only a real kubelet makes them fail (each with retries=0)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task
from kubernetes.client import models as k8s


def base(**fields: object) -> dict[str, k8s.V1Pod]:
    """A pod_override changing the task container ``base``."""
    return {"pod_override": k8s.V1Pod(spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", **fields)]))}


@dag(dag_id="ks_realnode_failures", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def ks_realnode_failures():
    @task(retries=0, executor_config=base(command=["sh", "-c", "exit 3"]))
    def exits() -> None:
        """Never runs: the container's command exits 3 before the task process starts."""

    @task(retries=0, executor_config=base(image="kubestream.invalid/no-such-image:1"))
    def no_image() -> None:
        """Never runs: the image is not on the node and may not be pulled."""

    @task(retries=0, executor_config=base(resources=k8s.V1ResourceRequirements(limits={"memory": "48Mi"})))
    def oom() -> None:
        """Never runs: the worker outgrows its memory limit while it starts, and the kernel kills it."""

    exits()
    no_image()
    oom()


ks_realnode_failures()
