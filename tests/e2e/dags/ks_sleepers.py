"""Tasks that run long enough to kill a scheduler under them (and to outlive its adoption)."""

from __future__ import annotations

import time
from datetime import datetime

from airflow.sdk import dag, task


def sleepers(dag_id: str, seconds: list[int]):
    @dag(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
    def sleeping():
        @task
        def sleeper(seconds: int) -> int:
            time.sleep(seconds)
            return seconds

        sleeper.expand(seconds=seconds)

    return sleeping()


sleepers("ks_slow", [30, 30, 30, 30])  # scheduler kill -9 while they run
sleepers("ks_ha", [45, 45])  # two HA schedulers, one killed
