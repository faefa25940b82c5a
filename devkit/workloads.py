"""Airflow workloads as a scheduler would queue them, for tests and the benchmark.

``workload()`` builds an ``ExecuteTask`` (Airflow is imported when it is called, not before);
``sim()`` is an executor_config that picks the simulated kubelet's rule for the task's pod;
``jwt_with()`` a workload token carrying given claims.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

from redis.typing import EncodableT, FieldT

from kubestream.settings import Settings
from kubestream.signing import signer_for

SIM_ANNOTATION = "kubestream.io/sim"


def workload(dag_id: str, task_id: str, *, run_id: str = "run-1", try_number: int = 1, map_index: int = -1,
             queue: str = "default", executor_config: dict[str, Any] | None = None,
             token: str = "not-a-real-jwt", priority_weight: int = 1) -> Any:
    """An ``ExecuteTask`` for one task instance, with a fresh external executor id."""
    from airflow.executors.workloads import BundleInfo, ExecuteTask
    from airflow.executors.workloads.task import TaskInstanceDTO

    ti = TaskInstanceDTO(id=uuid.uuid4(), dag_id=dag_id, task_id=task_id, run_id=run_id, try_number=try_number,
                         map_index=map_index, dag_version_id=uuid.uuid4(), pool_slots=1,
                         priority_weight=priority_weight, queue=queue, external_executor_id=str(uuid.uuid4()),
                         executor_config=executor_config)
    return ExecuteTask(token=token, dag_rel_path=Path(f"{dag_id}.py"),
                       bundle_info=BundleInfo(name="dags-folder"), log_path=f"{dag_id}/{task_id}.log", ti=ti)


def pod_name(work: Any) -> str:
    """The name of the pod a workload runs in."""
    from kubestream.executor.launches import task_key

    return task_key(work.ti.key).pod_name()


def sim(rule: str) -> dict[str, Any]:
    """An executor_config whose pod_override picks the simulated kubelet's rule (e.g. ``exit:3``)."""
    return {"pod_override": {"metadata": {"annotations": {SIM_ANNOTATION: rule}}}}


def jwt_with(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT carrying ``claims`` (kubestream reads ``exp`` without verifying)."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS512', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


# The signing key of tests, the benchmark and the local demo: public, so never a production key.
DEV_SIGNING_KEYS = "dev=" + base64.b64encode(b"kubestream-dev-key-never-secret!").decode()


def signed(settings: Settings, stream: str, raw: bytes) -> dict[FieldT, EncodableT]:
    """Stream entry fields for ``raw`` as kubestream's own components write them to ``stream``."""
    return signer_for(settings).sign(stream, raw)
