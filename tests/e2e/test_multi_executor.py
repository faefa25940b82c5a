"""kubestream and the LocalExecutor serve one Airflow deployment side by side
(``[core] executor = kubestream.executor.KubeStreamExecutor,LocalExecutor``): each task runs on the
executor it names, a task naming none on the first one. Multi-team: a team's kubestream executor
(``LocalExecutor;team_a=kubestream.executor.KubeStreamExecutor``) runs its team's tasks on streams of its own,
and two teams' kubestream executors in one scheduler process never share a stream."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from devkit.airflowstack import EXECUTOR, AirflowStack
from devkit.components import Components
from devkit.kubelet import SimKubelet
from devkit.procs import wait_for
from devkit.scheduler import DbStandIn, Driver, executor_env
from devkit.workloads import DEV_SIGNING_KEYS, workload
from kubestream.executor.launches import task_key
from kubestream.keys import Keys
from kubestream.kubeapi import api_client
from kubestream.messages import FIELD, decode
from kubestream.settings import Settings
from tests.e2e.airflow_config import KUBESTREAM_BESIDE_LOCAL

pytestmark = pytest.mark.airflow_config(**KUBESTREAM_BESIDE_LOCAL)  # read by the e2e fixture

DAG, RUN = "ks_multi_executor", "run-multi"
DAGS = Path(__file__).with_name("dags")
TEAM = "team_a"


def _returned(stack: AirflowStack, task_id: str) -> dict[str, Any]:
    """What the task returned (its XCom), from the metadata DB."""
    value = stack._scalar("select value from xcom where dag_id = :d and run_id = :r and task_id = :t and "
                              "key = 'return_value'", d=DAG, r=RUN, t=task_id)
    while isinstance(value, str | bytes):
        value = json.loads(value)
    assert isinstance(value, dict), value
    return value


def _check_where_each_task_ran(stack: AirflowStack, namespace: str, prefix: str, admin_api: Any,
                               redis_client: Any) -> None:
    """on_default and on_kubestream ran as pods (pod, record under ``prefix``, the pod's env and directory);
    on_local ran in the LocalExecutor (no pod, no record)."""
    from airflow.models.taskinstancekey import TaskInstanceKey

    core = k8s.CoreV1Api(admin_api)
    keys = Keys(prefix)
    pods = {p.metadata.name for p in core.list_namespaced_pod(namespace).items}
    for task_id, on_kubestream in (("on_default", True), ("on_kubestream", True), ("on_local", False)):
        pod = task_key(TaskInstanceKey(DAG, task_id, RUN, 1, -1)).pod_name()

        def record(pod: str = pod) -> dict[str, str]:
            return {k.decode(): v.decode() for k, v in redis_client.hgetall(keys.task(pod)).items()}

        where = _returned(stack, task_id)
        if on_kubestream:  # a pod ran it: the pod exists (the watcher keeps them here), its record says so
            assert pod in pods, (task_id, sorted(pods))
            assert where["pod"] == "True" and where["cwd"].endswith(pod), where
            assert record().get("namespace") == namespace, record()
            # the task's success reaches the DB before its pod's process exits: the pod's final state follows
            wait_for(lambda: record().get("state") == "succeeded", timeout=120, interval=0.5,
                     what=f"the record of {pod} to say succeeded")
        else:  # the LocalExecutor ran it in the scheduler's worker: no pod, no launch, no record
            assert pod not in pods and record() == {}, (sorted(pods), record())
            assert where["pod"] == "" and pod not in where["cwd"], where


class TeamDeployment:
    def __init__(self, stack: AirflowStack, namespace: str, global_prefix: str) -> None:
        self.stack, self.namespace, self.global_prefix = stack, namespace, global_prefix


@pytest.fixture
def team_deployment(postgres, redis_server, cluster, local_cluster, tmp_path) -> Iterator[TeamDeployment]:
    """One multi-team Airflow deployment: the LocalExecutor for everyone, kubestream for team_a, whose DAG
    bundle is the e2e DAGs folder; team_a's launcher and watcher on team_a's key prefix."""
    import sqlalchemy

    namespace, db, prefix = f"e2e-{uuid.uuid4().hex[:8]}", f"af_{uuid.uuid4().hex[:8]}", f"e2e{uuid.uuid4().hex[:6]}"
    local_cluster.ensure_namespaces(cluster, (namespace,))
    engine = sqlalchemy.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{db}"'))
    engine.dispose()
    bundles = [{"name": "team_a_dags", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(DAGS)}, "team_name": TEAM}]
    stack = AirflowStack(tmp_path / "airflow", DAGS, postgres.url.rsplit("/", 1)[0] + "/" + db,
                         {"redis_url": redis_server.url, "key_prefix": prefix, "namespace": namespace,
                          "signing_keys": DEV_SIGNING_KEYS},
                         extra={"AIRFLOW__CORE__MULTI_TEAM": "True",
                                "AIRFLOW__CORE__EXECUTOR": f"LocalExecutor;{TEAM}={EXECUTOR}",
                                "AIRFLOW__CORE__PARALLELISM": "4",
                                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles)})
    team = Settings.from_mapping({**stack.team_settings(TEAM), "reclaim_idle_seconds": "10",
                                  "retry_budget_seconds": "5", "delete_worker_pods": "false"})
    components = Components(tmp_path)
    kubelet = SimKubelet(api_client(cluster.kubeconfig("kubelet")), node_name=f"node-{namespace}", mode="process",
                         namespaces=[namespace], work_dir=tmp_path / "pods", extra_env=stack.task_env()).start()
    try:
        stack.migrate()
        stack.start_api_server()
        stack.start_dag_processor()
        components.start("launcher", team, cluster.kubeconfig("launcher"))
        components.start("watcher", team, cluster.kubeconfig("watcher"))
        stack.start_scheduler()
        yield TeamDeployment(stack, namespace, prefix)
    finally:
        stack.stop()
        components.stop_all()
        kubelet.stop()


@pytest.mark.e2e
def test_a_teams_kubestream_runs_its_teams_tasks_on_its_own_streams(team_deployment, admin_api,
                                                                     redis_client) -> None:
    stack = team_deployment.stack
    team_prefix = stack.team_settings(TEAM)["key_prefix"]
    assert team_prefix != team_deployment.global_prefix
    stack.wait_dag_parsed(DAG)
    stack.trigger(DAG, RUN)
    wait_for(lambda: stack.run_state(DAG, RUN) in ("success", "failed"), timeout=300, interval=1,
             what=f"dag run {DAG}/{RUN} to finish")
    states = stack.task_states(DAG, RUN)
    assert stack.run_state(DAG, RUN) == "success", states
    _check_where_each_task_ran(stack, team_deployment.namespace, team_prefix, admin_api, redis_client)
    assert not list(redis_client.scan_iter(match=Keys(team_deployment.global_prefix).base + ":*"))
    scheduler_log = (stack.home / "scheduler.log").read_text()
    assert f"team={TEAM}" in scheduler_log  # the executor that started is the team's


@pytest.mark.e2e
def test_kubestream_and_the_local_executor_serve_one_deployment(e2e, admin_api, redis_client) -> None:
    e2e.start_workers(launchers=1)
    e2e.ensure_scheduler()
    assert e2e.run_dag(DAG, RUN) == "success"
    states = e2e.stack.task_states(DAG, RUN)
    assert {k[0]: v["state"] for k, v in states.items()} == {
        "on_default": "success", "on_kubestream": "success", "on_local": "success"}
    _check_where_each_task_ran(e2e.stack, e2e.namespace, e2e.settings.key_prefix, admin_api, redis_client)


def test_two_teams_executors_in_one_scheduler_never_share_a_stream(redis_server, redis_client,
                                                                     monkeypatch) -> None:
    """A scheduler runs one executor per team (``[core] executor = ...;team_a=...;team_b=...``), all with its
    job id: each team's executor takes its prefix and settings from its team's configuration."""
    base = Settings.from_mapping({"redis_url": redis_server.url, "signing_keys": DEV_SIGNING_KEYS})
    prefixes = {"team_a": f"ta{uuid.uuid4().hex[:8]}", "team_b": f"tb{uuid.uuid4().hex[:8]}"}
    global_prefix = f"gl{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AIRFLOW__KUBESTREAM__KEY_PREFIX", global_prefix)
    for team, prefix in prefixes.items():
        for name, value in executor_env(base, key_prefix=prefix).items():
            monkeypatch.setenv(name.replace("AIRFLOW__", f"AIRFLOW__{team.upper()}___", 1), value)
    executors = {team: DbStandIn(team_name=team) for team in prefixes}
    try:
        for ex in executors.values():
            ex.job_id = 42  # one scheduler job: both default to scheduler_id job-42
            ex.start()
        for team, ex in executors.items():
            Driver(ex).submit([workload(f"dag_of_{team}", "t1"), workload(f"dag_of_{team}", "t2")])
        for team, ex in executors.items():
            keys = Keys(prefixes[team])
            assert ex.scheduler_id == "job-42" and ex.results_stream == keys.results("job-42")
            launched = [decode(f[FIELD]) for _, f in redis_client.xrange(keys.launch("default"))]
            assert sorted((m.key.dag_id, m.key.task_id) for m in launched) == [
                (f"dag_of_{team}", "t1"), (f"dag_of_{team}", "t2")]
            assert redis_client.exists(keys.scheduler("job-42"))  # each team's claim, no SchedulerIdInUse
        assert not list(redis_client.scan_iter(match=Keys(global_prefix).base + ":*"))  # nothing global
    finally:
        for ex in executors.values():
            ex.end()
