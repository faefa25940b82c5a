"""bench/create_cpu.py at a tiny size against the session's apiserver and Redis (so that it cannot rot:
sane figures, every stage measured, nothing left behind; no timing is checked), and the launcher's
create path (``kubeapi.exchange``) answering like the official client for the same errors."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from bench.create_cpu import STAGES, measure
from kubestream.apierrors import classify_exception
from kubestream.kubeapi import ApiError, PodApi, api_client

pytestmark = pytest.mark.cluster


def test_create_cpu_benchmark_returns_sane_figures(cluster, redis_server, namespace, admin_api) -> None:
    result = measure(cluster, redis_server.url, namespace, creates=4, rounds=2, batch=2)
    assert result.raw_us > 0 and result.launcher_us > 0 and result.ratio_raw_to_launcher > 0
    assert set(result.stages_us) == set(STAGES) and all(v > 0 for v in result.stages_us.values())
    assert {side: len(rounds) for side, rounds in result.rounds_us.items()} == {"raw": 2, "launcher": 2}
    assert not k8s.CoreV1Api(admin_api).list_namespaced_pod(namespace).items  # each round's pods deleted


def test_error_answers_match_the_official_client(cluster, namespace) -> None:
    api = api_client(cluster.kubeconfig("launcher"))
    try:
        pods, core = PodApi(api), k8s.CoreV1Api(api)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "twice"},
               "spec": {"containers": [{"name": "c", "image": "img"}]}}
        invalid = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-containers"}, "spec": {}}
        assert pods.create(namespace, pod)["metadata"]["uid"]
        assert pods.create_unread(namespace, {**pod, "metadata": {"name": "unread"}}) is None
        assert pods.get(namespace, "unread") is not None
        for body, kind in ((pod, "exists"), (invalid, "permanent")):
            for create in (pods.create, pods.create_unread):  # the launcher's, the answer left unparsed
                with pytest.raises(ApiError) as ours:
                    create(namespace, body)
                with pytest.raises(k8s.ApiException) as theirs:
                    core.create_namespaced_pod(namespace, body)
                assert (ours.value.status, ours.value.reason) == (theirs.value.status, theirs.value.reason)
                assert ours.value.body == theirs.value.body
                assert classify_exception(ours.value) == classify_exception(theirs.value)
                assert classify_exception(ours.value).kind == kind
        assert pods.get(namespace, "no-containers") is None
        assert pods.delete(namespace, "twice", grace_period_seconds=0) is True
    finally:
        api.close()
