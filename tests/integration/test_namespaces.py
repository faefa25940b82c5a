"""A pod_override's namespace, as the KubernetesExecutor honours it: within ``allowed_namespaces`` the pod
lands there and the watcher reports it; outside, the task fails with the reason (never runs elsewhere)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from devkit.kubelet import SimKubelet
from devkit.pipeline import Pipeline
from devkit.workloads import pod_name, workload
from kubestream.kubeapi import api_client

pytestmark = pytest.mark.cluster


@pytest.fixture
def other_namespace(local_cluster, cluster, namespace) -> Iterator[str]:
    """A second namespace with the components' role bindings and a simulated kubelet of its own."""
    other = f"{namespace}-b"
    local_cluster.ensure_namespaces(cluster, (other,))
    api = api_client(cluster.kubeconfig("kubelet"), pool_size=8)
    sim = SimKubelet(api, node_name=f"node-{other}", namespaces=[other]).start()
    try:
        yield other
    finally:
        sim.stop()
        api.close()


def _override(namespace: str) -> dict:
    return {"pod_override": k8s.V1Pod(metadata=k8s.V1ObjectMeta(namespace=namespace, labels={"team": "x"}))}


def test_a_pod_override_namespace_is_honoured_when_allowed_and_refused_otherwise(
        settings, cluster, kubelet, components, monkeypatch, namespace, other_namespace, core) -> None:
    allowed = dataclasses.replace(settings, allowed_namespaces=(other_namespace,), delete_worker_pods=False)
    pipeline = Pipeline(allowed, cluster, components, setenv=monkeypatch.setenv, kubelet=kubelet)
    try:
        pipeline.launcher()
        pipeline.watcher()
        moved = workload("ns", "moved", executor_config=_override(other_namespace))
        stays = workload("ns", "stays", executor_config=_override(namespace))  # the queue's own namespace
        plain = workload("ns", "plain")
        refused = workload("ns", "refused", executor_config=_override("kube-system"))
        pipeline.submit([moved, stays, plain, refused])
        finals = pipeline.run_until([w.ti.key for w in (moved, stays, plain, refused)], timeout=120)
        assert [finals[w.ti.key] for w in (moved, stays, plain, refused)] == ["success", "success", "success",
                                                                               "failed"]
        events = {k: info for k, _, info in pipeline.driver.events}
        assert "kube-system" in str(events[refused.ti.key]) and "allowed_namespaces" in str(events[refused.ti.key])
        assert {p.metadata.name for p in core.list_namespaced_pod(other_namespace).items} == {pod_name(moved)}
        assert {p.metadata.name for p in core.list_namespaced_pod(namespace).items} == {pod_name(stays),
                                                                                       pod_name(plain)}
        assert not any(p.metadata.name == pod_name(refused) for p in core.list_pod_for_all_namespaces().items)
    finally:
        pipeline.stop()
