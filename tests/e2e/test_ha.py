"""Two schedulers (HA, PostgreSQL) share the work; kill one, the other adopts its tasks."""

from __future__ import annotations

import pytest

from kubestream.localcluster.procs import wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.airflow_config(
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
        AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD="8",
        AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL="3",
    ),
]


def test_two_schedulers_share_work_and_one_adopts_the_others_tasks(e2e) -> None:
    e2e.start_workers()
    e2e.stack.wait_dag_parsed("ks_slow")
    e2e.stack.wait_dag_parsed("ks_basic")
    job_of = {}
    for name in ("s1", "s2"):  # one after the other, so each job row maps to its process
        e2e.stack.start_scheduler(name)
        job_of[name] = wait_for(lambda: e2e.stack._scalar(
            "select max(id) from job where job_type = 'SchedulerJob' and state = 'running' "
            "and id > :last", last=max(job_of.values(), default=0)), timeout=60, what=f"{name}'s job")
    runs = [("ks_slow", f"ha-slow-{i}") for i in range(2)] + [("ks_basic", "ha-basic")]
    for dag_id, run_id in runs:
        e2e.stack.trigger(dag_id, run_id)

    def jobs_running_slow() -> set[int]:
        tis = [v for i in range(2) for v in e2e.stack.task_states("ks_slow", f"ha-slow-{i}").values()]
        if len(tis) == 8 and all(v["state"] == "running" for v in tis):
            return {v["queued_by_job_id"] for v in tis}
        return set()

    jobs = wait_for(jobs_running_slow, timeout=180, interval=0.5, what="all eight sleepers running")
    assert jobs == set(job_of.values()), f"both schedulers should have queued some of the work: {jobs}"
    e2e.stack.kill("s1")  # kill -9 one scheduler while its tasks run
    for dag_id, run_id in runs:
        e2e.wait_run(dag_id, run_id, timeout=300)
    for i in range(2):
        states = e2e.stack.task_states("ks_slow", f"ha-slow-{i}")
        assert [(v["state"], v["try_number"]) for v in states.values()] == [("success", 1)] * 4
        assert {v["queued_by_job_id"] for v in states.values()} == {job_of["s2"]}  # s1's tasks were adopted
    assert e2e.stack.run_state("ks_basic", "ha-basic") == "failed"  # its `boom` task fails on purpose
    basic = e2e.stack.task_states("ks_basic", "ha-basic")
    assert basic[("plain", -1)]["state"] == "success" and basic[("flaky", -1)]["state"] == "success"
