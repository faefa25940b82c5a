"""Fixtures of the real-node tier: a real kubelet v1.20 + Docker next to the local control plane.

- ``local_cluster`` (overrides the root one for this directory): a ``LocalCluster(real_node=True)``;
- ``real_node``: ``devkit.realnode.RealNode``, up once per session, down at its end (and at exit),
  and its ``down()`` fails loudly if a process, mount or cgroup is left;
- ``settings``: the test's Settings with the real node's pod template (``pod_template_file``: host
  network, ``nodeName``, ``imagePullPolicy: Never``, the node's Debian base image), ``pod_policy=off``
  (the template sets ``nodeName`` and ``hostNetwork``, which the baseline policy refuses) and
  ``ErrImageNeverPull`` among the fatal reasons;
- ``kubelet``: the real node (no simulated kubelet); ``pipeline``, ``components``, ``streams``, ``core``
  as in tests/integration.

Skipped, with the reason, where the machine cannot run a real node (not root, no dockerd, no cached
kubelet...). With ``CI=true`` on a machine that has root and dockerd, a missing piece fails instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from devkit.cluster import ClusterState, LocalCluster
from devkit.realnode import NodeState, RealNode, pod_template, unavailable_reason
from devkit.redisserver import RedisServer
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.settings import DEFAULT_FATAL_REASONS, Settings
from tests.conftest import api_clients

# pipeline, components, streams and core as in the integration tier, built on this directory's fixtures
from tests.integration.conftest import components, core, pipeline, streams  # noqa: F401

pytestmark = pytest.mark.realnode


def _must_run_here() -> bool:
    """CI on a machine that can host a real node: a missing piece is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true" and os.geteuid() == 0 and bool(shutil.which("dockerd"))


@pytest.fixture(scope="session")
def real_node_possible() -> None:
    reason = unavailable_reason()
    if reason:
        if _must_run_here():
            pytest.fail(f"CI=true on a machine with root and dockerd, but no real node: {reason}")
        pytest.skip(f"no real node here: {reason}")


@pytest.fixture(scope="session")
def local_cluster(real_node_possible: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The local kube-apiserver + etcd, prepared for a real kubelet (Node authorizer, kubelet client cert)."""
    local = LocalCluster(tmp_path_factory.mktemp("realnode-cluster"), real_node=True)
    local.up()
    try:
        yield local
    finally:
        local.down()


# The root conftest's session fixtures built on the cluster, again for this directory: a session fixture
# is computed once, so the root ones would keep the default cluster of a session that ran other tiers first.
@pytest.fixture(scope="session")
def cluster(local_cluster: LocalCluster) -> ClusterState:
    state = local_cluster.running()
    assert state is not None and state.real_node, "the real-node cluster stopped"
    return state


@pytest.fixture(scope="session")
def api_for(cluster: ClusterState) -> Callable[[str], object]:
    return api_clients(cluster)


@pytest.fixture(scope="session")
def admin_api(api_for: Callable[[str], object]) -> object:
    return api_for("admin")


@pytest.fixture(scope="session")
def real_node(cluster: ClusterState) -> Iterator[NodeState]:
    # a short path: dockerd's and containerd's unix sockets live under it
    node = RealNode(cluster, Path(tempfile.mkdtemp(prefix="ks-rn-")))
    atexit.register(node.down, check=False)  # an interrupted session still stops it
    try:
        yield node.up()
    finally:
        node.down()  # raises if a process, mount or cgroup is left
        atexit.unregister(node.down)


@pytest.fixture(scope="session")
def node(real_node: NodeState, cluster: ClusterState) -> RealNode:
    """The running node's handle (``docker(...)`` against its dockerd)."""
    return RealNode(cluster, real_node.state_dir)


@pytest.fixture(scope="session")
def pod_template_file(real_node: NodeState, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("realnode-template") / "pod_template.yaml"
    path.write_text(yaml.safe_dump(pod_template(real_node.base_image)))
    return str(path)


@pytest.fixture
def settings(redis_server: RedisServer, key_prefix: str, cluster: ClusterState, namespace: str,
             pod_template_file: str, real_node: NodeState) -> Settings:
    return Settings.from_mapping({
        "redis_url": redis_server.url, "key_prefix": key_prefix, "namespace": namespace,
        "scheduler_id": "sched-a", "kube_config": cluster.kubeconfig("launcher"),
        "reclaim_idle_seconds": "5", "retry_budget_seconds": "2", "signing_keys": DEV_SIGNING_KEYS,
        "pod_template_file": pod_template_file, "worker_image": real_node.base_image, "pod_policy": "off",
        "fatal_container_reasons": ",".join((*DEFAULT_FATAL_REASONS, "ErrImageNeverPull")),
    })


@pytest.fixture
def kubelet(real_node: NodeState) -> NodeState:
    return real_node


