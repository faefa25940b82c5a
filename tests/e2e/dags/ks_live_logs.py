"""A task that prints numbered lines, then keeps running until the test releases it (a file named in the
run's conf appears), so its live log can be read while it runs."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, task


@dag(dag_id="ks_live_logs", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def live_logs():
    @task
    def talker(**context) -> str:
        release = Path(context["dag_run"].conf["release"])
        for i in range(1, 31):
            print(f"live line {i} of the talker", flush=True)
        deadline = time.monotonic() + 300
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        return "released" if release.exists() else "gave up"

    talker()


live_logs()
