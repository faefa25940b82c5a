"""The rendered k8s/ overlays on a real API server (the local kube-apiserver, v1.20).

Every rendered object is server-side applied, under fresh names for the two namespaces so the
test can run again against the same cluster. Kinds this API server does not serve are skipped and
named: KEDA's ScaledObject and TriggerAuthentication (no CRDs here; tests/unit/test_manifests.py
validates them against KEDA's schema). The PodDisruptionBudgets are policy/v1, which 1.20 does not
serve yet: they are applied as policy/v1beta1, whose spec is the same.

Then each component acts with the token of its own ServiceAccount from k8s/ (TokenRequest API,
written into a kubeconfig): the launcher creates, gets and deletes pods in the task namespace and
is refused anywhere else, the watcher and the janitor list pods there and are refused creating one."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubestream.kubeapi import ApiError, PodApi, api_client
from kubestream.kubeapi import request as api_request
from tests.unit.test_manifests import COMPONENT_NS, OVERLAYS, Obj, find, render

pytestmark = pytest.mark.cluster

TASK_NS = "airflow-tasks"
APPLY = "application/apply-patch+yaml"
FIELD_MANAGER = "kubestream-manifests-test"
NOT_SERVED_BY_1_20 = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}
OLDER_VERSION = {("policy/v1", "PodDisruptionBudget"): "policy/v1beta1"}
FIRST = ("Namespace", "ServiceAccount", "ClusterRole")  # what the others refer to


def renamed(objs: list[Obj], names: dict[str, str]) -> list[Obj]:
    """``objs`` with the namespaces ``names`` maps renamed everywhere they are named."""
    for obj in objs:
        meta = obj["metadata"]
        if obj["kind"] == "Namespace":
            meta["name"] = names.get(meta["name"], meta["name"])
        if "namespace" in meta:
            meta["namespace"] = names.get(meta["namespace"], meta["namespace"])
        for subject in obj.get("subjects", []):
            if "namespace" in subject:
                subject["namespace"] = names.get(subject["namespace"], subject["namespace"])
        if obj["kind"] == "ConfigMap" and "KUBESTREAM_NAMESPACE" in obj.get("data", {}):
            obj["data"]["KUBESTREAM_NAMESPACE"] = names.get(obj["data"]["KUBESTREAM_NAMESPACE"],
                                                            obj["data"]["KUBESTREAM_NAMESPACE"])
    return objs


class Discovery:
    """Which resource serves a kind, from the API server's discovery documents."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self._cache: dict[str, dict[str, dict[str, Any]] | None] = {}

    def resource(self, api_version: str, kind: str) -> dict[str, Any] | None:
        if api_version not in self._cache:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                doc = api_request(self.api, "GET", path)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                self._cache[api_version] = None
            else:
                self._cache[api_version] = {r["kind"]: r for r in doc["resources"] if "/" not in r["name"]}
        served = self._cache[api_version]
        return None if served is None else served.get(kind)

    def path(self, api_version: str, kind: str, namespace: str, name: str) -> str | None:
        resource = self.resource(api_version, kind)
        if resource is None:
            return None
        root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        scope = f"/namespaces/{namespace}" if resource["namespaced"] else ""
        return f"{root}{scope}/{resource['name']}/{name}"


def apply_all(api: Any, objs: list[Obj]) -> tuple[list[Obj], set[tuple[str, str]]]:
    """Server-side apply every object the server serves; return what was applied and the
    (apiVersion, kind) pairs it does not serve."""
    discovery = Discovery(api)
    applied, skipped = [], set()
    for obj in sorted(objs, key=lambda o: FIRST.index(o["kind"]) if o["kind"] in FIRST else len(FIRST)):
        version = obj["apiVersion"]
        if discovery.resource(version, obj["kind"]) is None and (version, obj["kind"]) in OLDER_VERSION:
            version = OLDER_VERSION[(version, obj["kind"])]
        path = discovery.path(version, obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if path is None:
            skipped.add((obj["apiVersion"], obj["kind"]))
            continue
        body = {**obj, "apiVersion": version}
        result = api_request(api, "PATCH", path, body, query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                         content_type=APPLY)
        assert result["metadata"]["uid"], path
        applied.append(result)
    return applied, skipped


def token_kubeconfig(cluster: Any, admin_api: Any, namespace: str, account: str, directory: Path) -> str:
    """A kubeconfig acting as ServiceAccount ``namespace/account``, with a token from the TokenRequest API."""
    core = client.CoreV1Api(admin_api)
    token_request = core.create_namespaced_service_account_token(account, namespace, {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}})
    path = directory / f"kubeconfig-{account}"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": account,
        "clusters": [{"name": "local", "cluster": {"server": cluster.host, "certificate-authority": cluster.ca_file}}],
        "users": [{"name": account, "user": {"token": token_request.status.token}}],
        "contexts": [{"name": account, "context": {"cluster": "local", "user": account, "namespace": namespace}}],
    }))
    os.chmod(path, 0o600)
    return str(path)


