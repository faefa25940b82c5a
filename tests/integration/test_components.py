"""Launcher, watcher and shared mechanisms as processes and against real servers: SIGTERM,
the watcher lease, the shared rate limit, health checks and `kubestream status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from devkit.components import component_env
from devkit.isolated import proxied_kubeconfig
from devkit.procs import wait_for
from devkit.workloads import pod_name, signed, sim, workload
from kubestream.executor.launches import task_key
from kubestream.keys import LAUNCH_GROUP
from kubestream.messages import LaunchTask, encode
from kubestream.ratelimit import RateLimiter
from kubestream.watcher.lease import Lease

pytestmark = pytest.mark.cluster


def test_sigterm_finishes_in_flight_creates_and_leaves_the_rest_pending(pipeline, streams, redis_client,
                                                                         keys) -> None:
    slow = pipeline.launcher(launch_concurrency="2", create_rate="2", create_burst="1")
    pipeline.watcher()
    work = [workload("term", f"t{i:02d}") for i in range(30)]
    pipeline.submit(work)
    wait_for(lambda: streams.launch_len() <= 27, timeout=60, what="a few pods created")
    slow.send_signal(signal.SIGTERM)
    assert slow.wait(timeout=30) == 0  # a clean exit
    left = streams.launch_len()
    assert left > 0  # it did not drain the stream before leaving
    assert redis_client.exists(keys.health("launcher", "launcher-0")) == 0  # deregistered
    pipeline.launcher()
    finals = pipeline.run_until([w.ti.key for w in work], timeout=120)
    assert set(finals.values()) == {"success"} and set(pipeline.driver.final_counts().values()) == {1}
    wait_for(lambda: streams.pending() == 0, timeout=30, what="every launch acknowledged")


def test_a_standby_watcher_takes_over_when_the_leader_dies(pipeline, streams) -> None:
    pipeline.launcher()
    leader = pipeline.watcher(lease_seconds="3")
    wait_for(lambda: streams.lease_holder() == "watcher-1", timeout=30, what="the first leader")
    pipeline.watcher(lease_seconds="3")
    first = [workload("lease", f"a{i}") for i in range(5)]
    pipeline.submit(first)
    pipeline.run_until([w.ti.key for w in first], timeout=60)
    os.kill(leader.pid, signal.SIGKILL)
    wait_for(lambda: streams.lease_holder() == "watcher-2", timeout=30, what="the standby to lead")
    second = [workload("lease", f"b{i}", executor_config=sim("succeed:delay=0.5")) for i in range(5)]
    pipeline.submit(second)
    finals = pipeline.run_until([w.ti.key for w in first + second], timeout=60)
    assert set(finals.values()) == {"success"} and set(pipeline.driver.final_counts().values()) == {1}


def test_lease_is_held_by_one_holder_at_a_time(redis_client, keys) -> None:
    a = Lease(redis_client, keys.watcher_lease, "a", 5)
    b = Lease(redis_client, keys.watcher_lease, "b", 5)
    assert a.acquire_or_renew() and not b.acquire_or_renew()
    assert a.acquire_or_renew()  # renewal by the holder
    b.release()  # not the holder: no effect
    assert a.holder_now() == "a"
    a.release()
    assert b.acquire_or_renew() and b.holder_now() == "b"


def test_rate_limiter_is_shared_through_redis(redis_client, keys) -> None:
    one = RateLimiter(redis_client, keys.rate_limit, rate=0.5, burst=2)
    other = RateLimiter(redis_client, keys.rate_limit, rate=0.5, burst=2)
    assert one.take() == 0
    assert other.take() == 0
    wait_ms = one.take()
    assert wait_ms > 1000  # the burst is spent by both limiters together: the next token is ~2 s away
    assert RateLimiter(redis_client, keys.rate_limit, rate=0, burst=1).acquire()  # rate 0: unlimited


def _cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubestream.cli", *args], env=component_env(settings),
                          capture_output=True, text=True, timeout=60)


def test_check_status_and_wrong_settings_through_the_cli(settings, cluster, components, redis_client, keys) -> None:
    assert _cli(settings, "launcher", "--check").returncode == 1  # nothing running yet
    components.start("launcher", settings, cluster.kubeconfig("launcher"), consumer_name="")
    wait_for(lambda: _cli(settings, "launcher", "--check").returncode == 0, timeout=30, what="a healthy launcher")
    redis_client.xadd(keys.dead, {"reason": "decode: test", "task": "x", "m": b""})
    report = json.loads(_cli(settings, "status", "--json").stdout)
    # the queue's plain stream and its priority bands' (the suite runs with priority_bands=100,10)
    assert [s["stream"] for s in report["launch_streams"]] == sorted(
        [keys.launch("default"), keys.launch("default", 0), keys.launch("default", 1)])
    assert all(s["groups"][0]["name"] == LAUNCH_GROUP for s in report["launch_streams"])
    assert report["dead_letters"]["count"] == 1 and report["watcher_lease"] is None
    table = _cli(settings, "status").stdout
    assert keys.launch("default") in table and "dead letters: 1" in table
    bad = subprocess.run([sys.executable, "-m", "kubestream.cli", "launcher"], capture_output=True, text=True,
                         env=component_env(settings, launch_concurrency="many"), timeout=60)
    assert bad.returncode == 2 and "KUBESTREAM_LAUNCH_CONCURRENCY='many'" in bad.stderr
    unreachable = subprocess.run([sys.executable, "-m", "kubestream.cli", "status"], capture_output=True, text=True,
                                 env=component_env(settings, redis_url="redis://127.0.0.1:1/0"),
                                 timeout=120)
    assert unreachable.returncode == 3 and "cannot reach Redis (redis://127.0.0.1:1/0)" in unreachable.stderr


def test_watcher_rides_out_429s_and_a_redelivered_launch_never_fails_a_running_task(
        fault_proxy, cluster, pipeline, streams, redis_client, keys, settings, tmp_path) -> None:
    pipeline.launcher()
    # the watcher's list and watch calls get 429s with Retry-After first (apache/airflow#49517)
    fault_proxy.fail_next(6, status=429, retry_after="1", only_method="GET", path_contains="/pods")
    pipeline.watcher(kubeconfig=proxied_kubeconfig(tmp_path, fault_proxy.url, cluster.tokens["watcher"], "watcher"))
    task = workload("redeliver", "long", executor_config=sim("run:delay=8"))
    pipeline.submit([task])
    wait_for(lambda: streams.pod_phase(pod_name(task)) == "Running", timeout=60, what="the task's pod running")
    # the same launch message arrives again while the pod runs (a lost XADD reply, a reclaim, ...)
    msg = LaunchTask(key=task_key(task.ti.key), queue="default", scheduler_id="sched-a",
                     workload_json=task.model_dump_json(), external_executor_id=task.ti.external_executor_id)
    redis_client.xadd(keys.launch("default"), signed(settings, keys.launch("default"), encode(msg)))
    finals = pipeline.run_until([task.ti.key], timeout=60)
    assert finals == {task.ti.key: "success"} and pipeline.driver.final_counts()[task.ti.key] == 1
    assert not pipeline.driver.failures(task.ti.key)
    assert fault_proxy.faults_injected == 6
    wait_for(lambda: streams.pending() == 0, timeout=30, what="the duplicate launch settled as AlreadyExists")
