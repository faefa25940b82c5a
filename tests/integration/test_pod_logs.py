"""Live pod logs for the Airflow UI: ``get_task_log`` asks through Redis, a watcher process reads
``pods/log`` from the real apiserver, which reads the simulated kubelet's ``/containerLogs`` over HTTPS.

Real Redis, real kube-apiserver, the real ``kubestream watcher`` CLI and the simulated kubelet (rules
mode: each container's log is ``RULE_LOG_LINES`` numbered lines)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from kubernetes import client as k8s

from devkit.kubelet import RULE_LOG_LINES, rule_log_lines
from devkit.pipeline import Pipeline
from devkit.probe import Streams
from devkit.workloads import SIM_ANNOTATION, pod_name, sim, workload
from kubestream.acl import rules, user_name
from kubestream.executor.launches import task_key
from kubestream.keys import Keys
from kubestream.podlogs import LogRequest, Status, encode_request, new_reply_id, request_log
from kubestream.settings import Settings
from kubestream.signing import Signer, Unsigned, new_key, signer_for
from kubestream.store import TaskStore
from kubestream.taskkey import MANAGED_LABEL, PREFIX_ANNOTATION, TaskKey, task_annotations


def ti_of(work: Any) -> SimpleNamespace:
    ti = work.ti
    return SimpleNamespace(dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=ti.map_index)


def log_server_ready(client: redis.Redis, keys: Keys) -> bool:
    """A watcher's log server has made its group on the request stream (from the stream's start: every
    request written from now on is served)."""
    try:
        groups = client.xinfo_groups(keys.log_requests)
    except redis.ResponseError:
        return False
    return any(g["name"] in (keys.log_group, keys.log_group.encode()) for g in groups)


def watcher_metrics(client: redis.Redis, keys: Keys) -> dict[str, float]:
    """The metrics the (one) watcher process last wrote to its health record."""
    for key in client.scan_iter(keys.health("watcher", "*")):
        raw = client.hget(key, "metrics")
        if raw:
            return dict(json.loads(raw))
    return {}


def start_watching(pipeline: Pipeline, streams: Streams, redis_client: redis.Redis, keys: Keys) -> None:
    pipeline.watcher()
    pipeline.wait_serving(streams)
    pipeline.components.wait(lambda: log_server_ready(redis_client, keys), timeout=60, what="the log server")


def running(streams: Streams, pod: str) -> bool:
    return streams.task(pod).get("state") == "running"


def test_a_running_pods_last_lines_come_back_through_get_task_log(pipeline: Pipeline, streams: Streams,
                                                                 redis_client: redis.Redis, keys: Keys) -> None:
    pipeline.launcher()
    start_watching(pipeline, streams, redis_client, keys)
    driver = pipeline.new_driver(running_pod_log_lines="7")
    work = workload("logs", "runs", executor_config=sim("run"))
    driver.submit([work])
    pipeline.components.wait(lambda: running(streams, pod_name(work)), timeout=60, what="the pod running")

    messages, logs = driver.executor.get_task_log(ti_of(work), 1)

    expected = rule_log_lines(pipeline.settings.namespace, pod_name(work), "base").splitlines(keepends=True)
    assert logs == [b"".join(expected[-7:]).decode()]
    assert f"line {RULE_LOG_LINES}" in logs[0] and f"line {RULE_LOG_LINES - 7}\n" not in logs[0]
    assert messages[0].startswith(f"kubestream: pod {pod_name(work)} in namespace {pipeline.settings.namespace}")
    assert "last 7 lines of container base" in messages[1]


def test_an_executor_that_was_never_started_reads_them_too(pipeline: Pipeline, streams: Streams,
                                                           redis_client: redis.Redis, keys: Keys,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The API server builds an executor it never starts: get_task_log connects and signs on demand."""
    pipeline.launcher()
    start_watching(pipeline, streams, redis_client, keys)
    work = workload("logs", "api-server", executor_config=sim("run"))
    pipeline.submit([work])  # also sets the executor's AIRFLOW__KUBESTREAM__* variables
    pipeline.components.wait(lambda: running(streams, pod_name(work)), timeout=60, what="the pod running")
    monkeypatch.setenv("AIRFLOW__KUBESTREAM__RUNNING_POD_LOG_LINES", "3")
    from devkit.scheduler import DbStandIn

    messages, logs = DbStandIn().get_task_log(ti_of(work), 1)

    expected = rule_log_lines(pipeline.settings.namespace, pod_name(work), "base").splitlines(keepends=True)
    assert logs == [b"".join(expected[-3:]).decode()], messages


def foreign_pod(key: TaskKey, namespace: str, prefix: str | None, dispatch: str) -> dict[str, Any]:
    annotations = {**task_annotations(key), SIM_ANNOTATION: "run", "kubestream.io/dispatch": dispatch}
    if prefix is not None:
        annotations[PREFIX_ANNOTATION] = prefix
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": key.pod_name(), "labels": {MANAGED_LABEL: "true"}, "annotations": annotations},
            "spec": {"containers": [{"name": "base", "image": "busybox"}], "restartPolicy": "Never"}}


