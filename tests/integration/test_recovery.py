"""Nothing lost, nothing stuck: Redis losing its data, a Redis blip during adoption, a bad executor_config,
a launcher that must not reclaim its own entries. Real Redis (and the real apiserver where pods are made)."""

from __future__ import annotations

import types

import pytest
import redis

from devkit.faultproxy import FaultProxy
from devkit.procs import wait_for
from devkit.scheduler import Driver, start_executor
from devkit.workloads import pod_name, sim, workload
from kubestream.keys import LAUNCH_GROUP, RESULTS_GROUP
from kubestream.messages import FIELD, RevokeTask, TaskState, TaskStateChanged, decode
from kubestream.redisconn import eviction_warning
from kubestream.signing import signer_for
from kubestream.store import TaskStore
from kubestream.taskkey import TaskKey
from kubestream.workers.consumer import StreamConsumer


def _ti(w):
    return types.SimpleNamespace(key=w.ti.key, queue=w.ti.queue, external_executor_id=w.ti.external_executor_id)


def _groups(client: redis.Redis, stream: str) -> set[str]:
    try:
        return {g["name"].decode() for g in client.xinfo_groups(stream)}
    except redis.ResponseError:  # no such stream
        return set()


def test_executor_recreates_its_result_group_after_redis_lost_its_data(make_executor, redis_client, keys,
                                                                        settings) -> None:
    ex = make_executor()
    redis_client.flushdb()  # a restart without persistence
    assert ex.apply_results() == 0
    assert RESULTS_GROUP in _groups(redis_client, ex.results_stream)
    # and results flow again: a task dispatched after the reset reports
    w = workload("reset", "after")
    driver = Driver(ex)
    driver.submit([w])
    key = TaskKey("reset", "after", "run-1", 1)
    store = TaskStore(redis_client, keys, settings, signer_for(settings))
    assert store.publish(TaskStateChanged(key, TaskState.FAILED, "boom")).published
    assert driver.run_until([w.ti.key], timeout=30)[w.ti.key] == "failed"


def test_running_tasks_whose_records_vanished_are_reported_from_the_airflow_db(make_executor, redis_client,
                                                                                 keys) -> None:
    ex = make_executor(reconcile_seconds="1")
    lost, kept = workload("lost", "a"), workload("lost", "b")
    driver = Driver(ex)
    driver.submit([lost, kept])
    redis_client.delete(keys.task(pod_name(lost)))  # evicted, or a failover to a lagging replica
    wait_for(lambda: driver.step() or lost.ti.key in driver.finals(), timeout=60,
             what="the task with no record to be reported")
    assert driver.finals()[lost.ti.key] == "success"  # what the task wrote to the DB (the stand-in says success)
    assert kept.ti.key in ex.running and kept.ti.key not in driver.finals()


def test_after_a_flush_every_running_task_is_reconciled_at_once(make_executor, redis_client) -> None:
    ex = make_executor()  # reconcile_seconds is 60: the NOGROUP itself triggers the reconciliation
    work = [workload("flushed", f"t{i}") for i in range(5)]
    driver = Driver(ex)
    driver.submit(work)
    redis_client.flushdb()
    driver.step()
    assert {w.ti.key for w in work} <= set(driver.finals()) and not ex.running