def probe_pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"kubestream.io/managed": "true"}},
            "spec": {"containers": [{"name": "base", "image": "busybox"}]}}


def refused(call: Any) -> int:
    with pytest.raises(ApiError) as exc:
        call()
    return exc.value.status


@pytest.fixture(params=OVERLAYS)
def applied(request: pytest.FixtureRequest, admin_api: Any) -> Iterator[tuple[str, list[Obj], dict[str, str]]]:
    """One overlay applied under fresh namespace names: (overlay, applied objects, {original: fresh} names)."""
    suffix = uuid.uuid4().hex[:8]
    names = {COMPONENT_NS: f"ks-{suffix}", TASK_NS: f"kt-{suffix}"}
    objs = renamed(render(request.param), names)
    result, skipped = apply_all(admin_api, objs)
    assert skipped == NOT_SERVED_BY_1_20, f"kinds the API server does not serve: {sorted(skipped)}"
    try:
        yield request.param, result, names
    finally:
        core = client.CoreV1Api(admin_api)
        for ns in names.values():
            core.delete_namespace(ns)


def test_every_served_object_applies(applied: tuple[str, list[Obj], dict[str, str]]) -> None:
    overlay, result, names = applied
    expected = [o for o in renamed(render(overlay), names) if (o["apiVersion"], o["kind"]) not in NOT_SERVED_BY_1_20]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in result) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in expected)
    deployments = {d["metadata"]["name"]: d for d in find(result, "Deployment")}
    watcher = deployments["kubestream-watcher"]
    assert watcher["metadata"]["namespace"] == names[COMPONENT_NS]
    assert watcher["spec"]["replicas"] == 2
    task_ns = next(n for n in find(result, "Namespace") if n["metadata"]["name"] == names[TASK_NS])
    assert task_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"


def test_each_components_service_account_has_exactly_its_pod_rights(
        applied: tuple[str, list[Obj], dict[str, str]], cluster: Any, admin_api: Any, tmp_path: Path) -> None:
    _, _, names = applied
    component_ns, task_ns = names[COMPONENT_NS], names[TASK_NS]

    def pods_as(account: str) -> PodApi:
        return PodApi(api_client(token_kubeconfig(cluster, admin_api, component_ns, account, tmp_path)))

    launcher = pods_as("kubestream-launcher")
    created = launcher.create(task_ns, probe_pod("launched"))
    got = launcher.get(task_ns, "launched")
    assert got is not None and got["metadata"]["uid"] == created["metadata"]["uid"]
    for elsewhere in (component_ns, "default"):
        assert refused(lambda ns=elsewhere: launcher.create(ns, probe_pod("elsewhere"))) == 403
    assert refused(lambda: launcher.list(task_ns)) == 403

    watcher = pods_as("kubestream-watcher")
    assert [p["metadata"]["name"] for p in watcher.list(task_ns).items] == ["launched"]
    assert refused(lambda: watcher.create(task_ns, probe_pod("by-watcher"))) == 403
    assert refused(lambda: watcher.list(component_ns)) == 403

    janitor = pods_as("kubestream-janitor")  # lists task pods, deletes failed ones past their retention
    assert [p["metadata"]["name"] for p in janitor.list(task_ns).items] == ["launched"]
    assert refused(lambda: janitor.list(component_ns)) == 403
    assert refused(lambda: janitor.create(task_ns, probe_pod("by-janitor"))) == 403

    assert launcher.delete(task_ns, "launched", uid=created["metadata"]["uid"], grace_period_seconds=0)