@pytest.mark.parametrize("prefix", [None, "another-deployment"])
def test_a_pod_without_this_deployments_prefix_annotation_is_not_read(
        pipeline: Pipeline, streams: Streams, redis_client: redis.Redis, keys: Keys, settings: Settings,
        core: k8s.CoreV1Api, prefix: str | None) -> None:
    """Someone with Redis write access makes a task record pointing at a pod kubestream did not make."""
    start_watching(pipeline, streams, redis_client, keys)
    key = TaskKey("logs", f"foreign-{uuid.uuid4().hex[:6]}", "run-1", 1)
    dispatch = str(uuid.uuid4())
    store = TaskStore(redis_client, keys, settings)
    pipe = redis_client.pipeline(transaction=True)
    store.record_dispatch(pipe, key, owner="sched-a", queue="default", namespace=settings.namespace, dispatch=dispatch)
    pipe.execute()
    core.create_namespaced_pod(settings.namespace, foreign_pod(key, settings.namespace, prefix, dispatch))
    pipeline.components.wait(lambda: streams.pod_phase(key.pod_name()) == "Running", timeout=60,
                             what="the foreign pod running")

    reply = request_log(redis_client, keys, signer_for(settings), key, lines=5, timeout=30)

    assert reply.status is Status.REFUSED, reply
    assert reply.text == "" and "not this kubestream's pod" in reply.message


@pytest.mark.parametrize("signer", [Unsigned(), Signer.parse(f"dev={new_key()}")], ids=["unsigned", "forged"])
def test_an_unsigned_or_forged_request_gets_nothing(pipeline: Pipeline, streams: Streams, redis_client: redis.Redis,
                                                    keys: Keys, settings: Settings,
                                                    signer: Signer | Unsigned) -> None:
    pipeline.launcher()
    start_watching(pipeline, streams, redis_client, keys)
    work = workload("logs", "target", executor_config=sim("run"))
    pipeline.submit([work])
    pipeline.components.wait(lambda: running(streams, pod_name(work)), timeout=60, what="the pod running")
    reply_id = new_reply_id()
    request = LogRequest(task_key(work.ti.key), 5, reply_id, time.time())
    eid = redis_client.xadd(keys.log_requests, signer.sign(keys.log_requests, encode_request(request)))

    # the server handles every request and then deletes it: once it is gone, it was handled
    pipeline.components.wait(lambda: not redis_client.xrange(keys.log_requests, eid, eid), timeout=30,
                             what="the request handled")
    assert redis_client.exists(keys.log_reply(reply_id)) == 0
    pipeline.components.wait(lambda: watcher_metrics(redis_client, keys).get("log_requests_dropped_total") == 1,
                             timeout=30, what="the dropped request counted")
    # the same request, signed with the deployment's key, is answered
    good = request_log(redis_client, keys, signer_for(settings), task_key(work.ti.key), lines=5, timeout=30)
    assert good.status is Status.OK and good.text.count("\n") == 5


def test_with_no_watcher_get_task_log_says_so_within_its_timeout(make_executor: Any, redis_client: redis.Redis,
                                                                 keys: Keys, settings: Settings) -> None:
    executor = make_executor(pod_log_timeout_seconds="1")
    key = TaskKey("logs", f"alone-{secrets.token_hex(3)}", "run-1", 1)
    pipe = redis_client.pipeline(transaction=True)
    TaskStore(redis_client, keys, settings).record_dispatch(pipe, key, owner="sched-a", queue="default",
                                                            namespace=settings.namespace, dispatch="d-1")
    pipe.execute()

    messages, logs = executor.get_task_log(SimpleNamespace(dag_id=key.dag_id, task_id=key.task_id,
                                                           run_id=key.run_id, map_index=-1), 1)

    assert logs == []
    assert messages[0].startswith(f"kubestream: pod {key.pod_name()} in namespace {settings.namespace}")
    assert messages[1] == (f"kubestream: no live log lines of pod {key.pod_name()}: timeout: no watcher answered "
                           "within 1s (is a kubestream watcher running, with pods/log RBAC?)")
    assert redis_client.xlen(keys.log_requests) == 1  # the request waits, unserved (it goes stale in 30 s)


def acl_user(redis_client: redis.Redis, redis_url: str, component: str, prefix: str) -> str:
    """A Redis user with ``component``'s ACL rules for ``prefix``; its URL."""
    name, password = f"{user_name(component)}-{prefix}", secrets.token_hex(8)
    redis_client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *rules(component, prefix))
    return f"redis://{name}:{password}@{redis_url.split('//', 1)[1]}"


