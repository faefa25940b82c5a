"""docker-compose.yml is a valid compose-spec file for docker compose v2 and docker-compose 1.29.

The schema, ``compose_spec.json``, is the compose-spec JSON schema as shipped by docker-compose
1.29.2 (``compose/config/compose_spec.json`` of the PyPI package and of Debian's docker-compose
1.29.2-3; Apache-2.0). No dockerd is needed here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose_spec.json")
VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolated(value: Any, typed: bool = False) -> Any:
    """``value`` with every ``${NAME:-default}`` at its default, as compose interpolates before validating;
    a mapping's value that is one variable and comes out as digits becomes an integer (compose's typed
    fields such as ``deploy.replicas``; list items such as command arguments stay strings)."""
    if isinstance(value, dict):
        return {k: interpolated(v, typed=True) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolated(v) for v in value]
    if isinstance(value, str):
        text = VARIABLE.sub(lambda m: m.group(2) or "", value)
        return int(text) if typed and VARIABLE.fullmatch(value) and text.isdigit() else text
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_valid_against_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(interpolated(compose)), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_no_version_key_and_host_networking_everywhere(compose: dict[str, Any]) -> None:
    assert "version" not in compose  # obsolete in the compose-spec; compose v2 warns about it
    services = compose["services"]
    assert {s for s, svc in services.items() if svc.get("network_mode") != "host"} == set()
    expected = {"postgres", "redis", "etcd", "kube-apiserver", "kube-credentials", "kube-setup", "kubelet",
                "launcher", "watcher", "janitor", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor"}
    assert expected <= set(services)


def test_stack_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert services["watcher"]["deploy"]["replicas"] == 2
    assert services["launcher"]["deploy"]["replicas"] == "${LAUNCHER_REPLICAS:-2}"
    airflow_env = services["airflow-scheduler"]["environment"]
    assert airflow_env["AIRFLOW__CORE__EXECUTOR"] == "kubestream.executor.KubeStreamExecutor"
    # the scheduler and the components sign and verify with the same keys
    assert airflow_env["AIRFLOW__KUBESTREAM__SIGNING_KEYS"] == services["launcher"]["environment"][
        "KUBESTREAM_SIGNING_KEYS"] == services["watcher"]["environment"]["KUBESTREAM_SIGNING_KEYS"]
    for name in ("launcher", "watcher", "janitor", "kubelet"):
        assert services[name]["depends_on"]["kube-setup"]["condition"] == "service_completed_successfully"
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    for name in ("postgres", "redis", "etcd", "watcher"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"


def test_docker_compose_1_29_accepts_it(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    if not tool:
        pytest.skip("no docker-compose (Debian's docker-compose package is 1.29)")
    env = {**os.environ, "LAUNCHER_REPLICAS": "3"}
    out = subprocess.run([tool, "--project-directory", str(REPO), "-f", str(COMPOSE), "config"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["services"]["launcher"]["deploy"]["replicas"] == 3
    assert "6379" in resolved["services"]["launcher"]["environment"]["KUBESTREAM_REDIS_URL"]
