"""A launcher applies a launch's ``pod_mutation`` (real Redis, the in-memory PodApi of test_launcher_handle):
before its pod policy, with the pod's identity re-asserted; a malformed patch is dead-lettered with its task
failed; a namespace the patch asks for goes through ``allowed_namespaces`` like a pod_override's."""

from __future__ import annotations

import dataclasses

import msgpack
import redis

from kubestream.keys import Keys
from kubestream.messages import LaunchTask, TaskState
from kubestream.settings import Settings
from kubestream.store import TaskStore
from kubestream.taskkey import DISPATCH_ANNOTATION, TaskKey
from kubestream.workers.launcher import Launcher
from tests.unit import test_launcher_handle as handle
from tests.unit.test_launcher_handle import KEY, NS, OWNER, POD, handle_all, pending, results, send

# that module's fixtures: a launcher on the real Redis with an in-memory PodApi
settings, pods, launcher = handle.settings, handle.pods, handle.launcher

LABEL_AND_TOLERATION = {"metadata": {"labels": {"policy": "applied"}},
                        "spec": {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}}


def record(redis_client: redis.Redis, settings: Settings, key: TaskKey = KEY, namespace: str = NS) -> None:
    store = TaskStore(redis_client, Keys(settings.key_prefix), settings)
    pipe = redis_client.pipeline(transaction=True)
    store.record_dispatch(pipe, key, owner=OWNER, queue="default", namespace=namespace, dispatch="d1")
    pipe.execute()


def test_the_patch_is_applied_to_the_pod(launcher, pods, redis_client, settings, keys) -> None:
    record(redis_client, settings)
    send(redis_client, settings, LaunchTask(KEY, "default", OWNER, "{}", "d1", pod_mutation={
        **LABEL_AND_TOLERATION, "metadata": {"labels": {"policy": "applied", "dag_id": "forged"}, "name": "x"}}))
    handle_all(launcher)
    pod = pods.pod(NS, POD)
    assert pod is not None, pods.calls
    assert pod["metadata"]["labels"]["policy"] == "applied" and pod["metadata"]["labels"]["dag_id"] == "dag"
    assert pod["spec"]["tolerations"] == LABEL_AND_TOLERATION["spec"]["tolerations"]
    assert pod["metadata"]["annotations"][DISPATCH_ANNOTATION] == "d1"
    assert pending(redis_client, keys) == 0


def test_the_pod_policy_is_checked_after_the_patch(launcher, pods, redis_client, settings, keys) -> None:
    """A message can never get past the operator's policy: a patch asking for a privileged container
    is refused like a pod_override asking for one (baseline policy)."""
    record(redis_client, settings)
    send(redis_client, settings, LaunchTask(KEY, "default", OWNER, "{}", "d1", pod_mutation={
        "spec": {"containers": [{"name": "base", "image": "x", "securityContext": {"privileged": True}}]}}))
    handle_all(launcher)
    (event,) = results(redis_client, keys)
    assert event.state is TaskState.FAILED and event.reason.startswith("pod refused by pod_policy:"), event.reason
    assert "privileged" in event.reason
    assert pods.calls_of("create") == [] and redis_client.xlen(keys.dead) == 0


def test_a_malformed_patch_fails_its_task_and_is_dead_lettered(launcher, pods, redis_client, settings,
                                                               keys) -> None:
    record(redis_client, settings)
    send(redis_client, settings, LaunchTask(KEY, "default", OWNER, "{}", "d1",
                                            pod_mutation={"spec": {"containers": "not-a-list"}}))
    handle_all(launcher)
    (event,) = results(redis_client, keys)
    assert event.state is TaskState.FAILED
    assert event.reason.startswith("invalid pod spec: pod_mutation.spec.containers must be a list"), event.reason
    assert pods.calls_of("create") == [] and pending(redis_client, keys) == 0
    (dead,) = redis_client.xrange(keys.dead)
    assert dead[1][b"reason"].decode().startswith("pod spec: pod_mutation")
    kept = msgpack.unpackb(dead[1][b"m"])
    assert kept["pod_mutation"] == {"spec": {"containers": "not-a-list"}}


def test_a_namespace_the_patch_asks_for_must_be_allowed(launcher, pods, redis_client, settings, keys) -> None:
    record(redis_client, settings, namespace="kube-system")
    send(redis_client, settings, LaunchTask(KEY, "default", OWNER, "{}", "d1",
                                            pod_mutation={"metadata": {"namespace": "kube-system"}}))
    handle_all(launcher)
    (event,) = results(redis_client, keys)
    assert event.state is TaskState.FAILED and "namespace 'kube-system' is not allowed" in event.reason
    assert pods.calls_of("create") == []


def test_an_allowed_namespace_from_the_patch_is_where_the_pod_goes(pods, redis_client, settings, keys) -> None:
    allowed = dataclasses.replace(settings, allowed_namespaces=("team-b",))
    launcher = Launcher(allowed, redis_client, None, name="ns-launcher", pods=pods)
    launcher.consumer.ensure_groups()
    try:
        record(redis_client, allowed, namespace="team-b")
        send(redis_client, allowed, LaunchTask(KEY, "default", OWNER, "{}", "d1",
                                               pod_override={"metadata": {"namespace": NS}},
                                               pod_mutation={"metadata": {"namespace": "team-b"}}))
        handle_all(launcher)
    finally:
        launcher.stop()
    assert pods.pod(NS, POD) is None
    pod = pods.pod("team-b", POD)
    assert pod is not None and pod["metadata"]["namespace"] == "team-b", pods.calls
