"""Helpers for integration tests: workloads, component processes, driving the executor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kubestream.executor import KubeStreamExecutor
from devkit.procs import stop_pid, wait_for
from kubestream.settings import AIRFLOW_ENV_PREFIX, Settings


# Airflow settings that make a dead scheduler's tasks adoptable within seconds (e2e)
FAST_ADOPTION = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "8",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "3",
}


def workload(dag_id: str, task_id: str, *, run_id: str = "run-1", try_number: int = 1, map_index: int = -1,
             queue: str = "default", executor_config: dict | None = None, token: str = "not-a-real-jwt") -> Any:
    from airflow.executors.workloads import BundleInfo, ExecuteTask
    from airflow.executors.workloads.task import TaskInstanceDTO

    ti = TaskInstanceDTO(id=uuid.uuid4(), dag_id=dag_id, task_id=task_id, run_id=run_id, try_number=try_number,
                         map_index=map_index, dag_version_id=uuid.uuid4(), pool_slots=1, priority_weight=1,
                         queue=queue, external_executor_id=str(uuid.uuid4()), executor_config=executor_config)
    return ExecuteTask(token=token, dag_rel_path=Path(f"{dag_id}.py"),
                       bundle_info=BundleInfo(name="dags-folder"), log_path=f"{dag_id}/{task_id}.log", ti=ti)


def jwt_with(claims: dict) -> str:
    """An unsigned-looking JWT carrying ``claims`` (kubestream reads ``exp`` without verifying)."""
    import base64
    import json

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS512', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def sim(rule: str) -> dict:
    """An executor_config whose pod_override picks the simulated kubelet's rule."""
    return {"pod_override": {"metadata": {"annotations": {"kubestream.io/sim": rule}}}}


def settings_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {**os.environ, **settings.to_env()}
    env.update({f"KUBESTREAM_{k.upper()}": v for k, v in overrides.items()})
    return env


def airflow_env(settings: Settings) -> dict[str, str]:
    return settings.to_env(AIRFLOW_ENV_PREFIX)


class Components:
    """kubestream launcher/watcher processes started through the real CLI; all stopped at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, kind: str, settings: Settings, kubeconfig: str, **overrides: str) -> subprocess.Popen[bytes]:
        name = overrides.setdefault("consumer_name", f"{kind}-{len(self.procs)}")
        env = settings_env(settings, kube_config=kubeconfig, **overrides)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "kubestream.cli", kind], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_pid(proc.pid, timeout=15)

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))


class Driver:
    """Plays the scheduler loop: trigger, sync, collect the event buffer."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.events: list[tuple[Any, Any, Any]] = []
        self.calls: list[tuple[str, float]] = []

    def submit(self, workloads: Iterable[Any]) -> None:
        for w in workloads:
            self.executor.queue_workload(w, session=None)
        self._timed("trigger_tasks", lambda: self.executor.trigger_tasks(len(self.executor.queued_tasks)))

    def _timed(self, name: str, call: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return call()
        finally:
            self.calls.append((name, time.perf_counter() - t0))

    def step(self) -> None:
        self._timed("sync", self.executor.sync)
        for key, (state, info) in self.executor.get_event_buffer().items():
            self.events.append((key, str(state.value if hasattr(state, "value") else state), info))

    def finals(self) -> dict[Any, str]:
        return {k: s for k, s, _ in self.events if s not in ("running", "queued")}

    def final_counts(self) -> Counter:
        return Counter(k for k, s, _ in self.events if s not in ("running", "queued"))

    def run_until(self, keys: Iterable[Any], *, timeout: float, what: str = "final states") -> dict[Any, str]:
        wanted = set(keys)

        def done() -> bool:
            self.step()
            return wanted <= set(self.finals())

        wait_for(done, timeout=timeout, interval=0.05, what=what)
        return self.finals()



class DbStandIn(KubeStreamExecutor):
    """The executor, with the Airflow DB answering 'success' for tasks whose pod succeeded
    (the integration tests run no scheduler that would write it; the e2e tests do)."""

    def task_states_from_db(self, keys):
        return {k: "success" for k in keys}


def proxied_kubeconfig(tmp_path: Path, proxy: Any, token: str, identity: str) -> str:
    """A kubeconfig reaching the apiserver through a loopback HttpFaultProxy as ``identity``."""
    import json

    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "proxied",
        "clusters": [{"name": "proxied", "cluster": {"server": proxy.url}}],
        "users": [{"name": identity, "user": {"token": token}}],
        "contexts": [{"name": "proxied", "context": {"cluster": "proxied", "user": identity}}],
    }
    path = tmp_path / f"kubeconfig-proxied-{identity}"
    path.write_text(json.dumps(config))  # JSON is valid YAML
    path.chmod(0o600)
    return str(path)
