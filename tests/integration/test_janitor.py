"""Growth without bound: the janitor deletes result streams of schedulers that are gone, stale consumers,
acknowledged stream entries and failed pods past their retention; it runs as an rq worker."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.procs import wait_for
from devkit.scheduler import Driver
from devkit.workloads import SIM_ANNOTATION, workload
from kubestream.acl import rules
from kubestream.janitor import sweep_consumers, sweep_result_streams, trim_streams
from kubestream.janitor.pods import delete_failed_pods, finished_at
from kubestream.janitor.worker import queue_name, rq_key_prefix
from kubestream.keys import LAUNCH_GROUP, RESULTS_GROUP
from kubestream.kubeapi import PodApi
from kubestream.messages import FIELD
from kubestream.taskkey import PREFIX_ANNOTATION


def test_result_streams_of_schedulers_that_are_gone_are_deleted_and_live_ones_kept(make_executor, redis_client,
                                                                                    keys) -> None:
    live = make_executor(scheduler_id="live")
    gone = make_executor(scheduler_id="gone")
    Driver(gone).submit([workload("janitor", "t1")])
    gone.terminate()  # its liveness key is released; its result stream stays behind
    redis_client.xadd(gone.results_stream, {FIELD: b"a result it never read"})
    assert redis_client.exists(gone.results_stream) and redis_client.exists(live.results_stream)
    assert sweep_result_streams(redis_client, keys, stale_after_s=3600) == []  # an entry was added just now
    deleted = sweep_result_streams(redis_client, keys, stale_after_s=0)
    assert deleted == [gone.results_stream]
    assert not redis_client.exists(gone.results_stream) and redis_client.exists(live.results_stream)
    assert RESULTS_GROUP in {g["name"].decode() for g in redis_client.xinfo_groups(live.results_stream)}


def test_consumers_with_nothing_pending_are_removed_once_stale(redis_client, keys) -> None:
    stream = keys.launch("default")
    redis_client.xgroup_create(stream, LAUNCH_GROUP, id="0", mkstream=True)
    redis_client.xadd(stream, {FIELD: b"x"})
    redis_client.xreadgroup(LAUNCH_GROUP, "holds-one", {stream: ">"}, count=1)
    redis_client.xgroup_createconsumer(stream, LAUNCH_GROUP, "idle-empty")  # a launcher that read nothing
    assert sweep_consumers(redis_client, keys, stale_after_s=3600) == []
    removed = sweep_consumers(redis_client, keys, stale_after_s=0)
    assert removed == [(stream, LAUNCH_GROUP, "idle-empty")]
    names = {c["name"].decode() for c in redis_client.xinfo_consumers(stream, LAUNCH_GROUP)}
    assert names == {"holds-one"}  # its pending entry is reclaimed first, by the launchers


def test_janitor_once_through_the_cli(settings, cluster, redis_client, keys) -> None:
    redis_client.xadd(keys.results("ghost"), {FIELD: b"x"})
    env = {**settings.to_env(), "KUBESTREAM_STALE_AFTER_SECONDS": "60", "PATH": "/usr/bin:/bin",
           "KUBESTREAM_KUBE_CONFIG": cluster.kubeconfig("watcher")}  # list + delete pods, as the janitor role
    out = subprocess.run([sys.executable, "-m", "kubestream.cli", "janitor", "--once"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"result_streams": [], "consumers": [], "trimmed": {},
                                      "failed_pods": []}  # not stale yet: 60 s
    assert redis_client.exists(keys.results("ghost"))
    env["KUBESTREAM_KUBE_CONFIG"] = cluster.kubeconfig("launcher")  # may not list pods: that job alone fails
    out = subprocess.run([sys.executable, "-m", "kubestream.cli", "janitor", "--once"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "janitor job failed_pods failed: ApiError: 403" in out.stderr
    assert json.loads(out.stdout) == {"result_streams": [], "consumers": [], "trimmed": {}}


def _acked_stream(redis_client, stream: str, group: str, entries: int, ack: int) -> list[bytes]:
    redis_client.xgroup_create(stream, group, id="0", mkstream=True)
    ids = [redis_client.xadd(stream, {FIELD: f"m{i}".encode()}) for i in range(entries)]
    redis_client.xreadgroup(group, "c1", {stream: ">"}, count=entries)
    for entry in ids[:ack]:
        redis_client.xack(stream, group, entry)
    return ids


def test_streams_are_trimmed_below_the_oldest_pending_entry(redis_client, keys) -> None:
    launch, results = keys.launch("default"), keys.results("sched-a")
    ids = _acked_stream(redis_client, launch, LAUNCH_GROUP, entries=6, ack=6)
    redis_client.xack(launch, LAUNCH_GROUP, ids[0])
    redis_client.xadd(launch, {FIELD: b"not delivered yet"})
    res_ids = _acked_stream(redis_client, results, RESULTS_GROUP, entries=5, ack=2)
    redis_client.xack(results, RESULTS_GROUP, res_ids[3])  # acked, but above a pending entry: kept
    unread = keys.launch("unread")
    redis_client.xgroup_create(unread, LAUNCH_GROUP, id="0", mkstream=True)
    redis_client.xadd(unread, {FIELD: b"x"})  # a group that never read: left alone
    assert trim_streams(redis_client, keys) == {launch: 6, results: 2}
    assert redis_client.xlen(launch) == 1 and redis_client.xlen(unread) == 1
    assert [e for e, _ in redis_client.xrange(results)] == res_ids[2:]
    assert trim_streams(redis_client, keys) == {}


def test_a_failed_pod_is_kept_for_its_retention_then_deleted(cluster, kubelet, namespace, admin_api,
                                                              key_prefix) -> None:
    pods = PodApi(admin_api)

    def pod(name: str, rule: str, labels: dict[str, str], prefix: str = "") -> None:
        made_by = {PREFIX_ANNOTATION: prefix} if prefix else {}
        pods.create(namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "labels": labels, "annotations": {SIM_ANNOTATION: rule, **made_by}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "base", "image": "busybox"}]}})

    managed = {"kubestream.io/managed": "true"}
    pod("failed", "exit:1", managed)
    pod("succeeded", "succeed", managed)
    pod("foreign", "exit:1", {})
    pod("another-teams", "exit:1", managed, prefix=f"{key_prefix}.other")  # another kubestream's, same namespace
    pod("ours", "exit:1", managed, prefix=key_prefix)
    phases = lambda: {n: ((pods.get(namespace, n) or {}).get("status") or {}).get("phase")  # noqa: E731
                      for n in ("failed", "succeeded", "foreign", "another-teams", "ours")}
    wait_for(lambda: set(phases().values()) == {"Failed", "Succeeded"}, timeout=60)
    done = finished_at(pods.get(namespace, "failed") or {})
    assert done is not None
    assert delete_failed_pods(pods, (namespace,), retention_s=600, now=done + 599, key_prefix=key_prefix) == []
    assert pods.get(namespace, "failed") is not None  # its logs are still readable
    assert delete_failed_pods(pods, (namespace,), retention_s=600, now=done + 601,
                              key_prefix=key_prefix) == [f"{namespace}/failed", f"{namespace}/ours"]
    assert all(pods.get(namespace, n) is not None for n in ("succeeded", "foreign", "another-teams"))


@pytest.fixture
def janitor_url(redis_client, redis_server, key_prefix) -> Iterator[str]:
    """A Redis user with the janitor's ACL rules for this test's prefix."""
    name, password = f"kubestream-janitor-{key_prefix}", secrets.token_hex(8)
    redis_client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}",
                                 *rules("janitor", key_prefix))
    yield f"redis://{name}:{password}@{redis_server.url.split('//', 1)[1]}"
    redis_client.execute_command("ACL", "DELUSER", name)


def test_the_janitor_runs_as_an_rq_worker_and_rq_info_shows_its_queue(settings, cluster, redis_client, keys,
                                                                      janitor_url) -> None:
    ids = _acked_stream(redis_client, keys.launch("default"), LAUNCH_GROUP, entries=3, ack=3)
    assert len(ids) == 3
    env = {**settings.to_env(), "KUBESTREAM_REDIS_URL": janitor_url, "KUBESTREAM_JANITOR_INTERVAL_SECONDS": "3600",
           "PATH": "/usr/bin:/bin",
           "KUBESTREAM_KUBE_CONFIG": cluster.kubeconfig("watcher"),
           "RQ_KEY_PREFIX": rq_key_prefix(settings)}
    janitor = subprocess.Popen([sys.executable, "-m", "kubestream.cli", "janitor"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: redis_client.xlen(keys.launch("default")) == 0, timeout=60)  # the trim job ran
        queue = queue_name(settings)
        next_runs = redis_client.zrange(f"{rq_key_prefix(settings)}:scheduled:{queue}", 0, -1)
        assert {j.decode().rsplit("-", 1)[0] for j in next_runs} >= {"janitor-trimmed", "janitor-consumers"}
        rq = str(Path(sys.executable).with_name("rq"))
        info = subprocess.run([rq, "info", "--url", settings.redis_url, "--only-queues", queue],
                              env={**os.environ, "RQ_KEY_PREFIX": rq_key_prefix(settings)},
                              capture_output=True, text=True, timeout=60, check=True)
        assert queue in info.stdout
        assert not redis_client.keys("rq:*")  # every rq key is under kubestream's prefix
    finally:
        janitor.terminate()
        out, _ = janitor.communicate(timeout=30)
    assert janitor.returncode == 0, out
    assert "NOPERM" not in out and "Traceback" not in out, out  # its ACL user suffices
