"""Pod launch failure retries (``pod_launch_failure_retries``) through the whole pipeline: executor ->
Redis -> launcher process -> real kube-apiserver -> simulated kubelet -> watcher process -> executor.

The Airflow DB is stood in for: a task's try is ``queued`` there until its pod succeeded (then
``success``), unless the test says otherwise (``running``: the task process started)."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import pytest

from devkit.workloads import pod_name, sim, workload
from kubestream.executor.relaunch import DISPATCH_SEPARATOR
from kubestream.messages import TaskState
from kubestream.taskkey import TaskKey

pytestmark = pytest.mark.cluster


def db_stand_in(executor: Any, streams: Any, states: dict[str, str]) -> None:
    """The try's state in the 'Airflow DB': ``states[task_id]`` (default queued), success once its pod
    succeeded (the task record says so)."""

    def task_states_from_db(keys: Sequence[TaskKey]) -> dict[TaskKey, str | None]:
        out: dict[TaskKey, str | None] = {}
        for k in keys:
            done = streams.task(k.pod_name()).get("state") == "succeeded"
            out[k] = "success" if done else states.get(k.task_id, "queued")
        return out

    executor.task_states_from_db = task_states_from_db


def test_pre_execution_failures_are_launched_again_within_the_same_try(pipeline, streams, namespace) -> None:
    pipeline.start(launchers=1)
    pipeline.wait_serving(streams)
    driver = pipeline.new_driver(pod_launch_failure_retries="2")
    db_stand_in(driver.executor, streams, {"started": "running"})
    flaky = workload("relaunch", "flaky", executor_config=sim("errimagepull:times=2"))  # pulls on the 3rd pod
    broken = workload("relaunch", "broken", executor_config=sim("errimagepull"))  # never pulls
    started = workload("relaunch", "started", executor_config=sim("errimagepull"))  # DB: the task runs
    crashed = workload("relaunch", "crashed", executor_config=sim("exit:3"))  # Error: excluded
    work = [flaky, broken, started, crashed]
    driver.submit(work)
    finals = driver.run_until([w.ti.key for w in work], timeout=180)

    assert finals[flaky.ti.key] == "success" and driver.failures(flaky.ti.key) == []  # no failure reported
    assert flaky.ti.key.try_number == 1 and set(driver.final_counts().values()) == {1}
    ordinals = pipeline.kubelet.pod_ordinals
    assert ordinals.count(namespace, pod_name(flaky)) == 3  # three pods of the one name, one after the other
    record = streams.task(pod_name(flaky))
    assert record["dispatch"] == f"{flaky.ti.external_executor_id}{DISPATCH_SEPARATOR}2"
    ti = types.SimpleNamespace(dag_id="relaunch", task_id="flaky", run_id="run-1", map_index=-1)
    lines, _ = driver.executor.get_task_log(ti, 1)
    attempts = [line for line in lines if "launch attempt" in line]
    assert len(attempts) == 2 and all("ErrImagePull" in line for line in attempts), lines
    assert "last state succeeded" in lines[0]

    # retries exhausted: the third failure is reported, with the reasons of the earlier two
    assert finals[broken.ti.key] == "failed"
    info = driver.failures(broken.ti.key)
    assert len(info) == 1 and info[0].startswith("ErrImagePull") and info[0].count("ErrImagePull") == 3, info
    assert ordinals.count(namespace, pod_name(broken)) == 3

    # the task process started (the DB says running), or the container ran and exited (Error): reported
    for w, reason in ((started, "ErrImagePull"), (crashed, "exit code 3")):
        assert finals[w.ti.key] == "failed"
        info = driver.failures(w.ti.key)
        assert len(info) == 1 and reason in info[0] and "earlier launch attempts" not in info[0], info
        assert ordinals.count(namespace, pod_name(w)) == 1
        assert streams.task(pod_name(w))["dispatch"] == w.ti.external_executor_id
    # the old pods' events never reached the executor as the new dispatch's: one FAILED per dispatch
    assert streams.published()[(pod_name(broken), TaskState.FAILED)] == 3


def test_retries_zero_reports_the_first_pre_execution_failure(pipeline, streams, namespace) -> None:
    pipeline.start(launchers=1)
    pipeline.wait_serving(streams)
    driver = pipeline.new_driver(pod_launch_failure_retries="0")
    db_stand_in(driver.executor, streams, {})
    w = workload("relaunch0", "flaky", executor_config=sim("errimagepull:times=1"))
    driver.submit([w])
    assert driver.run_until([w.ti.key], timeout=120)[w.ti.key] == "failed"
    assert "ErrImagePull" in driver.failures(w.ti.key)[0]
    assert pipeline.kubelet.pod_ordinals.count(namespace, pod_name(w)) == 1
