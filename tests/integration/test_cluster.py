"""The local cluster is a real API server: RBAC per component, kubectl works, 410 on restart."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.cluster


def test_kubectl_talks_to_the_local_cluster(cluster) -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed on this machine")
    out = subprocess.run(["kubectl", "--kubeconfig", cluster.kubeconfig("admin"), "get", "namespaces", "-o", "name"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "namespace/default" in out.stdout


def test_each_component_acts_under_its_own_rbac(api_for, namespace) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rbac-probe"},
           "spec": {"containers": [{"name": "base", "image": "busybox"}]}}
    launcher = client.CoreV1Api(api_for("launcher"))
    launcher.create_namespaced_pod(namespace, pod)
    with pytest.raises(ApiException) as denied:
        launcher.list_namespaced_pod(namespace)  # the launcher may not list
    assert denied.value.status == 403
    watcher = client.CoreV1Api(api_for("watcher"))
    assert [p.metadata.name for p in watcher.list_namespaced_pod(namespace).items] == ["rbac-probe"]
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(api_for("executor")).list_namespaced_pod(namespace)
    assert denied.value.status == 403  # the scheduler side has no Kubernetes rights at all
