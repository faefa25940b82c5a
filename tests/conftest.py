"""Shared fixtures: real servers, session-scoped; clean state per test.

- ``redis_server``: a real redis-server on a free loopback port.
- ``redis_client`` / ``settings``: a client and Settings for a fresh key prefix per test
  (so tests never see each other's streams).
- ``local_cluster`` / ``cluster``: the real local kube-apiserver + etcd (``devkit.cluster``) and its state.
- ``admin_api`` / ``api_for(identity)``: ApiClients acting as the admin or a component.
- ``namespace``: a fresh namespace per test, with the launcher/watcher roles bound.
- ``kubelet``: a simulated kubelet (a thread, rules mode) for that namespace.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from devkit.cluster import ClusterState, LocalCluster
from devkit.redisserver import RedisServer
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.keys import Keys
from kubestream.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep Airflow's files (airflow.cfg, logs) out of the user's ~/airflow."""
    home = tmp_path_factory.mktemp("airflow-home")
    old = os.environ.get("AIRFLOW_HOME")
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    yield home
    if old is None:
        os.environ.pop("AIRFLOW_HOME", None)
    else:
        os.environ["AIRFLOW_HOME"] = old


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(key_prefix)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The real local kube-apiserver + etcd, up for the whole session and stopped at its end."""
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def cluster(local_cluster: LocalCluster) -> ClusterState:
    """The running local cluster's state: ports, tokens, ``kubeconfig(identity)``."""
    state = local_cluster.running()
    assert state is not None, "the local cluster stopped"
    return state


def api_clients(cluster: ClusterState) -> Callable[[str], object]:
    """``get(identity)``: one ApiClient per identity of ``cluster`` (made on first use, then kept)."""
    from kubestream.kubeapi import api_client

    cache: dict[str, object] = {}

    def get(identity: str) -> object:
        if identity not in cache:
            cache[identity] = api_client(cluster.kubeconfig(identity), pool_size=32)
        return cache[identity]

    return get


@pytest.fixture(scope="session")
def api_for(cluster: ClusterState) -> Callable[[str], object]:
    return api_clients(cluster)


@pytest.fixture(scope="session")
def admin_api(api_for: Callable[[str], object]) -> object:
    return api_for("admin")


@pytest.fixture
def namespace(cluster: ClusterState, local_cluster: LocalCluster) -> str:
    ns = f"t-{uuid.uuid4().hex[:10]}"
    local_cluster.ensure_namespaces(cluster, (ns,))
    return ns


@pytest.fixture
def settings(redis_server: RedisServer, key_prefix: str, cluster: ClusterState, namespace: str) -> Settings:
    return Settings.from_mapping({
        "redis_url": redis_server.url, "key_prefix": key_prefix, "namespace": namespace,
        "scheduler_id": "sched-a", "kube_config": cluster.kubeconfig("launcher"),
        "reclaim_idle_seconds": "5", "retry_budget_seconds": "2", "signing_keys": DEV_SIGNING_KEYS,
        "priority_bands": "100,10",  # the guarantees hold with priority bands on: every test runs with them
    })


@pytest.fixture
def kubelet(cluster: ClusterState, namespace: str) -> Iterator[object]:
    """A simulated kubelet (rules mode) for this test's namespace, on a node of its own."""
    from devkit.kubelet import SimKubelet
    from kubestream.kubeapi import api_client

    api = api_client(cluster.kubeconfig("kubelet"), pool_size=16)
    sim = SimKubelet(api, node_name=f"node-{namespace}", namespaces=[namespace]).start()
    try:
        yield sim
    finally:
        sim.stop()
        api.close()
