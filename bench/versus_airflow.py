"""The Airflow side of the side-by-side benchmark: a real metadata DB (PostgreSQL, ``airflow db
migrate``), one DAG of N tasks serialized into it, and for each measured configuration what the
scheduler would have made of it: a Job row, a DagRun, its task instances QUEUED (try 1,
``queued_by_job_id``, an ``external_executor_id`` when the executor pre-assigns one) and one
``ExecuteTask.make`` workload per task instance, signed with the executor's ``jwt_generator``.

``airflow_env`` is the environment both executors run under (it must be in ``os.environ`` before
Airflow is imported); ``AirflowDb`` prepares the DB and hands out ``QueuedRun`` objects.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DAG_ID = "versus"
DAG_FILE = '''"""{tasks} tasks that are never run for real: the benchmark's simulated kubelet completes their pods."""
from datetime import datetime

from airflow.sdk import DAG, BaseOperator


class Noop(BaseOperator):
    def execute(self, context):
        return None


with DAG("{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    for i in range({tasks}):
        Noop(task_id=f"t{{i:05d}}")
'''


def airflow_env(home: Path, db_url: str, *, tasks: int, namespace: str, kubeconfig: str) -> dict[str, str]:
    """What both executors read: the metadata DB, parallelism >= the task count (so that neither is held
    back by ``[core] parallelism``), one JWT secret, and the KubernetesExecutor's cluster (through the
    latency proxy's kubeconfig) and namespace. Logging at WARNING for both (at INFO the KubernetesExecutor
    logs several lines per task)."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "KubernetesExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(max(32, tasks)),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__KUBERNETES_EXECUTOR__IN_CLUSTER": "False",
        "AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": kubeconfig,
        "AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE": namespace,
        "AIRFLOW__KUBERNETES_EXECUTOR__WORKER_CONTAINER_REPOSITORY": "apache/airflow",
        "AIRFLOW__KUBERNETES_EXECUTOR__WORKER_CONTAINER_TAG": "3.3.2",
    }


@dataclass
class QueuedRun:
    """One configuration's Job row, DagRun and queued task instances, as workloads."""

    job_id: int
    run_id: str
    workloads: list[Any]

    @property
    def keys(self) -> set[tuple[str, str, str, int, int]]:
        return {(w.ti.dag_id, w.ti.task_id, w.ti.run_id, int(w.ti.try_number), int(w.ti.map_index))
                for w in self.workloads}


class AirflowDb:
    """The metadata DB, migrated, with the benchmark's DAG in it. Import only with ``airflow_env`` set."""

    def __init__(self, home: Path, tasks: int) -> None:
        self.home, self.tasks = home, tasks

    def prepare(self, env: dict[str, str]) -> None:
        """``airflow db migrate`` and ``airflow dags reserialize`` of the benchmark's DAG (subprocesses)."""
        dags = self.home / "dags"
        dags.mkdir(parents=True, exist_ok=True)
        (dags / f"{DAG_ID}.py").write_text(DAG_FILE.format(tasks=self.tasks, dag_id=DAG_ID))
        for args in (["db", "migrate"], ["dags", "reserialize"]):
            out = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True,
                                 timeout=600)
            if out.returncode != 0:
                raise RuntimeError(f"airflow {' '.join(args)} failed:\n{out.stderr[-3000:]}")

    @contextmanager
    def _session(self) -> Iterator[Any]:
        from airflow.utils.session import create_session

        with create_session() as session:
            yield session

    def job(self, executor_class: str) -> int:
        """A running scheduler Job row (the executors label their pods with its id)."""
        from airflow.jobs.job import Job

        with self._session() as session:
            job = Job()
            job.job_type, job.state, job.executor_class = "SchedulerJob", "running", executor_class
            job.start_date = job.latest_heartbeat = datetime.now(UTC)
            session.add(job)
            session.flush()
            return int(job.id)

    def queued_run(self, run_id: str, executor: Any, *, tasks: int) -> QueuedRun:
        """A DagRun of ``tasks`` task instances, all QUEUED by ``executor``'s job, and their workloads
        (``ExecuteTask.make`` with ``executor.jwt_generator``, as the scheduler builds them)."""
        from airflow.executors import workloads
        from airflow.models.serialized_dag import SerializedDagModel
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.state import DagRunState, TaskInstanceState
        from airflow.utils.types import DagRunTriggeredByType, DagRunType
        from sqlalchemy import select

        pre_assign = bool(getattr(executor, "pre_assigns_external_executor_id", False))
        with self._session() as session:
            dag = SerializedDagModel.get_dag(DAG_ID, session=session)
            if dag is None:
                raise RuntimeError(f"DAG {DAG_ID} is not in the DB")
            now = datetime.now(UTC)
            run = dag.create_dagrun(run_id=run_id, run_after=now, run_type=DagRunType.MANUAL,
                                    triggered_by=DagRunTriggeredByType.TEST, state=DagRunState.RUNNING,
                                    start_date=now, session=session)
            tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == DAG_ID,
                                                             TaskInstance.run_id == run.run_id)
                                  .order_by(TaskInstance.task_id)).all()[:tasks]
            for ti in tis:
                ti.state, ti.try_number = TaskInstanceState.QUEUED, 1
                ti.queued_by_job_id, ti.queued_dttm = executor.job_id, now
                if pre_assign:
                    ti.external_executor_id = str(uuid.uuid4())
            session.flush()
            generator = executor.jwt_generator
            made = [workloads.ExecuteTask.make(ti, generator=generator) for ti in tis]
            session.commit()
        return QueuedRun(int(executor.job_id), run_id, made)
