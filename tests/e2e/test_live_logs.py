"""The Airflow UI shows a running task's live log lines: the API server's log endpoint calls
``KubeStreamExecutor.get_task_log`` (on an executor it never started, with Redis access only), which
asks a watcher for the pod's last lines through Redis; the watcher reads them through ``pods/log``
from the simulated kubelet, which serves the task process's output."""

from __future__ import annotations

import json
import urllib.request
from types import SimpleNamespace

import pytest

from devkit.procs import wait_for

pytestmark = [pytest.mark.e2e,
              pytest.mark.airflow_config(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True")]  # no login

DAG, RUN = "ks_live_logs", "run-live"


def api_log(e2e) -> str:
    """The log of the talker's first try as the UI reads it (JSON), as text."""
    url = (f"http://127.0.0.1:{e2e.stack.api_port}/api/v2/dags/{DAG}/dagRuns/{RUN}/taskInstances/talker/logs/1"
           "?full_content=true")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.dumps(json.loads(resp.read()))


def test_a_running_tasks_live_lines_reach_the_api_server(e2e, tmp_path, monkeypatch) -> None:
    e2e.start_workers()
    e2e.ensure_scheduler()
    release = tmp_path / "release"
    e2e.stack.wait_dag_parsed(DAG)
    e2e.stack.trigger(DAG, RUN, conf={"release": str(release)})
    try:
        wait_for(lambda: e2e.stack.task_states(DAG, RUN).get(("talker", -1), {}).get("state") == "running",
                 timeout=180, interval=1, what="the talker running")

        # through the API server, as the UI reads it: kubestream's live lines are among its sources
        def live_lines_shown() -> str:
            text = api_log(e2e)
            return text if "live line 30 of the talker" in text and "kubestream: last 100 lines" in text else ""

        shown = wait_for(live_lines_shown, timeout=120, interval=1, what="the live lines in the API server's log")
        assert "live line 1 of the talker" in str(shown)

        # and straight from get_task_log, on an executor that was never started (as the API server's)
        from kubestream.executor import KubeStreamExecutor

        for name, value in e2e.stack.env.items():
            if name.startswith("AIRFLOW__KUBESTREAM__"):
                monkeypatch.setenv(name, value)
        ti = SimpleNamespace(dag_id=DAG, task_id="talker", run_id=RUN, map_index=-1)
        messages, logs = KubeStreamExecutor().get_task_log(ti, 1)
        assert len(logs) == 1 and "live line 30 of the talker" in logs[0], messages
        assert "last state running" in messages[0] and "last 100 lines of container base" in messages[1]
        assert e2e.stack.task_states(DAG, RUN)[("talker", -1)]["state"] == "running"  # read while it ran
    finally:
        release.touch()
    assert e2e.wait_run(DAG, RUN) == "success"
