"""The compose stack's DAG: 20 independent tasks that each run a few seconds."""

from __future__ import annotations

import time
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="ks_compose", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=20)
def ks_compose():
    @task
    def work(i: int) -> int:
        time.sleep(3)
        return i * i

    for i in range(20):
        work.override(task_id=f"work_{i:02d}")(i)


ks_compose()
