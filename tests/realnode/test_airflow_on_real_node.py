"""A real Airflow 3.3 (PostgreSQL, api-server, dag-processor, scheduler with KubeStreamExecutor) whose
tasks run as containers on the real node: the task process (``execute_workload``) runs inside a pod's
container started by the real kubelet and talks to the execution API over the host network.

Two ways to get Airflow into the container:

- the project's ``airflow`` image (Dockerfile target ``airflow`` on the node's Debian base), loaded into
  the node's dockerd from the image ``devkit.docker`` last cached (``docker save``/``docker load`` across
  daemons), else built there (a few minutes, once per machine). A cached image may hold an older
  kubestream: the task process in it is Airflow's alone;
- the node's Debian base with this machine's Python and Airflow mounted read-only
  (``devkit.realnode.host_runtime_template``), as ``scripts/demo --real-node`` does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.airflowstack import AirflowStack
from devkit.components import Components
from devkit.docker import build_image
from devkit.docker import cache_dir as docker_cache_dir
from devkit.postgres import PostgresServer
from devkit.realnode import RealNode, host_runtime_template, pod_template
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.settings import DEFAULT_FATAL_REASONS, Settings
from tests.realnode.test_real_pods import OOM_REASONS

pytestmark = pytest.mark.realnode

DAGS = Path(__file__).with_name("dags")


@contextmanager
def airflow_stack(redis_server, cluster, local_cluster, tmp_path: Path,
                  pod_template: Callable[[AirflowStack], dict[str, Any]], image: str) -> Iterator[AirflowStack]:
    """Airflow + launcher + watcher whose task pods start from ``pod_template(stack)``."""
    namespace = f"af-{uuid.uuid4().hex[:8]}"
    local_cluster.ensure_namespaces(cluster, (namespace,))
    kubestream = {"redis_url": redis_server.url, "key_prefix": f"rn{uuid.uuid4().hex[:6]}", "namespace": namespace,
                  "signing_keys": DEV_SIGNING_KEYS}
    components = Components(tmp_path)
    with PostgresServer() as pg:
        stack = AirflowStack(tmp_path / "airflow", DAGS, pg.url, kubestream)
        template = tmp_path / "pod_template.yaml"
        template.write_text(yaml.safe_dump(pod_template(stack)))
        # the watcher fails a task whose image is missing, as for ErrImagePull (a local image with pull policy
        # Never never appears by itself)
        settings = Settings.from_mapping({**kubestream, "pod_template_file": str(template), "pod_policy": "off",
                                          "fatal_container_reasons": ",".join((*DEFAULT_FATAL_REASONS,
                                                                                "ErrImageNeverPull")),
                                          "worker_image": image, "delete_worker_pods": "false",
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


@pytest.fixture
def airflow_on_node(redis_server, cluster, local_cluster, real_node, tmp_path) -> Iterator[AirflowStack]:
    def template(stack: AirflowStack) -> dict[str, Any]:
        pods = host_runtime_template(real_node.base_image, stack.task_env(), [stack.home])
        pods["spec"]["containers"][0]["env"].append(
            {"name": "KUBESTREAM_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        return pods

    with airflow_stack(redis_server, cluster, local_cluster, tmp_path, template, real_node.base_image) as stack:
        yield stack


def airflow_image(node: RealNode, base: str) -> str:
    """The project's ``airflow`` image (Dockerfile target ``airflow`` on the node's Debian base) in the node's
    dockerd: loaded from the newest one ``devkit.docker`` cached, else built there (a few minutes)."""
    cached = sorted(docker_cache_dir().glob("image-kubestream-airflow-*.tar"), key=lambda p: p.stat().st_mtime)
    if cached:
        out = node.docker("load", "-i", str(cached[-1]), timeout=900).stdout
        loaded = [line.split("Loaded image: ", 1)[1].strip() for line in out.splitlines() if "Loaded image: " in line]
        if loaded:
            return loaded[0]
    return build_image(node.dockerd(), "airflow", base)


@pytest.fixture
def airflow_in_its_image(redis_server, cluster, local_cluster, real_node, node, tmp_path) -> Iterator[AirflowStack]:
    image = airflow_image(node, real_node.base_image)

    def template(stack: AirflowStack) -> dict[str, Any]:
        pods = pod_template(image)
        env = {k: v for k, v in stack.task_env().items() if k not in ("PATH", "AIRFLOW_HOME")}
        container = pods["spec"]["containers"][0]
        container["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
        pods["spec"]["volumes"] = [{"name": "dags", "hostPath": {"path": str(DAGS), "type": "Directory"}}]
        container["volumeMounts"] = [{"name": "dags", "mountPath": str(DAGS), "readOnly": True}]
        return pods

    with airflow_stack(redis_server, cluster, local_cluster, tmp_path, template, image) as stack:
        stack.image = image  # type: ignore[attr-defined]
        yield stack


def run_dag(stack: AirflowStack, dag_id: str, run_id: str, timeout: float = 300) -> dict[str, tuple[str, int]]:
    """Trigger ``dag_id`` and wait for its run to end: task_id -> (state, try_number)."""
    from devkit.procs import wait_for

    stack.wait_dag_parsed(dag_id)
    stack.trigger(dag_id, run_id)
    wait_for(lambda: stack.run_state(dag_id, run_id) in ("success", "failed"), timeout=timeout, interval=1,
             what=f"the {dag_id} run")
    return {task: (row["state"], row["try_number"]) for (task, _), row in stack.task_states(dag_id, run_id).items()}


def test_airflow_tasks_run_in_containers_of_the_real_node(airflow_on_node, core, node) -> None:
    stack = airflow_on_node
    states = run_dag(stack, "ks_realnode", "run-real")
    pods = core.list_namespaced_pod(stack.namespace).items
    logs = {p.metadata.name: core.read_namespaced_pod_log(p.metadata.name, stack.namespace,
                                                          _preload_content=False).data.decode()[-3000:]
            + str([cs.state for cs in p.status.container_statuses or ()]) for p in pods}
    assert states == {"where": ("success", 1), "boom": ("failed", 1)}, logs
    assert {p.spec.node_name for p in pods} == {"127.0.0.1"}
    # each task ran in a container of the node's dockerd
    for pod in pods:
        ids = node.docker("ps", "-aq", "--filter", f"label=io.kubernetes.pod.name={pod.metadata.name}",
                          "--filter", "label=io.kubernetes.container.name=base").stdout.split()
        assert ids, pod.metadata.name


def test_airflow_tasks_run_in_the_projects_airflow_image(airflow_in_its_image, core, node) -> None:
    stack = airflow_in_its_image
    states = run_dag(stack, "ks_realnode", "run-image")
    pods = core.list_namespaced_pod(stack.namespace).items
    logs = {p.metadata.name: core.read_namespaced_pod_log(p.metadata.name, stack.namespace,
                                                          _preload_content=False).data.decode()[-3000:]
            for p in pods}
    assert states == {"where": ("success", 1), "boom": ("failed", 1)}, logs
    assert {c.image for p in pods for c in p.spec.containers} == {stack.image}


def test_airflow_shows_the_failures_only_a_real_kubelet_makes(airflow_on_node, monkeypatch) -> None:
    """A container that exits 3 before the task starts, an image missing from the node, a worker killed by its
    memory limit: each task instance fails in its first try, and the reason the real kubelet gave is what
    ``get_task_log`` shows (on an executor never started, as the API server calls it). (A task whose own
    process outgrows the limit is killed inside a worker that lives on: Airflow's task log says so, and
    the pod ends as its worker does.)"""
    from types import SimpleNamespace

    from devkit.procs import wait_for
    from kubestream.executor import KubeStreamExecutor

    stack, dag_id, run_id = airflow_on_node, "ks_realnode_failures", "run-failures"
    states = run_dag(stack, dag_id, run_id, timeout=400)
    for name, value in stack.env.items():
        if name.startswith("AIRFLOW__KUBESTREAM__"):
            monkeypatch.setenv(name, value)

    def shown(task_id: str) -> str:
        ti = SimpleNamespace(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=-1)
        return "\n".join(KubeStreamExecutor().get_task_log(ti, 1)[0])


    def all_recorded() -> dict[str, str] | None:
        """Airflow may mark a task failed before the pod's last state reaches its record: wait for both."""
        got = {task: shown(task) for task in states}
        return got if all("last state failed" in text for text in got.values()) else None

    logs = wait_for(all_recorded, timeout=120, interval=1, what="every task's failure recorded")
    assert states == {"exits": ("failed", 1), "no_image": ("failed", 1), "oom": ("failed", 1)}, logs
    assert "last state failed: Error (exit code 3)" in logs["exits"], logs
    assert "last state failed: ErrImageNeverPull" in logs["no_image"], logs
    # Docker may miss the OOM event on a loaded machine: then the kubelet says Error (exit code 137)
    assert any(f"last state failed: {reason}" in logs["oom"] for reason in OOM_REASONS), logs
