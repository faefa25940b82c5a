"""A real Airflow 3 deployment on this machine running kubestream's executor.

``AirflowStack`` runs ``airflow api-server``, ``airflow dag-processor`` and any
number of ``airflow scheduler`` processes with one shared environment (one JWT
secret, the execution API URL, the metadata DB, ``[kubestream]`` settings).
``task_env()`` is what a task pod needs to reach that Airflow (the simulated
kubelet in process mode runs each pod's command with it).

Multi-team (``AIRFLOW__CORE__MULTI_TEAM=True`` and an executor list such as
``LocalExecutor;team_a=kubestream.executor.KubeStreamExecutor``): each team with a
kubestream executor gets the same ``[kubestream]`` settings under its own name
(``AIRFLOW__TEAM_A___KUBESTREAM__*``) with a key prefix of its own
(``team_settings(team)``), and ``migrate()`` creates the teams the DAG bundles name.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from devkit.procs import free_port, spawn, stop_pid, wait_for

EXECUTOR = "kubestream.executor.KubeStreamExecutor"


def team_executors(executor_setting: str) -> dict[str, list[str]]:
    """``[core] executor`` per team: ``"A,B;team_a=C"`` -> ``{"": ["A", "B"], "team_a": ["C"]}``."""
    teams: dict[str, list[str]] = {}
    for part in executor_setting.split(";"):
        team, sep, names = part.strip().rpartition("=")
        teams[team.strip() if sep else ""] = [n.strip() for n in names.split(",") if n.strip()]
    return teams


def team_prefix(prefix: str, team: str) -> str:
    """The key prefix a team's kubestream gets in a dev stack (its own, never the global one)."""
    return f"{prefix}.{team}"[:32]


class AirflowStack:
    def __init__(self, home: Path, dags_folder: Path, db_url: str, kubestream: dict[str, str],
                 extra: dict[str, str] | None = None) -> None:
        self.home, self.dags_folder, self.db_url = Path(home), Path(dags_folder), db_url
        self.api_port = free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        airflow_bin = Path(sys.executable).parent
        self.env = {
            **os.environ,
            "PATH": f"{airflow_bin}:{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            **{f"AIRFLOW__KUBESTREAM__{k.upper()}": v for k, v in kubestream.items()},
            **(extra or {}),
        }
        self.teams: dict[str, dict[str, str]] = {}  # team -> its [kubestream] settings
        if self.env.get("AIRFLOW__CORE__MULTI_TEAM", "").lower() == "true":
            for team, names in team_executors(self.env["AIRFLOW__CORE__EXECUTOR"]).items():
                if team and any(n.endswith("KubeStreamExecutor") for n in names):
                    own = {**kubestream, "key_prefix": team_prefix(kubestream.get("key_prefix", "kubestream"), team)}
                    self.teams[team] = own
                    for k, v in own.items():
                        self.env.setdefault(f"AIRFLOW__{team.upper()}___KUBESTREAM__{k.upper()}", v)

    def team_settings(self, team: str) -> dict[str, str]:
        """A team's kubestream settings (lowercase names), for its launchers and watcher."""
        return dict(self.teams[team])

    # -- processes --------------------------------------------------------------------------
    def airflow(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        return out

    def migrate(self) -> None:
        self.airflow("db", "migrate")
        if self.env.get("AIRFLOW__CORE__MULTI_TEAM", "").lower() == "true":
            self.airflow("teams", "sync")  # the teams the DAG bundles name, before anything parses them

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = spawn([sys.executable, "-m", "airflow", *args], self.home / f"{name}.log", env=self.env)
        self.procs[name] = proc
        return proc

    def start_api_server(self) -> None:
        proc = self._start("api-server", "api-server", "--port", str(self.api_port), "--workers", "1")

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"api-server exited; see {self.home / 'api-server.log'}")
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health", timeout=2) as r:
                return r.status == 200

        wait_for(up, timeout=120, interval=0.5, what="the Airflow API server")

    def start_dag_processor(self) -> None:
        self._start("dag-processor", "dag-processor")

    def start_scheduler(self, name: str = "scheduler") -> subprocess.Popen[bytes]:
        return self._start(name, "scheduler")

    def kill(self, name: str, sig: int = 9) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            stop_pid(proc.pid, timeout=20)
            try:
                os.killpg(proc.pid, 9)  # gunicorn/uvicorn workers and other children
            except ProcessLookupError:
                pass

    def task_env(self) -> dict[str, str]:
        """The environment a task pod runs with (no DB access: tasks talk to the execution API)."""
        return {k: v for k, v in self.env.items() if k.startswith("AIRFLOW") and "SQL_ALCHEMY" not in k
                and "KUBESTREAM__" not in k} | {"PATH": self.env["PATH"]}  # nor any team's [kubestream]

    # -- queries ------------------------------------------------------------------------------
    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any] | None = None) -> None:
        args = ["dags", "trigger", dag_id, "--run-id", run_id]
        if conf:
            args += ["--conf", json.dumps(conf)]
        self.airflow(*args)

    def wait_dag_parsed(self, dag_id: str, timeout: float = 120) -> None:
        wait_for(lambda: self._scalar("select count(*) from serialized_dag where dag_id = :d", d=dag_id),
                 timeout=timeout, interval=1, what=f"DAG {dag_id} parsed")

    def _scalar(self, sql: str, **params: Any) -> Any:
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return conn.execute(sqlalchemy.text(sql), params).scalar()
        finally:
            engine.dispose()

    def task_states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
        """(task_id, map_index) -> {state, try_number, ...} straight from the metadata DB."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sqlalchemy.text(
                    "select task_id, map_index, state, try_number, queued_by_job_id, external_executor_id "
                    "from task_instance where dag_id = :d and run_id = :r"), {"d": dag_id, "r": run_id}).mappings()
                return {(r["task_id"], r["map_index"]): dict(r) for r in rows}
        finally:
            engine.dispose()

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        return self._scalar("select state from dag_run where dag_id = :d and run_id = :r", d=dag_id, r=run_id)
