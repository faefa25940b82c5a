"""Two schedulers (HA, PostgreSQL) share the work; kill one, the other adopts its tasks."""

from __future__ import annotations

import os
import signal

import pytest

from devkit.procs import wait_for
from tests.e2e.airflow_config import FAST_ADOPTION

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.airflow_config(
        **FAST_ADOPTION,
    ),
]


def test_two_schedulers_share_work_and_one_adopts_the_others_tasks(e2e) -> None:
    stack = e2e.stack
    e2e.start_workers()
    stack.wait_dag_parsed("ks_ha")
    job_of: dict[str, int] = {}

    def start(name: str) -> None:  # one after the other, so each job row maps to its process
        stack.start_scheduler(name)
        job_of[name] = wait_for(lambda: stack._scalar(
            "select max(id) from job where job_type = 'SchedulerJob' and state = 'running' and id > :last",
            last=max(job_of.values(), default=0)), timeout=60, what=f"{name}'s job")

    def queued_by(run_id: str, state: str = "running") -> set[int]:
        tis = stack.task_states("ks_ha", run_id).values()
        return {v["queued_by_job_id"] for v in tis} if len(tis) == 2 and all(
            v["state"] == state for v in tis) else set()

    start("s1")
    stack.trigger("ks_ha", "ha-a")
    assert wait_for(lambda: queued_by("ha-a"), timeout=120, what="run A running") == {job_of["s1"]}
    start("s2")
    # Which scheduler queues what is Airflow's choice; freeze s1 for a moment so s2 takes run B
    os.kill(stack.procs["s1"].pid, signal.SIGSTOP)
    try:
        stack.trigger("ks_ha", "ha-b")
        wait_for(lambda: {v["state"] for v in stack.task_states("ks_ha", "ha-b").values()} == {"queued"},
                 timeout=60, interval=0.2, what="run B queued")
    finally:
        os.kill(stack.procs["s1"].pid, signal.SIGCONT)
    assert wait_for(lambda: queued_by("ha-b"), timeout=120, what="run B running") == {job_of["s2"]}
    e2e.stack.kill("s1")  # kill -9 the scheduler whose tasks are running
    for run_id in ("ha-a", "ha-b"):
        assert e2e.wait_run("ks_ha", run_id, timeout=300) == "success"
        states = stack.task_states("ks_ha", run_id)
        assert [(v["state"], v["try_number"]) for v in states.values()] == [("success", 1)] * 2
        assert {v["queued_by_job_id"] for v in states.values()} == {job_of["s2"]}  # run A was adopted
