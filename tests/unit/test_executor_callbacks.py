"""Executor callbacks (Airflow's ``ExecuteCallback`` workloads, e.g. a DeadlineAlert's ``SyncCallback``): the
scheduler hands them to the default executor whatever it supports. kubestream does not run them: each is
reported failed with the reason instead of raising, which stopped the scheduler at each start."""

from __future__ import annotations

import uuid
from pathlib import Path

from airflow.executors.workloads import ExecuteCallback
from airflow.executors.workloads.base import BundleInfo
from airflow.executors.workloads.callback import CallbackDTO, CallbackFetchMethod
from airflow.utils.state import CallbackState

from kubestream.executor import KubeStreamExecutor


def _callback() -> ExecuteCallback:
    return ExecuteCallback(callback=CallbackDTO(id=str(uuid.uuid4()), fetch_method=CallbackFetchMethod.IMPORT_PATH,
                                                data={"path": "alerts.notify_on_call", "dag_run_id": 1}),
                           token="t", dag_rel_path=Path("dag.py"), bundle_info=BundleInfo(name="dags"), log_path=None)


def test_an_executor_callback_is_reported_failed_with_the_reason_not_raised() -> None:
    executor = KubeStreamExecutor()  # nothing to connect to: a callback never reaches Redis
    workload = _callback()
    executor.queue_workload(workload, session=None)
    assert not executor.queued_tasks and not executor.queued_callbacks
    [(key, (state, info))] = executor.get_event_buffer().items()
    assert key == workload.key and state == CallbackState.FAILED
    assert info == ("KubeStreamExecutor does not run executor callbacks (ExecuteCallback notify_on_call); "
                    "run them with an executor that does")
