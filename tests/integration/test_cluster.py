"""The local cluster is a real API server: RBAC per component (exactly what the code calls), kubectl works,
the task namespace manifest applies."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubestream.kubeapi import MERGE_PATCH, ApiError, PodApi, PodWatch, pods_path, request

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


# --------------------------------------------------------------------------- RBAC: what each identity may do
# k8s/base/rbac.yaml grants exactly the pod calls the code makes (kubestream/kubeapi.py PodApi):
# the launcher creates, gets (after a 409, for a revoke) and deletes (revoke) pods; the
# watcher lists, watches and deletes them and reads running pods' logs (for get_task_log); the
# scheduler (executor) has no Kubernetes rights.

REPO = Path(__file__).resolve().parents[2]
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
RESOURCES = (  # (group, resource, subresource), namespaced
    ("", "pods", ""), ("", "pods", "log"), ("", "pods", "exec"), ("", "pods", "attach"),
    ("", "pods", "portforward"), ("", "pods", "status"), ("", "pods", "ephemeralcontainers"),
    ("", "pods", "binding"), ("", "pods", "eviction"), ("", "secrets", ""), ("", "configmaps", ""),
    ("", "serviceaccounts", ""), ("", "serviceaccounts", "token"), ("", "events", ""),
    ("rbac.authorization.k8s.io", "roles", ""), ("rbac.authorization.k8s.io", "rolebindings", ""),
    ("apps", "deployments", ""), ("batch", "jobs", ""),
)
CLUSTER_RESOURCES = (("", "namespaces", ""), ("", "nodes", ""), ("", "pods", ""),
                     ("rbac.authorization.k8s.io", "clusterroles", ""))
GRANTED = {
    "launcher": {("pods", "create"), ("pods", "get"), ("pods", "delete")},
    "watcher": {("pods", "list"), ("pods", "watch"), ("pods", "delete"), ("pods/log", "get")},
    "executor": set(),
}


def probe_pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"kubestream.io/managed": "true"}},
            "spec": {"containers": [{"name": "base", "image": "busybox"}]}}


def allowed(api: Any, namespace: str, group: str, resource: str, subresource: str, verb: str) -> bool:
    """The API server's own RBAC answer for this identity (a SelfSubjectAccessReview)."""
    attributes = {"namespace": namespace, "group": group, "resource": resource, "subresource": subresource,
                  "verb": verb}
    review = request(api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                     {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                      "spec": {"resourceAttributes": attributes}})
    return bool(review["status"].get("allowed"))


def denied(call: Callable[[], object]) -> int:
    with pytest.raises(ApiError) as refused:
        result = call()
        if isinstance(result, PodWatch):
            next(iter(result))  # a watch is sent when iterated
    return refused.value.status


@pytest.fixture
def unbound_namespace(admin_api: Any) -> Iterator[str]:
    """A namespace where no kubestream role is bound."""
    core = client.CoreV1Api(admin_api)
    ns = f"t-unbound-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        yield ns
    finally:
        core.delete_namespace(ns)


def test_the_shipped_roles_grant_exactly_the_pod_calls_the_code_makes() -> None:
    docs = [d for d in yaml.safe_load_all((REPO / "k8s" / "base" / "rbac.yaml").read_text()) if d]
    roles = {d["metadata"]["name"]: d["rules"] for d in docs if d["kind"] == "ClusterRole"}
    for component in ("launcher", "watcher"):
        granted = {(resource, verb) for rule in roles[f"kubestream-{component}"] for resource in rule["resources"]
                   for verb in rule["verbs"]}
        assert granted == GRANTED[component], component


@pytest.mark.parametrize("identity", ["launcher", "watcher", "executor"])
def test_each_identity_is_granted_exactly_its_verbs(api_for, namespace, identity: str) -> None:
    api = api_for(identity)
    granted = {(f"{resource}/{sub}" if sub else resource, verb)
               for group, resource, sub in RESOURCES for verb in VERBS
               if allowed(api, namespace, group, resource, sub, verb)}
    assert granted == GRANTED[identity]
    for group, resource, sub in CLUSTER_RESOURCES:  # nothing cluster-wide, e.g. no pods of every namespace
        for verb in ("get", "list", "watch", "create", "delete"):
            assert not allowed(api, "", group, resource, sub, verb), (identity, resource, verb)


