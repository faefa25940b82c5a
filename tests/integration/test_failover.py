"""Failover in seconds: a dead launcher's entries and a dead watcher's lease are taken over as soon as
they are known dead (liveness key expired, lease of a restarted watcher of the same name), while a live
launcher, however slow, keeps its entries."""

from __future__ import annotations

import os
import signal

import pytest

from devkit.isolated import proxied_kubeconfig
from devkit.procs import wait_for
from devkit.workloads import workload
from kubestream.keys import LAUNCH_GROUP
from kubestream.messages import FIELD
from kubestream.text import as_text
from kubestream.workers.consumer import StreamConsumer

LIVENESS_MS = 300


def _consumer(redis_client, keys, name: str) -> StreamConsumer:
    return StreamConsumer(redis_client, [keys.launch("default")], name, min_idle_ms=600_000,
                          alive_key=lambda n: keys.alive("launcher", n), liveness_ms=LIVENESS_MS)


def _pending_by_consumer(redis_client, stream: str) -> dict[str, int]:
    summary = redis_client.xpending(stream, LAUNCH_GROUP)
    return {as_text(c["name"]): int(c["pending"]) for c in summary["consumers"] or []}


def _consumer_names(redis_client, stream: str) -> set[str]:
    return {as_text(c["name"]) for c in redis_client.xinfo_consumers(stream, LAUNCH_GROUP)}


def test_a_dead_launchers_entries_are_claimed_at_once_and_it_leaves_the_group(redis_client, keys) -> None:
    stream = keys.launch("default")
    dead, live, taker = (_consumer(redis_client, keys, n) for n in ("dead", "live", "taker"))
    dead.ensure_groups()
    for i in range(3):
        redis_client.xadd(stream, {FIELD: f"dead-{i}".encode()})
    assert len(dead.read_new(3, 100)) == 3
    redis_client.xadd(stream, {FIELD: b"live-0"})
    redis_client.set(keys.alive("launcher", "live"), "1", px=600_000)  # alive, however long it takes
    assert len(live.read_new(1, 100)) == 1
    assert taker.read_new(1, 10) == []  # joins the group
    # "dead" never wrote a liveness key; once it has been idle for the liveness time it is dead
    claimed = wait_for(lambda: taker.claim_dead(), timeout=30, what="the dead launcher's entries claimed")
    assert sorted(e.raw for e in claimed) == [b"dead-0", b"dead-1", b"dead-2"]
    assert all(e.deliveries == 2 for e in claimed)  # a delivery each: a launch that kills launchers is bounded
    assert all(e.fields[FIELD] == e.raw for e in claimed)  # every field (the signature travels with them)
    assert _pending_by_consumer(redis_client, stream) == {"taker": 3, "live": 1}
    assert "dead" not in _consumer_names(redis_client, stream)  # nothing left: removed from the group
    # idle long past the liveness time, but its liveness key is there: nothing is taken from it
    wait_for(lambda: all(int(c["idle"]) > LIVENESS_MS for c in redis_client.xinfo_consumers(stream, LAUNCH_GROUP)
                         if as_text(c["name"]) == "live"), timeout=30, what="the live launcher idle")
    assert taker.claim_dead() == []
    assert _pending_by_consumer(redis_client, stream)["live"] == 1


@pytest.mark.cluster
def test_a_killed_launchers_launches_are_taken_over_long_before_reclaim_idle_seconds(
        pipeline, streams, fault_proxy, cluster, tmp_path, redis_client, keys) -> None:
    """A launcher killed (-9) while its creates are being retried holds pending entries; with
    ``reclaim_idle_seconds`` at 10 minutes, only the liveness rule can hand them to another launcher in time."""
    fault_proxy.fail_randomly(1.0, status=503, only_method="POST")  # every create of this one is retried
    kubeconfig = proxied_kubeconfig(tmp_path, fault_proxy.url, cluster.tokens["launcher"], "launcher")
    doomed = pipeline.launcher(kubeconfig=kubeconfig, consumer_name="doomed", reclaim_idle_seconds="600",
                               retry_budget_seconds="300")
    work = [workload("failover", f"t{i}") for i in range(6)]
    pipeline.submit(work)
    stream = keys.launch("default")
    wait_for(lambda: _pending_by_consumer(redis_client, stream).get("doomed") == len(work), timeout=60,
             what="every launch in the doomed launcher's hands")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=30)
    pipeline.launcher(consumer_name="heir", reclaim_idle_seconds="600", retry_budget_seconds="300")
    pipeline.watcher()
    finals = pipeline.run_until([w.ti.key for w in work], timeout=180)  # far below the 600 s idle rule
    assert set(finals.values()) == {"success"} and set(pipeline.driver.final_counts().values()) == {1}
    wait_for(lambda: streams.launcher_metrics("heir").get("reclaimed_total") == len(work), timeout=60,
             what="the heir's count of claimed entries")
    wait_for(lambda: "doomed" not in _consumer_names(redis_client, stream), timeout=30,
             what="the dead launcher removed from the group")


@pytest.mark.cluster
def test_a_restarted_watcher_of_the_same_name_leads_at_once(pipeline, streams, redis_client, keys) -> None:
    """Its predecessor's lease (60 s here) is not waited for: a restart of the same name takes it over."""
    pipeline.launcher()
    first = pipeline.watcher(consumer_name="watcher-a", lease_seconds="60")
    wait_for(lambda: streams.lease_holder() == "watcher-a", timeout=60, what="the first leader")
    before = [workload("restart", f"a{i}") for i in range(3)]
    pipeline.submit(before)
    pipeline.run_until([w.ti.key for w in before], timeout=90)
    epoch = int(redis_client.hget(keys.watcher_fence, "epoch"))
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    pipeline.watcher(consumer_name="watcher-a", lease_seconds="60")
    wait_for(lambda: int(redis_client.hget(keys.watcher_fence, "epoch")) > epoch, timeout=45,
             what="the restarted watcher leading under a new epoch")
    after = [workload("restart", f"b{i}") for i in range(3)]
    pipeline.submit(after)
    finals = pipeline.run_until([w.ti.key for w in before + after], timeout=45)  # < the 60 s lease
    assert set(finals.values()) == {"success"} and set(pipeline.driver.final_counts().values()) == {1}
