"""A task routed to a queue that no launcher serves: it stays queued until the scheduler revokes it."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="ks_queue", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def ks_queue():
    @task(queue="unserved")
    def stuck() -> None:
        pass

    stuck()


ks_queue()