def test_the_launcher_creates_gets_and_deletes_pods_and_nothing_more(api_for, namespace, unbound_namespace) -> None:
    pods = PodApi(api_for("launcher"))
    created = pods.create(namespace, probe_pod("launched"))
    got = pods.get(namespace, "launched")
    assert got is not None and got["metadata"]["uid"] == created["metadata"]["uid"]
    assert denied(lambda: pods.list(namespace)) == 403
    assert denied(lambda: pods.watch(namespace, "0", timeout_seconds=5)) == 403
    assert denied(lambda: request(api_for("launcher"), "PATCH", pods_path(namespace, "launched"),
                                  {"metadata": {"labels": {"x": "y"}}}, content_type=MERGE_PATCH)) == 403
    assert denied(lambda: request(api_for("launcher"), "GET", pods_path(namespace, "launched") + "/log")) == 403
    assert denied(lambda: pods.create(unbound_namespace, probe_pod("elsewhere"))) == 403  # no binding there
    assert denied(lambda: pods.get(unbound_namespace, "elsewhere")) == 403
    assert pods.delete(namespace, "launched", uid=created["metadata"]["uid"], grace_period_seconds=0)


def test_the_watcher_lists_watches_deletes_and_reads_logs_and_nothing_more(api_for, namespace,
                                                                          unbound_namespace) -> None:
    pods = PodApi(api_for("watcher"))
    assert denied(lambda: pods.create(namespace, probe_pod("by-watcher"))) == 403
    page = pods.list(namespace, label_selector="kubestream.io/managed=true")
    watch = pods.watch(namespace, page.resource_version, label_selector="kubestream.io/managed=true",
                       timeout_seconds=30)
    created = PodApi(api_for("launcher")).create(namespace, probe_pod("watched"))
    seen = None
    for event in watch:  # the server ends the watch after 30 s at the latest
        if event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "watched":
            seen = event["object"]
            break
    assert seen is not None and seen["metadata"]["uid"] == created["metadata"]["uid"]
    assert denied(lambda: pods.get(namespace, "watched")) == 403
    assert denied(lambda: request(api_for("watcher"), "PATCH", pods_path(namespace, "watched"),
                                  {"metadata": {"labels": {"x": "y"}}}, content_type=MERGE_PATCH)) == 403
    assert denied(lambda: pods.log(unbound_namespace, "watched", container="base", tail_lines=1,
                                   limit_bytes=100)) == 403  # pods/log only where the role is bound
    assert denied(lambda: pods.list(unbound_namespace)) == 403
    assert denied(lambda: pods.list("")) == 403  # every namespace
    assert pods.delete(namespace, "watched", uid=seen["metadata"]["uid"], grace_period_seconds=0)


def test_the_executor_identity_is_refused_everything(api_for, namespace) -> None:
    api = api_for("executor")
    pods = PodApi(api)
    for call in (lambda: pods.create(namespace, probe_pod("by-executor")), lambda: pods.get(namespace, "x"),
                 lambda: pods.list(namespace), lambda: pods.watch(namespace, "0", timeout_seconds=5),
                 lambda: pods.delete(namespace, "x"), lambda: pods.list(""),
                 lambda: request(api, "GET", "/api/v1/namespaces"),
                 lambda: request(api, "GET", f"/api/v1/namespaces/{namespace}/secrets")):
        assert denied(call) == 403


def test_the_task_namespace_manifest_parses_and_applies(admin_api) -> None:
    # The local kube-apiserver is v1.20: Pod Security Admission came in 1.22 (alpha) / 1.23 (beta,
    # on by default), so it ignores these labels. What is tested here is that the manifest is
    # valid and applies; its enforcement is the cluster's, in production.
    docs = [d for d in yaml.safe_load_all((REPO / "k8s" / "base" / "task-namespace.yaml").read_text()) if d]
    # one binding each for the launcher, watcher and janitor
    assert [d["kind"] for d in docs] == ["Namespace", "RoleBinding", "RoleBinding", "RoleBinding"]
    namespace, bindings = docs[0], docs[1:]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    rbac_docs = [d for d in yaml.safe_load_all((REPO / "k8s" / "base" / "rbac.yaml").read_text()) if d]
    roles = {d["metadata"]["name"] for d in rbac_docs if d["kind"] == "ClusterRole"}
    assert {b["roleRef"]["name"] for b in bindings} == roles
    assert all(b["metadata"]["namespace"] == namespace["metadata"]["name"] for b in bindings)

    name = f"t-tasks-{uuid.uuid4().hex[:8]}"  # the manifest under a name of this test's own
    namespace["metadata"]["name"] = name
    core, rbac = client.CoreV1Api(admin_api), client.RbacAuthorizationV1Api(admin_api)
    core.create_namespace(namespace)
    try:
        for binding in bindings:
            binding["metadata"]["namespace"] = name
            rbac.create_namespaced_role_binding(name, binding)
        applied = core.read_namespace(name)
        assert {k: v for k, v in applied.metadata.labels.items() if k.startswith("pod-security.")} == labels
        assert {b.role_ref.name for b in rbac.list_namespaced_role_binding(name).items} == roles
    finally:
        core.delete_namespace(name)
