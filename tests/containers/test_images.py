"""kubestream's launcher image, built from the repository's Dockerfile on a local Debian base.

It runs ``kubestream``, as a non-root user, without pip or compilers, and its
HEALTHCHECK (``kubestream launcher --check``) turns healthy once a launcher in
the container refreshes its health key in a real Redis while talking to the
real local kube-apiserver.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devkit.cluster import ClusterState
from devkit.docker import Dockerd
from devkit.procs import wait_for
from kubestream.settings import Settings

pytestmark = [pytest.mark.containers, pytest.mark.cluster, pytest.mark.timeout(1800)]


def component_env(settings: Settings) -> list[str]:
    """``-e`` arguments: the test's settings as KUBESTREAM_* variables, the kubeconfig at its mount point."""
    env = {"KUBESTREAM_REDIS_URL": settings.redis_url, "KUBESTREAM_KEY_PREFIX": settings.key_prefix,
           "KUBESTREAM_NAMESPACE": settings.namespace, "KUBESTREAM_KUBE_CONFIG": "/etc/kubestream/kubeconfig",
           "KUBESTREAM_SIGNING_KEYS": settings.signing_keys, "KUBESTREAM_HEALTH_TTL_SECONDS": "6"}
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]


@pytest.fixture
def kubeconfig(cluster: ClusterState, tmp_path: Path) -> Path:
    """The launcher's kubeconfig with its CA inline, readable by the image's non-root user."""
    config = yaml.safe_load(Path(cluster.kubeconfig("launcher")).read_text())
    ca = base64.b64encode(Path(cluster.ca_file).read_bytes()).decode()
    for entry in config["clusters"]:
        entry["cluster"].pop("certificate-authority", None)
        entry["cluster"]["certificate-authority-data"] = ca
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)
    return path


@pytest.fixture
def containers(dockerd: Dockerd) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        dockerd.docker("rm", "-f", "-v", name, check=False, timeout=120)


def test_launcher_image_runs_kubestream_as_non_root_without_build_tools(dockerd: Dockerd, launcher_image: str) -> None:
    out = dockerd.docker("run", "--rm", "--network", "host", launcher_image, "--help").stdout
    assert "launcher" in out and "watcher" in out and "janitor" in out
    probe = dockerd.docker("run", "--rm", "--network", "host", "--entrypoint", "sh", launcher_image, "-c",
                           "id -u; for t in pip pip3 gcc cc make apt-get; do command -v $t || true; done; "
                           "python3 -c 'import kubestream, kubernetes, redis; print(kubestream.__name__)'").stdout
    lines = probe.split()
    assert lines[0] != "0"
    assert lines[-1] == "kubestream"
    # Debian's apt-get stays (the base's package manager); pip and compilers do not
    assert [line for line in lines[1:-1] if not line.endswith("/apt-get")] == []
    config = json.loads(dockerd.docker("image", "inspect", "--format", "{{json .Config}}", launcher_image).stdout)
    assert config["Healthcheck"]["Test"] == ["CMD", "kubestream", "launcher", "--check"]
    assert config["User"] not in ("", "0", "root")


def test_launcher_container_healthcheck_against_real_redis_and_apiserver(
        dockerd: Dockerd, launcher_image: str, settings: Settings, kubeconfig: Path, containers: list[str]) -> None:
    mount = ["-v", f"{kubeconfig}:/etc/kubestream/kubeconfig:ro"]
    env = component_env(settings)
    # no launcher yet: the check fails, naming what it looked for
    check = dockerd.docker("run", "--rm", "--network", "host", *env, *mount, launcher_image, "launcher", "--check",
                           check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "no fresh launcher health key" in check.stdout

    name = f"ks-launcher-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    dockerd.docker("run", "-d", "--name", name, "--network", "host", "--health-interval", "2s",
                   "--health-start-period", "60s", *env, *mount, launcher_image, "launcher")

    def state() -> dict[str, object]:
        result: dict[str, object] = json.loads(
            dockerd.docker("inspect", "--format", "{{json .State}}", name, timeout=60).stdout)
        return result

    def healthy() -> bool:
        current = state()
        if not current["Running"]:
            logs = dockerd.docker("logs", name, check=False).stderr[-3000:]
            raise AssertionError(f"the launcher container stopped: {current}\n{logs}")
        health = current["Health"]
        assert isinstance(health, dict)
        return health["Status"] == "healthy"

    wait_for(healthy, timeout=180, interval=1, what="the launcher container's HEALTHCHECK to pass")
    inside = dockerd.docker("exec", name, "kubestream", "launcher", "--check", check=False)
    assert inside.returncode == 0, inside.stdout + inside.stderr
    assert settings.key_prefix in inside.stdout

    # stopped (SIGTERM): the launcher exits cleanly and its health key expires, the check fails again
    dockerd.docker("stop", "--time", "30", name, timeout=120)
    assert state()["ExitCode"] == 0, dockerd.docker("logs", name, check=False).stderr[-3000:]

    def check_fails() -> bool:
        return dockerd.docker("run", "--rm", "--network", "host", *env, *mount, launcher_image, "launcher",
                              "--check", check=False).returncode == 1

    wait_for(check_fails, timeout=60, interval=2, what="the launcher's health key to expire")
