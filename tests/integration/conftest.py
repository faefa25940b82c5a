"""Fixtures shared by the integration tests: component processes and executors."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.faultproxy import HttpFaultProxy
from tests.helpers import Components, DbStandIn, airflow_env


@pytest.fixture
def components(tmp_path: Path):
    """Launcher/watcher processes started through the real CLI; stopped at teardown."""
    comps = Components(tmp_path)
    yield comps
    comps.stop_all()


@pytest.fixture
def make_executor(settings, monkeypatch):
    """Start KubeStreamExecutors configured like the test's settings (overrides as keywords)."""
    started = []

    def make(**overrides) -> DbStandIn:
        for name, value in {**airflow_env(settings), **{f"AIRFLOW__KUBESTREAM__{k.upper()}": v
                                                         for k, v in overrides.items()}}.items():
            monkeypatch.setenv(name, value)
        ex = DbStandIn()
        ex.start()
        started.append(ex)
        return ex

    yield make
    for ex in started:
        ex.terminate()


@pytest.fixture
def fault_proxy(cluster):
    """A loopback HTTP proxy in front of the apiserver that can add latency or answer 429/5xx."""
    proxy = HttpFaultProxy("127.0.0.1", cluster.apiserver_port, ca_file=cluster.ca_file).start()
    yield proxy
    proxy.stop()