def test_a_redis_blip_during_adoption_resets_no_task(settings, redis_server, monkeypatch, redis_client,
                                                     keys) -> None:
    owner = start_executor(settings, monkeypatch.setenv, scheduler_id="dying")
    work = [workload("adopt", f"t{i}") for i in range(3)]
    Driver(owner).submit(work)
    host, port = redis_server.url.split("//")[1].split("/")[0].split(":")
    with FaultProxy(host, int(port)) as proxy:
        monkeypatch.setenv("AIRFLOW__KUBESTREAM__REDIS_URL", f"redis://127.0.0.1:{proxy.port}/0")
        adopter = start_executor(settings, monkeypatch.setenv, scheduler_id="adopter",
                                 redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        proxy.refuse = True
        proxy.cut_all()
        assert adopter.try_adopt_task_instances([_ti(w) for w in work]) == []  # nothing handed back to reset
        assert {w.ti.key for w in work} <= adopter.running
        proxy.refuse = False
        adopter.sync()  # Redis is back: the adoption is completed
        owners = {redis_client.hget(keys.task(pod_name(w)), "owner") for w in work}
        assert owners == {b"adopter"}


def test_an_executor_config_that_cannot_be_encoded_fails_its_task_only(make_executor, redis_client, keys,
                                                                       tmp_path) -> None:
    template = tmp_path / "dated.yaml"
    template.write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  annotations:\n    since: 2024-01-01\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    ex = make_executor()
    dated = workload("enc", "dated", executor_config={"pod_template_file": str(template)})
    garbage = workload("enc", "binary", executor_config={"pod_template_file": str(binary)})
    good = workload("enc", "good", executor_config=sim("succeed"))
    driver = Driver(ex)
    driver.submit([dated, garbage, good])  # raised out of the scheduler loop before
    driver.step()
    finals = driver.finals()
    assert finals[dated.ti.key] == "failed" and finals[garbage.ti.key] == "failed"
    reasons = {k: info for k, _, info in driver.events}
    assert "datetime.date" in reasons[dated.ti.key] and "UnicodeDecodeError" in reasons[garbage.ti.key]
    assert good.ti.key in ex.running and redis_client.xlen(keys.launch("default")) == 1


def test_revoke_writes_the_flag_and_the_command_in_one_transaction(make_executor, redis_client, keys) -> None:
    ex = make_executor()
    w = workload("revoke", "tx")
    Driver(ex).submit([w])
    before = redis_client.info("commandstats")["cmdstat_exec"]["calls"]
    ex.revoke_task(ti=_ti(w))
    assert redis_client.info("commandstats")["cmdstat_exec"]["calls"] == before + 1
    assert redis_client.hget(keys.task(pod_name(w)), "revoked") == b"1"
    assert redis_client.xlen(keys.launch("default")) == 1  # the launch (priority_weight 1: no band)
    # the RevokeTask, in the highest band, which launchers read first: on the plain stream it waited for
    # every band to run dry
    assert [type(decode(f[FIELD])) for _, f in redis_client.xrange(keys.launch("default", 0))] == [RevokeTask]


def test_a_launcher_never_reclaims_the_entries_it_holds(redis_client, keys) -> None:
    stream = keys.launch("default")
    mine = StreamConsumer(redis_client, [stream], "mine", min_idle_ms=50)
    other = StreamConsumer(redis_client, [stream], "other", min_idle_ms=50)
    mine.ensure_groups()
    redis_client.xadd(stream, {FIELD: b"in hand"})
    (held,) = mine.read_new(1, 100)
    redis_client.xadd(stream, {FIELD: b"left for redelivery"})
    assert len(mine.read_new(1, 100)) == 1
    redis_client.xadd(stream, {FIELD: b"held by a dead launcher"})
    assert len(other.read_new(1, 100)) == 1

    def idle() -> bool:
        return all(row["time_since_delivered"] > 60
                   for row in redis_client.xpending_range(stream, LAUNCH_GROUP, "-", "+", 10))

    wait_for(idle, timeout=10, what="the entries to be idle")
    claimed = mine.reclaim({f"{stream}/{held.entry_id}"})
    assert sorted(e.raw for e in claimed) == [b"held by a dead launcher", b"left for redelivery"]
    assert all(e.deliveries == 2 for e in claimed)
    counts = {row["message_id"].decode(): row["times_delivered"]
              for row in redis_client.xpending_range(stream, LAUNCH_GROUP, "-", "+", 10)}
    assert counts[held.entry_id] == 1  # the entry in hand was not claimed back


def test_a_launcher_recreates_its_group_after_redis_lost_its_data(redis_client, keys) -> None:
    stream = keys.launch("default")
    consumer = StreamConsumer(redis_client, [stream], "l1", min_idle_ms=1000)
    consumer.ensure_groups()
    redis_client.flushdb()
    redis_client.xadd(stream, {FIELD: b"after the reset"})  # what the executor writes next
    assert consumer.read_new(10, 100) == []  # NOGROUP: the groups are recreated
    assert consumer.resets == 1
    assert [e.raw for e in consumer.read_new(10, 100)] == [b"after the reset"]


@pytest.mark.parametrize("policy, warns", [("noeviction", False), ("volatile-lru", True), ("allkeys-lru", True)])
def test_a_redis_that_may_evict_keys_is_warned_about(redis_client, policy, warns) -> None:
    old = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    redis_client.config_set("maxmemory-policy", policy)
    try:
        warning = eviction_warning(redis_client)
    finally:
        redis_client.config_set("maxmemory-policy", old)
    assert bool(warning) is warns
    if warns:
        assert policy in warning and "noeviction" in warning


def test_two_live_schedulers_with_one_scheduler_id_are_refused(make_executor) -> None:
    import threading

    from kubestream.executor.executor import SchedulerIdInUse

    first = make_executor(health_ttl_seconds="2")
    stop = threading.Event()

    def heartbeat() -> None:  # the first scheduler's loop keeps running
        while not stop.wait(0.2):
            first.sync()

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:
        with pytest.raises(SchedulerIdInUse, match="sched-a"):
            make_executor(health_ttl_seconds="2")
    finally:
        stop.set()
        thread.join()


def test_a_crashed_schedulers_claim_is_waited_out_by_its_successor(make_executor, redis_client, keys) -> None:
    make_executor(health_ttl_seconds="1")  # never refreshed again, never released: it crashed
    assert redis_client.exists(keys.scheduler("sched-a"))
    successor = make_executor(health_ttl_seconds="1")
    assert redis_client.get(keys.scheduler("sched-a")).decode() == successor._token


def test_a_final_state_whose_result_entry_was_lost_is_applied_from_the_record(make_executor, redis_client, keys,
                                                                                settings) -> None:
    ex = make_executor(reconcile_seconds="1")
    w = workload("trimmed", "t1")
    driver = Driver(ex)
    driver.submit([w])
    key = TaskKey("trimmed", "t1", "run-1", 1)
    store = TaskStore(redis_client, keys, settings, signer_for(settings))
    assert store.publish(TaskStateChanged(key, TaskState.FAILED, "OOMKilled")).published
    redis_client.xtrim(ex.results_stream, maxlen=0)  # the entry is gone (trimmed, lost in a failover)
    wait_for(lambda: driver.step() or w.ti.key in driver.finals(), timeout=60, what="the lost result to be applied")
    assert driver.finals()[w.ti.key] == "failed" and driver.failures(w.ti.key) == ["OOMKilled"]


def test_a_launch_message_over_the_size_cap_fails_its_task_only(make_executor, redis_client, keys) -> None:
    ex = make_executor(max_message_bytes="4096")
    big = workload("size", "big", executor_config={"pod_override": {"metadata": {"annotations": {
        "blob": "x" * 10_000}}}})
    small = workload("size", "small")
    driver = Driver(ex)
    driver.submit([big, small])
    driver.step()
    assert driver.finals() == {big.ti.key: "failed"}
    assert "over max_message_bytes=4096" in driver.failures(big.ti.key)[0]
    assert small.ti.key in ex.running and redis_client.xlen(keys.launch("default")) == 1


def test_a_pod_template_file_outside_pod_template_dir_fails_its_task(make_executor, redis_client, keys,
                                                                     tmp_path) -> None:
    allowed = tmp_path / "templates"
    allowed.mkdir()
    inside = allowed / "ok.yaml"
    inside.write_text("apiVersion: v1\nkind: Pod\nmetadata: {}\n")
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("apiVersion: v1\nkind: Pod\nmetadata: {}\n")
    (allowed / "escape.yaml").symlink_to(outside)
    ex = make_executor(pod_template_dir=str(allowed))
    good = workload("tpl", "inside", executor_config={"pod_template_file": str(inside)})
    bad = [workload("tpl", "outside", executor_config={"pod_template_file": str(outside)}),
           workload("tpl", "dotdot", executor_config={"pod_template_file": f"{allowed}/../elsewhere.yaml"}),
           workload("tpl", "symlink", executor_config={"pod_template_file": str(allowed / "escape.yaml")})]
    driver = Driver(ex)
    driver.submit([good, *bad])
    driver.step()
    assert driver.finals() == {w.ti.key: "failed" for w in bad}
    assert all("outside pod_template_dir" in driver.failures(w.ti.key)[0] for w in bad)
    assert good.ti.key in ex.running and redis_client.xlen(keys.launch("default")) == 1
