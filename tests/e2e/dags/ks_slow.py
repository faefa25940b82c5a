"""Tasks that run long enough to kill a scheduler under them."""

from __future__ import annotations

import time
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="ks_slow", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def ks_slow():
    @task
    def sleeper(seconds: int) -> int:
        time.sleep(seconds)
        return seconds

    sleeper.expand(seconds=[30, 30, 30, 30])


ks_slow()
