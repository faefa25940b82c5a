"""A real Airflow 3.3 (PostgreSQL, api-server, dag-processor, scheduler with KubeStreamExecutor) whose
tasks run as containers on the real node: the task process (``execute_workload``) runs inside a pod's
container started by the real kubelet and talks to the execution API over the host network.

The container's image is the node's Debian base; its Python, Airflow and kubestream come from this
machine through read-only hostPath mounts (``devkit.realnode.host_runtime_template``: ``/usr``, the
repository, the venv and its Python): the project's ``airflow`` image is not built for this tier (it
would cost a full image build per session).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devkit.airflowstack import AirflowStack
from devkit.components import Components
from devkit.postgres import PostgresServer
from devkit.realnode import host_runtime_template
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.settings import Settings

pytestmark = pytest.mark.realnode

DAGS = Path(__file__).with_name("dags")


@pytest.fixture
def airflow_on_node(redis_server, cluster, local_cluster, real_node, tmp_path) -> Iterator[AirflowStack]:
    namespace = f"af-{uuid.uuid4().hex[:8]}"
    local_cluster.ensure_namespaces(cluster, (namespace,))
    kubestream = {"redis_url": redis_server.url, "key_prefix": f"rn{uuid.uuid4().hex[:6]}", "namespace": namespace,
                  "signing_keys": DEV_SIGNING_KEYS}
    components = Components(tmp_path)
    with PostgresServer() as pg:
        stack = AirflowStack(tmp_path / "airflow", DAGS, pg.url, kubestream)
        template = tmp_path / "pod_template.yaml"
        pods = host_runtime_template(real_node.base_image, stack.task_env(), [stack.home])
        pods["spec"]["containers"][0]["env"].append(
            {"name": "KUBESTREAM_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        template.write_text(yaml.safe_dump(pods))
        settings = Settings.from_mapping({**kubestream, "pod_template_file": str(template), "pod_policy": "off",
                                          "worker_image": real_node.base_image, "delete_worker_pods": "false",
                                          "reclaim_idle_seconds": "10", "retry_budget_seconds": "5"})
        try:
            stack.migrate()
            stack.start_api_server()
            stack.start_dag_processor()
            stack.start_scheduler()
            components.start("launcher", settings, cluster.kubeconfig("launcher"))
            components.start("watcher", settings, cluster.kubeconfig("watcher"))
            stack.namespace = namespace  # type: ignore[attr-defined]
            yield stack
        finally:
            stack.stop()
            components.stop_all()


def test_airflow_tasks_run_in_containers_of_the_real_node(airflow_on_node, core, node) -> None:
    from devkit.procs import wait_for

    stack = airflow_on_node
    stack.wait_dag_parsed("ks_realnode")
    stack.trigger("ks_realnode", "run-real")
    wait_for(lambda: stack.run_state("ks_realnode", "run-real") in ("success", "failed"), timeout=300, interval=1,
             what="the ks_realnode run")
    states = {k: v["state"] for k, v in stack.task_states("ks_realnode", "run-real").items()}
    pods = core.list_namespaced_pod(stack.namespace).items
    logs = {p.metadata.name: core.read_namespaced_pod_log(p.metadata.name, stack.namespace,
                                                          _preload_content=False).data.decode()[-3000:]
            + str([cs.state for cs in p.status.container_statuses or ()]) for p in pods}
    assert states == {("where", -1): "success", ("boom", -1): "failed"}, logs
    assert {p.spec.node_name for p in pods} == {"127.0.0.1"}
    # each task ran in a container of the node's dockerd
    for pod in pods:
        ids = node.docker("ps", "-aq", "--filter", f"label=io.kubernetes.pod.name={pod.metadata.name}",
                          "--filter", "label=io.kubernetes.container.name=base").stdout.split()
        assert ids, pod.metadata.name
