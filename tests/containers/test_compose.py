"""docker-compose.yml really runs: the whole stack on a private dockerd, tasks run end to end.

Images: the repository's Dockerfile on a local Debian base (``conftest``); PostgreSQL, Redis and etcd from
Debian packages and the locally built kube-apiserver (``local/compose.local.yml``), since no registry is
reachable. A DAG of 20 tasks is triggered through the Airflow REST API; launchers are scaled 2 -> 4 -> 1
and one is killed while tasks run; a second run must succeed on what is left. ``down -v`` leaves no
container, network or volume.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.cluster import provision
from devkit.docker import REPO, Dockerd, build_cached, build_image
from devkit.procs import free_port, wait_for

pytestmark = [pytest.mark.containers, pytest.mark.timeout(2400)]

LOCAL = Path(__file__).with_name("local")
DAGS = Path(__file__).with_name("dags")
DAG_ID = "ks_compose"


class Stack:
    def __init__(self, dockerd: Dockerd, env: dict[str, str]) -> None:
        self.dockerd, self.project = dockerd, f"ks{uuid.uuid4().hex[:8]}"
        self.api = f"http://127.0.0.1:{env['AIRFLOW_API_PORT']}"
        self.env = {**dockerd.env, **env, "COMPOSE_HTTP_TIMEOUT": "900"}

    def compose(self, *args: str, timeout: float = 1200, check: bool = True) -> subprocess.CompletedProcess[str]:
        tool = shutil.which("docker-compose")
        assert tool
        out = subprocess.run([tool, "-p", self.project, "--project-directory", str(REPO),
                              "-f", str(REPO / "docker-compose.yml"), "-f", str(LOCAL / "compose.local.yml"), *args],
                             env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
        return out

    def containers(self, service: str, *, running: bool = True) -> list[str]:
        args = ["ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                "--filter", f"label=com.docker.compose.service={service}"]
        if not running:
            args.insert(1, "-a")
        return self.dockerd.docker(*args, timeout=120).stdout.split()

    def rest(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with urllib.request.urlopen(f"{self.api}/auth/token", timeout=30) as resp:
            token = json.loads(resp.read())["access_token"]
        req = urllib.request.Request(f"{self.api}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def trigger(self, run_id: str) -> None:
        self.rest("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"dag_run_id": run_id, "logical_date": None})

    def task_states(self, run_id: str) -> dict[str, str]:
        found = self.rest("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
        return {ti["task_id"]: ti["state"] for ti in found["task_instances"]}

    def run_state(self, run_id: str) -> str:
        return str(self.rest("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"])

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "30", check=False, timeout=300).stdout[-12000:]


@pytest.fixture
def stack(dockerd: Dockerd, base: str, launcher_image: str) -> Iterator[Stack]:
    if not shutil.which("docker-compose"):
        pytest.skip("no docker-compose (Debian's docker-compose package)")
    airflow_image = build_image(dockerd, "airflow", base)
    services = build_cached(dockerd, "kubestream/test-services", LOCAL, {"BASE": base},
                            dockerfile=LOCAL / "services.Dockerfile")
    ports = {name: str(free_port()) for name in ("POSTGRES_PORT", "REDIS_PORT", "ETCD_PORT", "ETCD_PEER_PORT",
                                                 "KUBE_APISERVER_PORT", "AIRFLOW_API_PORT")}
    stack = Stack(dockerd, {**ports, "KUBESTREAM_IMAGE": launcher_image, "AIRFLOW_IMAGE": airflow_image,
                            "SERVICES_IMAGE": services, "KUBE_APISERVER_BIN": provision(),
                            "AIRFLOW_DAGS_DIR": str(DAGS), "LAUNCHER_REPLICAS": "2"})
    try:
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False, timeout=1200)


def test_compose_stack_runs_tasks_while_launchers_scale(stack: Stack, dockerd: Dockerd) -> None:
    stack.compose("up", "-d")

    def api_up() -> bool:
        with urllib.request.urlopen(f"{stack.api}/api/v2/monitor/health", timeout=5) as resp:
            return resp.status == 200

    wait_for(api_up, timeout=900, interval=2, what="the Airflow API server of the compose stack")
    wait_for(lambda: stack.rest("GET", f"/api/v2/dags/{DAG_ID}")["dag_id"] == DAG_ID, timeout=600, interval=2,
             what=f"DAG {DAG_ID} parsed")
    assert len(stack.containers("launcher")) == 2
    assert len(stack.containers("watcher")) == 2

    stack.trigger("first")
    stack.compose("up", "-d", "--no-recreate", "--scale", "launcher=4")
    assert len(stack.containers("launcher")) == 4
    victim = stack.containers("launcher")[0]
    dockerd.docker("kill", victim, timeout=120)
    stack.compose("up", "-d", "--no-recreate", "--scale", "launcher=1")
    wait_for(lambda: len(stack.containers("launcher")) == 1, timeout=300, interval=2, what="one launcher left")

    def finished(run_id: str) -> bool:
        return stack.run_state(run_id) in ("success", "failed")

    try:
        wait_for(lambda: finished("first"), timeout=900, interval=3, what="the first DAG run")
        stack.trigger("second")
        wait_for(lambda: finished("second"), timeout=900, interval=3, what="the second DAG run")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{stack.logs()}") from exc
    for run_id in ("first", "second"):
        states = stack.task_states(run_id)
        assert len(states) == 20 and set(states.values()) == {"success"}, (run_id, states, stack.logs())
        assert stack.run_state(run_id) == "success"

    stack.compose("down", "-v", "--remove-orphans", "--timeout", "20")
    assert dockerd.docker("ps", "-aq").stdout.split() == []
    assert dockerd.docker("volume", "ls", "-q").stdout.split() == []
    networks = dockerd.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert set(networks) <= {"bridge", "host", "none"}, networks
    assert os.environ.get("DOCKER_HOST") != stack.env["DOCKER_HOST"]  # the private daemon, never the host's
