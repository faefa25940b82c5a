"""End-to-end fixtures: a real Airflow 3 (PostgreSQL, api-server, dag-processor, scheduler) running
KubeStreamExecutor, launchers and the watcher as processes, and the simulated kubelet in process
mode running each pod's real command (`python -m airflow.sdk.execution_time.execute_workload`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.airflowstack import AirflowStack
from devkit.components import Components
from devkit.kubelet import SimKubelet
from devkit.postgres import PostgresServer
from devkit.procs import wait_for
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.kubeapi import api_client
from kubestream.settings import Settings

DAGS = Path(__file__).with_name("dags")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as pg:
        yield pg


class E2E:
    """Everything one end-to-end test module runs against."""

    def __init__(self, stack: AirflowStack, settings: Settings, components: Components, namespace: str,
                 cluster, kubelet: SimKubelet) -> None:
        self.stack, self.settings, self.components = stack, settings, components
        self.namespace, self.cluster, self.kubelet = namespace, cluster, kubelet

    def start_workers(self, launchers: int = 2) -> None:
        if self.components.procs:
            return
        for _ in range(launchers):
            self.components.start("launcher", self.settings, self.cluster.kubeconfig("launcher"))
        self.components.start("watcher", self.settings, self.cluster.kubeconfig("watcher"))

    def ensure_scheduler(self, name: str = "scheduler") -> None:
        proc = self.stack.procs.get(name)
        if proc is None or proc.poll() is not None:
            self.stack.start_scheduler(name)

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        wait_for(lambda: self.stack.run_state(dag_id, run_id) in ("success", "failed"), timeout=timeout,
                 interval=1, what=f"dag run {dag_id}/{run_id} to finish")
        return self.stack.run_state(dag_id, run_id)

    def run_dag(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        self.stack.wait_dag_parsed(dag_id)
        self.stack.trigger(dag_id, run_id)
        return self.wait_run(dag_id, run_id, timeout)


@pytest.fixture(scope="module")
def e2e(request, postgres, redis_server, cluster, local_cluster, tmp_path_factory) -> Iterator[E2E]:
    work = tmp_path_factory.mktemp("e2e")
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    local_cluster.ensure_namespaces(cluster, (namespace,))
    db = f"af_{uuid.uuid4().hex[:8]}"
    _createdb(postgres, db)
    prefix = f"e2e{uuid.uuid4().hex[:6]}"
    kubestream = {"redis_url": redis_server.url, "key_prefix": prefix, "namespace": namespace,
                  "signing_keys": DEV_SIGNING_KEYS}
    marker = request.node.get_closest_marker("airflow_config")
    extra = marker.kwargs if marker else {}
    stack = AirflowStack(work / "airflow", DAGS, postgres.url.rsplit("/", 1)[0] + "/" + db, kubestream, extra=extra)
    settings = Settings.from_mapping({**kubestream, "reclaim_idle_seconds": "10", "retry_budget_seconds": "5",
                                      "delete_worker_pods": "false"})
    components = Components(work)
    kubelet = SimKubelet(api_client(cluster.kubeconfig("kubelet")), node_name=f"node-{namespace}", mode="process",
                         namespaces=[namespace], work_dir=work / "pods", extra_env=stack.task_env()).start()
    try:
        stack.migrate()
        stack.start_api_server()
        stack.start_dag_processor()
        env = E2E(stack, settings, components, namespace, cluster, kubelet)
        yield env
    finally:
        stack.stop()
        components.stop_all()
        kubelet.stop()


def _createdb(pg: PostgresServer, name: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
