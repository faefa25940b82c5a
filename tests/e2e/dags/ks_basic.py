"""End-to-end DAG: a plain task, a mapped task, a failing task, a task that fails once then succeeds."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task


@dag(dag_id="ks_basic", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def ks_basic():
    @task
    def plain() -> int:
        return 3

    @task
    def square(x: int) -> int:
        return x * x

    @task
    def boom() -> None:
        raise RuntimeError("this task fails on purpose")

    @task(retries=1, retry_delay=timedelta(seconds=1))
    def flaky(**context) -> str:
        if context["ti"].try_number < 2:
            raise RuntimeError("first try fails on purpose")
        return "ok on try " + str(context["ti"].try_number)

    square.expand(x=[1, 2, 3])
    plain()
    boom()
    flaky()


ks_basic()
