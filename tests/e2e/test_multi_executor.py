"""kubestream and the LocalExecutor serve one Airflow deployment side by side
(``[core] executor = kubestream.executor.KubeStreamExecutor,LocalExecutor``): each task runs on the
executor it names, a task naming none on the first one. And two teams' kubestream executors in one
scheduler process (multi-team) never share a stream."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client as k8s

from devkit.procs import wait_for
from devkit.scheduler import DbStandIn, Driver, executor_env
from devkit.workloads import DEV_SIGNING_KEYS, workload
from kubestream.executor.launches import task_key
from kubestream.keys import Keys
from kubestream.messages import FIELD, decode
from kubestream.settings import Settings
from tests.e2e.airflow_config import KUBESTREAM_BESIDE_LOCAL

pytestmark = pytest.mark.airflow_config(**KUBESTREAM_BESIDE_LOCAL)  # read by the e2e fixture

DAG, RUN = "ks_multi_executor", "run-multi"


def _returned(e2e, task_id: str) -> dict[str, Any]:
    """What the task returned (its XCom), from the metadata DB."""
    value = e2e.stack._scalar("select value from xcom where dag_id = :d and run_id = :r and task_id = :t and "
                              "key = 'return_value'", d=DAG, r=RUN, t=task_id)
    while isinstance(value, str | bytes):
        value = json.loads(value)
    assert isinstance(value, dict), value
    return value


@pytest.mark.e2e
def test_kubestream_and_the_local_executor_serve_one_deployment(e2e, admin_api, redis_client) -> None:
    from airflow.models.taskinstancekey import TaskInstanceKey

    e2e.start_workers(launchers=1)
    e2e.ensure_scheduler()
    assert e2e.run_dag(DAG, RUN) == "success"
    states = e2e.stack.task_states(DAG, RUN)
    assert {k[0]: v["state"] for k, v in states.items()} == {
        "on_default": "success", "on_kubestream": "success", "on_local": "success"}

    core = k8s.CoreV1Api(admin_api)
    keys = Keys(e2e.settings.key_prefix)
    pods = {p.metadata.name for p in core.list_namespaced_pod(e2e.namespace).items}
    for task_id, on_kubestream in (("on_default", True), ("on_kubestream", True), ("on_local", False)):
        pod = task_key(TaskInstanceKey(DAG, task_id, RUN, 1, -1)).pod_name()

        def record(pod: str = pod) -> dict[str, str]:
            return {k.decode(): v.decode() for k, v in redis_client.hgetall(keys.task(pod)).items()}

        where = _returned(e2e, task_id)
        if on_kubestream:  # a pod ran it: the pod exists (the watcher keeps them here), its record says so
            assert pod in pods, (task_id, sorted(pods))
            assert where["pod"] == "True" and where["cwd"].endswith(pod), where
            assert record().get("namespace") == e2e.namespace, record()
            # the task's success reaches the DB before its pod's process exits: the pod's final state follows
            wait_for(lambda: record().get("state") == "succeeded", timeout=120, interval=0.5,
                     what=f"the record of {pod} to say succeeded")
        else:  # the LocalExecutor ran it in the scheduler's worker: no pod, no launch, no record
            assert pod not in pods and record() == {}, (sorted(pods), record())
            assert where["pod"] == "" and pod not in where["cwd"], where


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
