"""Two long tasks per run, for the HA test: long enough to outlive a scheduler and its adoption."""

from __future__ import annotations

import time
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="ks_ha", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def ks_ha():
    @task
    def sleeper(seconds: int) -> int:
        time.sleep(seconds)
        return seconds

    sleeper.expand(seconds=[45, 45])


ks_ha()
