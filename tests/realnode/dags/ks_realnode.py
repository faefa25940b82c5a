"""Real-node DAG: one task that succeeds (and says where it ran), one that fails on purpose."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="ks_realnode", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def ks_realnode():
    @task
    def where() -> str:
        import os

        # a container of the real node: PID namespace of its own, the pod's name as hostname is not set
        # (hostNetwork), the kubelet's environment for the pod
        return f"pid={os.getpid()} pod={os.environ.get('KUBESTREAM_POD', '')}"

    @task
    def boom() -> None:
        raise RuntimeError("this task fails on purpose")

    where()
    boom()


ks_realnode()