def test_live_logs_work_under_the_acl_users_and_other_roles_are_refused(
        pipeline: Pipeline, streams: Streams, redis_client: redis.Redis, keys: Keys, settings: Settings,
        redis_server: Any) -> None:
    urls = {c: acl_user(redis_client, redis_server.url, c, settings.key_prefix)
            for c in ("scheduler", "launcher", "watcher", "status")}
    try:
        pipeline.launcher()
        pipeline.watcher(redis_url=urls["watcher"])
        pipeline.wait_serving(streams)
        pipeline.components.wait(lambda: log_server_ready(redis_client, keys), timeout=60, what="the log server")
        driver = pipeline.new_driver(redis_url=urls["scheduler"], running_pod_log_lines="2")
        work = workload("logs", "acl", executor_config=sim("run"))
        driver.submit([work])
        pipeline.components.wait(lambda: running(streams, pod_name(work)), timeout=60, what="the pod running")

        messages, logs = driver.executor.get_task_log(ti_of(work), 1)

        assert len(logs) == 1 and logs[0].count("\n") == 2, messages
        reply_key = keys.log_reply(new_reply_id())
        refused = [
            ("launcher", lambda c: c.xadd(keys.log_requests, {"m": b"x"})),  # only the scheduler asks
            ("watcher", lambda c: c.xadd(keys.log_requests, {"m": b"x"})),
            ("status", lambda c: c.xadd(keys.log_requests, {"m": b"x"})),
            ("watcher", lambda c: c.blpop([reply_key], timeout=0.01)),  # only the requester reads answers
            ("launcher", lambda c: c.blpop([reply_key], timeout=0.01)),
            ("scheduler", lambda c: c.rpush(reply_key, b"a fake answer")),  # only a watcher answers
            ("scheduler", lambda c: c.xreadgroup(keys.log_group, "me", {keys.log_requests: ">"})),
        ]
        for component, call in refused:
            with redis.Redis.from_url(urls[component]) as c, pytest.raises(redis.exceptions.NoPermissionError):
                call(c)
    finally:
        pipeline.stop()  # before its users go
        for component in urls:
            redis_client.execute_command("ACL", "DELUSER", f"{user_name(component)}-{settings.key_prefix}")


def test_standbys_serve_too_so_a_dead_leader_costs_no_answer(pipeline: Pipeline, streams: Streams,
                                                              redis_client: redis.Redis, keys: Keys,
                                                              settings: Settings) -> None:
    pipeline.launcher()
    # a long lease: the standby cannot take over while the test asks, so only a standby can answer
    watchers = {name: pipeline.watcher(consumer_name=name, lease_seconds="120") for name in ("w-a", "w-b")}
    pipeline.wait_serving(streams)
    pipeline.components.wait(lambda: log_server_ready(redis_client, keys), timeout=60, what="the log servers")
    work = workload("logs", "ha", executor_config=sim("run"))
    pipeline.submit([work])
    pipeline.components.wait(lambda: running(streams, pod_name(work)), timeout=60, what="the pod running")
    leader = streams.lease_holder()
    assert leader in watchers
    standby = next(name for name in watchers if name != leader)
    os.kill(watchers[leader].pid, signal.SIGKILL)
    watchers[leader].wait(timeout=30)

    reply = request_log(redis_client, keys, signer_for(settings), task_key(work.ti.key), lines=4, timeout=30)

    assert reply.status is Status.OK and reply.server == standby, reply
    assert reply.text.count("\n") == 4 and f"line {RULE_LOG_LINES}\n" in reply.text
    assert streams.lease_holder() == leader  # answered while the standby was still standing by


def test_a_pod_that_is_gone_is_not_found(pipeline: Pipeline, streams: Streams, redis_client: redis.Redis,
                                         keys: Keys, settings: Settings, core: k8s.CoreV1Api) -> None:
    pipeline.launcher()
    start_watching(pipeline, streams, redis_client, keys)
    work = workload("logs", "gone", executor_config=sim("run"))
    pipeline.submit([work])
    pipeline.components.wait(lambda: running(streams, pod_name(work)), timeout=60, what="the pod running")
    core.delete_namespaced_pod(pod_name(work), settings.namespace, grace_period_seconds=0)
    pipeline.components.wait(lambda: not streams.pod_exists(pod_name(work)), timeout=60, what="the pod gone")

    reply = request_log(redis_client, keys, signer_for(settings), task_key(work.ti.key), lines=4, timeout=30)

    assert reply.status is Status.NOT_FOUND and reply.text == "", reply
    assert reply.message == "no pod (not created yet, or deleted)"


def test_a_container_that_never_started_has_no_log_and_says_why(pipeline: Pipeline, streams: Streams,
                                                                 redis_client: redis.Redis, keys: Keys,
                                                                 settings: Settings) -> None:
    pipeline.launcher()
    start_watching(pipeline, streams, redis_client, keys)
    work = workload("logs", "never-starts", executor_config=sim("errimagepull"))
    pipeline.submit([work])
    pipeline.components.wait(lambda: streams.task(pod_name(work)).get("state") == "pending", timeout=60,
                             what="the pod pending")

    def waiting_reply() -> Any:
        reply = request_log(redis_client, keys, signer_for(settings), task_key(work.ti.key), lines=4, timeout=30)
        return reply if "ErrImagePull" in reply.message or "ImagePullBackOff" in reply.message else None

    reply = pipeline.components.wait(waiting_reply, timeout=60, what="the kubelet's refusal with the pull error")
    assert reply.status is Status.ERROR and reply.text == ""
    assert reply.message.startswith("the API refused the log: 400 container 'base' in pod ")
    assert "is waiting to start: " in reply.message
