"""Fixtures of the integration tests (all from ``devkit``):

- ``components``: launcher/watcher processes started through the real CLI, stopped at teardown;
- ``make_executor(**overrides)``: started executors configured like the test's settings;
- ``pipeline``: launchers + watcher + the simulated kubelet + a driver of the executor, so a test
  says ``pipeline.start(); pipeline.submit(work); pipeline.run_until(keys, timeout=...)``;
- ``streams``: read-only probe of the test's launch and result streams, dead letters, task
  records and the pods of its namespace, for assertions;
- ``fault_proxy``: an HTTP proxy in front of the apiserver that adds latency or answers 429/5xx;
- ``core``: a CoreV1Api acting as the admin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client as k8s

from devkit.cluster import ClusterState
from devkit.components import Components
from devkit.faultproxy import HttpFaultProxy
from devkit.pipeline import Pipeline
from devkit.probe import Streams
from devkit.scheduler import DbStandIn, start_executor
from kubestream.settings import Settings


@pytest.fixture
def components(tmp_path: Path) -> Iterator[Components]:
    comps = Components(tmp_path)
    yield comps
    comps.stop_all()


@pytest.fixture
def make_executor(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., DbStandIn]]:
    started: list[DbStandIn] = []

    def make(**overrides: str) -> DbStandIn:
        executor = start_executor(settings, monkeypatch.setenv, **overrides)
        started.append(executor)
        return executor

    yield make
    for executor in started:
        executor.terminate()


@pytest.fixture
def pipeline(settings: Settings, cluster: ClusterState, kubelet: Any, components: Components,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    pipe = Pipeline(settings, cluster, components, setenv=monkeypatch.setenv, kubelet=kubelet)
    yield pipe
    pipe.stop()


@pytest.fixture
def core(admin_api: Any) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(admin_api)


@pytest.fixture
def streams(redis_client: redis.Redis, settings: Settings, core: k8s.CoreV1Api) -> Streams:
    return Streams(redis_client, settings, core)


@pytest.fixture
def fault_proxy(cluster: ClusterState) -> Iterator[HttpFaultProxy]:
    proxy = HttpFaultProxy("127.0.0.1", cluster.apiserver_port, ca_file=cluster.ca_file).start()
    yield proxy
    proxy.stop()
