"""A real Airflow runs DAGs through kubestream and gets the states the LocalExecutor would give."""

from __future__ import annotations


import pytest

from kubestream.localcluster.procs import wait_for

pytestmark = pytest.mark.e2e


def _wait_run(stack, dag_id: str, run_id: str, timeout: float = 300) -> str:
    wait_for(lambda: stack.run_state(dag_id, run_id) in ("success", "failed"), timeout=timeout, interval=1,
             what=f"dag run {dag_id}/{run_id} to finish")
    return stack.run_state(dag_id, run_id)


def test_plain_mapped_failing_and_retried_tasks(e2e) -> None:
    e2e.start_workers()
    e2e.stack.start_scheduler()
    e2e.stack.wait_dag_parsed("ks_basic")
    e2e.stack.trigger("ks_basic", "run-basic")
    assert _wait_run(e2e.stack, "ks_basic", "run-basic") == "failed"  # `boom` fails on purpose
    states = e2e.stack.task_states("ks_basic", "run-basic")
    assert {k: v["state"] for k, v in states.items()} == {
        ("plain", -1): "success",
        ("square", 0): "success", ("square", 1): "success", ("square", 2): "success",
        ("boom", -1): "failed",
        ("flaky", -1): "success",
    }
    assert states[("flaky", -1)]["try_number"] == 2
    assert states[("plain", -1)]["try_number"] == 1
