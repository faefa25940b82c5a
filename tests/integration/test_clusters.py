"""One Airflow, two Kubernetes clusters: two real kube-apiservers (each with its etcd), a launcher pool and
a watcher per cluster, each with its own kubeconfig and ``cluster`` name; tasks are routed by their queue."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from devkit.cluster import ClusterState, LocalCluster
from devkit.kubelet import SimKubelet
from devkit.pipeline import Pipeline
from devkit.procs import stop_pid
from devkit.workloads import pod_name, workload
from kubestream.keys import Keys
from kubestream.kubeapi import api_client
from kubestream.status import collect

pytestmark = pytest.mark.cluster


@pytest.fixture
def west(tmp_path_factory: pytest.TempPathFactory, namespace: str) -> Iterator[tuple[LocalCluster, ClusterState]]:
    """A second local cluster (its own etcd and kube-apiserver), with the test's namespace."""
    local = LocalCluster(tmp_path_factory.mktemp("west"))
    state = local.up(namespaces=(namespace,))
    try:
        yield local, state
    finally:
        local.down()


@pytest.fixture
def west_kubelet(west: tuple[LocalCluster, ClusterState], namespace: str) -> Iterator[SimKubelet]:
    api = api_client(west[1].kubeconfig("kubelet"), pool_size=8)
    sim = SimKubelet(api, node_name=f"west-{namespace}", namespaces=[namespace]).start()
    try:
        yield sim
    finally:
        sim.stop()
        api.close()


def _pods(state: ClusterState, namespace: str) -> set[str]:
    api = api_client(state.kubeconfig("admin"))
    try:
        return {p.metadata.name for p in k8s.CoreV1Api(api).list_namespaced_pod(namespace).items}
    finally:
        api.close()


def test_one_airflow_drives_two_clusters_by_queue_and_an_outage_of_one_leaves_the_other_alone(
        settings, cluster, kubelet, west, west_kubelet, components, monkeypatch, namespace, redis_client) -> None:
    kept = dataclasses.replace(settings, delete_worker_pods=False)  # the pods stay: where they ran can be seen
    east = Pipeline(dataclasses.replace(kept, cluster="east", queues=("east",)), cluster, components,
                    setenv=monkeypatch.setenv, kubelet=kubelet)
    west_cluster = west[1]
    west_side = Pipeline(dataclasses.replace(kept, cluster="west", queues=("west",)), west_cluster, components,
                         setenv=monkeypatch.setenv, kubelet=west_kubelet)
    try:
        for side in (east, west_side):
            side.launcher()
            side.watcher()
        scheduler = east.driver  # one scheduler for both clusters
        work = [workload("clusters", f"east-{i}", queue="east") for i in range(4)]
        work += [workload("clusters", f"west-{i}", queue="west") for i in range(4)]
        scheduler.submit(work)
        finals = scheduler.run_until([w.ti.key for w in work], timeout=120)
        assert set(finals.values()) == {"success"} and set(scheduler.final_counts().values()) == {1}
        names = {w.ti.task_id: pod_name(w) for w in work}
        assert _pods(cluster, namespace) == {n for t, n in names.items() if t.startswith("east")}
        assert _pods(west_cluster, namespace) == {n for t, n in names.items() if t.startswith("west")}
        keys = Keys(settings.key_prefix)
        leases: dict[str, Any] = collect(redis_client, settings)["cluster_watcher_leases"]
        assert set(leases) == {"east", "west"} and all(leases.values())  # a leader per cluster
        assert redis_client.exists(keys.watcher_lease) == 0  # not the single-cluster lease

        stop_pid(west_cluster.apiserver_pid, sig=9)  # the west cluster's API is gone
        later = [workload("clusters", f"east-late-{i}", queue="east") for i in range(4)]
        stranded = [workload("clusters", f"west-late-{i}", queue="west") for i in range(2)]
        scheduler.submit(later + stranded)
        finals = scheduler.run_until([w.ti.key for w in later], timeout=120)
        assert all(finals[w.ti.key] == "success" for w in later)
        # the west tasks wait for their cluster, neither failed nor run elsewhere
        assert not any(w.ti.key in finals for w in stranded)
        assert not {pod_name(w) for w in stranded} & _pods(cluster, namespace)
        assert all(p.poll() is None for p in west_side.launchers + west_side.watchers)  # riding the outage out
    finally:
        west_side.stop()
        east.stop()
