"""The executor's own contract against a real Redis: batching, unreachable Redis, adoption, revoke."""

from __future__ import annotations

import types

import pytest

from devkit.procs import free_port, wait_for
from devkit.scheduler import DbStandIn, Driver
from devkit.workloads import pod_name, signed, sim, workload
from kubestream.executor.launches import executor_config_parts
from kubestream.messages import FIELD, LaunchTask, RevokeTask, decode


def _ti(w):
    """The TaskInstance attributes the executor reads in adopt/revoke."""
    return types.SimpleNamespace(key=w.ti.key, queue=w.ti.queue, external_executor_id=w.ti.external_executor_id)


def test_dispatch_is_one_round_trip_with_records_and_launches(make_executor, redis_client, keys) -> None:
    ex = make_executor()
    work = [workload("batch", f"t{i}", executor_config=sim("succeed")) for i in range(50)]
    before = redis_client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
    Driver(ex).submit(work)
    assert redis_client.info("commandstats")["cmdstat_exec"]["calls"] == before + 1  # one MULTI/EXEC
    entries = redis_client.xrange(keys.launch("default"))
    assert len(entries) == 50
    msg = decode(entries[0][1][FIELD])
    assert isinstance(msg, LaunchTask) and msg.scheduler_id == "sched-a"
    assert msg.pod_override == {"metadata": {"annotations": {"kubestream.io/sim": "succeed"}}}
    assert '"token":"not-a-real-jwt"' in msg.workload_json
    record = redis_client.hgetall(keys.task(msg.pod_name))
    assert record[b"owner"] == b"sched-a" and record[b"dag_id"] == b"batch"
    assert len(ex.running) == 50 and not ex.queued_tasks


def test_a_big_batch_goes_in_chunks_and_a_lost_redis_keeps_the_rest_queued(make_executor, redis_client, keys,
                                                                            monkeypatch) -> None:
    """Launchers start on a big batch's first chunk while the rest is written; Redis lost after a chunk: the chunks
    written are running, the rest stays queued (nothing lost, nothing twice) and goes with the next heartbeat."""
    import redis

    from kubestream.executor import executor as executor_module

    monkeypatch.setattr(executor_module, "DISPATCH_CHUNK", 10)
    ex = make_executor()
    work = [workload("chunks", f"t{i}") for i in range(25)]
    real_redis, real_chunk, chunks = ex.redis, ex._dispatch_chunk, []

    def chunk_then_lose_redis(workloads):
        chunks.append(len(workloads))
        real_chunk(workloads)
        ex.redis = redis.Redis(port=free_port())  # nothing listens there: the next chunk meets a real ConnectionError

    monkeypatch.setattr(ex, "_dispatch_chunk", chunk_then_lose_redis)
    before = redis_client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
    Driver(ex).submit(work)
    assert chunks == [10, 10]  # the second chunk's write failed: the third was not tried
    assert redis_client.info("commandstats")["cmdstat_exec"]["calls"] == before + 1
    assert redis_client.xlen(keys.launch("default")) == 10
    assert {w.ti.key for w in work[:10]} == set(ex.running)
    assert {w.ti.key for w in work[10:]} == set(ex.queued_tasks)
    ex.redis = real_redis
    monkeypatch.setattr(ex, "_dispatch_chunk", real_chunk)
    ex.trigger_tasks(len(ex.queued_tasks))  # the next heartbeat: the rest, in chunks of 10
    assert redis_client.info("commandstats")["cmdstat_exec"]["calls"] == before + 3
    assert redis_client.xlen(keys.launch("default")) == 25
    assert len(ex.running) == 25 and not ex.queued_tasks


def test_unreachable_redis_keeps_work_queued_and_sync_returns(settings, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__KUBESTREAM__REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("AIRFLOW__KUBESTREAM__SCHEDULER_ID", "lonely")
    ex = DbStandIn()
    with pytest.raises(Exception):  # noqa: B017 - start() must fail loudly: the group cannot be created
        ex.start()
    # a started executor whose Redis goes away
    ex.settings = ex.load_settings()
    from kubestream.keys import Keys
    from kubestream.redisconn import connect
    from kubestream.store import TaskStore

    ex.keys, ex.scheduler_id = Keys(ex.settings.key_prefix), "lonely"
    ex.redis = connect(ex.settings, role="executor")
    ex.store = TaskStore(ex.redis, ex.keys, ex.settings)
    w = workload("offline", "t1")
    Driver(ex).submit([w])
    assert w.ti.key in ex.queued_tasks and not ex.running  # stays queued, retried next heartbeat
    assert ex.apply_results() == 0


def test_invalid_executor_config_fails_the_task_before_dispatch(make_executor, redis_client, keys) -> None:
    ex = make_executor()
    bad = workload("cfg", "bad", executor_config={"pod_override": "not a pod"})
    good = workload("cfg", "good")
    Driver(ex).submit([bad, good])
    state, info = ex.get_event_buffer()[bad.ti.key]
    assert str(state) in ("failed", "TaskInstanceState.FAILED") and "V1Pod" in info
    assert good.ti.key in ex.running and redis_client.xlen(keys.launch("default")) == 1


def test_v1pod_override_and_template_file_are_shipped(tmp_path) -> None:
    from kubernetes.client import models as m

    template = tmp_path / "tpl.yaml"
    template.write_text("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: base\n    image: custom:1\n")
    pod = m.V1Pod(metadata=m.V1ObjectMeta(labels={"team": "a"}),
                  spec=m.V1PodSpec(containers=[m.V1Container(name="base", resources=m.V1ResourceRequirements(
                      limits={"memory": "1Gi"}))]))
    override, tpl = executor_config_parts({"pod_override": pod, "pod_template_file": str(template)})
    assert override == {"metadata": {"labels": {"team": "a"}},
                        "spec": {"containers": [{"name": "base", "resources": {"limits": {"memory": "1Gi"}}}]}}
    assert tpl["spec"]["containers"][0]["image"] == "custom:1"


def test_adoption_moves_ownership_and_later_events(pipeline, streams) -> None:
    old = pipeline.driver
    work = [workload("adopt", f"t{i}", executor_config=sim("run:delay=2")) for i in range(10)]
    old.submit(work)
    pipeline.start()
    wait_for(lambda: streams.live() == 10, timeout=60, what="all pods live")
    old.executor.terminate()  # the old scheduler dies
    new = pipeline.new_driver(scheduler_id="sched-b")
    stranger = workload("adopt", "never-dispatched")
    not_adopted = new.executor.try_adopt_task_instances([_ti(w) for w in work] + [_ti(stranger)])
    assert [t.key for t in not_adopted] == [stranger.ti.key]
    finals = new.run_until([w.ti.key for w in work], timeout=60)
    assert set(finals.values()) == {"success"}
    assert streams.task(pod_name(work[0]))["owner"] == "sched-b"


def test_revoke_is_recorded_first_and_the_pod_removed(pipeline, streams, redis_client, keys) -> None:
    ex = pipeline.executor
    running = workload("revoke", "running", executor_config=sim("run"))
    queued = workload("revoke", "queued")
    pipeline.submit([running])
    pipeline.start()
    pod = pod_name(running)
    wait_for(lambda: streams.pod_phase(pod) == "Running", timeout=60, what="the pod running")
    ex.revoke_task(ti=_ti(running))
    assert running.ti.key not in ex.running
    assert streams.task(pod)["revoked"] == "1"
    wait_for(lambda: pod not in streams.pods(), timeout=60, what="the revoked pod deleted")
    # a revoked task that was never launched: launchers skip it
    ex.queue_workload(queued, session=None)
    ex.trigger_tasks(1)
    ex.revoke_task(ti=_ti(queued))
    revokes = keys.launch("default", 0)  # the highest band's stream, read first
    wait_for(lambda: streams.pending() == 0 and streams.launch_len() == 0 and redis_client.xlen(revokes) == 0,
             timeout=60, what="launch streams drained")
    # skipped by the launcher, or (if its create won the race) deleted by the revoke and the watcher
    wait_for(lambda: pod_name(queued) not in streams.pods(), timeout=60, what="no pod for the revoked queued task")
    assert not any(isinstance(decode(f[FIELD]), RevokeTask) for stream in (keys.launch("default"), revokes)
                   for _, f in redis_client.xrange(stream))


def test_undecodable_result_is_dead_lettered_and_the_rest_applied(make_executor, redis_client, keys, settings,
                                                                    streams) -> None:
    from kubestream.executor.launches import task_key
    from kubestream.messages import TaskState, TaskStateChanged, encode

    ex = make_executor()
    w = workload("results", "t1")
    Driver(ex).submit([w])
    stream = keys.results("sched-a")
    redis_client.xadd(stream, signed(settings, stream, b"\xc1garbage"))
    redis_client.xadd(stream, signed(settings, stream,
                                     encode(TaskStateChanged(task_key(w.ti.key), TaskState.FAILED, "boom"))))
    driver = Driver(ex)
    assert driver.run_until([w.ti.key], timeout=10) == {w.ti.key: "failed"}
    (dead,) = streams.dead_letters()
    assert dead.reason.startswith("result: not msgpack") and dead.stream == stream
    assert streams.results_pending() == 0
    assert w.ti.key not in ex._external_ids  # nothing kept for a finished task


def _failed_results(ex, redis_client, keys, settings, work) -> None:
    """Publish a FAILED result for each of ``work`` (dispatched by ``ex``) to ``ex``'s result stream."""
    from kubestream.executor.launches import task_key
    from kubestream.messages import TaskState, TaskStateChanged
    from kubestream.signing import signer_for
    from kubestream.store import TaskStore

    store = TaskStore(redis_client, keys, settings, signer_for(settings))
    for w in work:
        assert store.publish(TaskStateChanged(task_key(w.ti.key), TaskState.FAILED, "boom")).published


def _calls(redis_client, command: str) -> int:
    return redis_client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def _pending(redis_client, ex) -> int:
    from kubestream.keys import RESULTS_GROUP

    return int(redis_client.xpending(ex.results_stream, RESULTS_GROUP)["pending"])


def test_a_sync_applies_up_to_sync_batch_results_a_slice_at_a_time(make_executor, redis_client, keys, settings,
                                                                   monkeypatch) -> None:
    """Each slice is read, applied and acknowledged before the next is read (its objects freed first); a sync
    stops at ``sync_batch``, or at the first slice that comes back short (nothing more waits)."""
    from kubestream.executor import executor as executor_module

    monkeypatch.setattr(executor_module, "RESULT_SLICE", 10)
    ex = make_executor(sync_batch="25")
    work = [workload("slices", f"t{i:02d}") for i in range(30)]
    Driver(ex).submit(work)
    assert ex.apply_results() == 0  # the first sync reads its own pending backlog (none here), then new results
    _failed_results(ex, redis_client, keys, settings, work)
    reads, acks = _calls(redis_client, "xreadgroup"), _calls(redis_client, "xack")
    assert ex.apply_results() == 25
    assert (_calls(redis_client, "xreadgroup") - reads, _calls(redis_client, "xack") - acks) == (3, 3)  # 10, 10, 5
    assert _pending(redis_client, ex) == 0
    failed = {k for k, (state, _) in ex.get_event_buffer().items() if str(getattr(state, "value", state)) == "failed"}
    assert failed == {w.ti.key for w in work[:25]}  # the first 25 published
    reads = _calls(redis_client, "xreadgroup")
    assert ex.apply_results() == 5
    assert _calls(redis_client, "xreadgroup") - reads == 1  # 5 of 10: nothing more waits
    assert ex.apply_results() == 0 and _pending(redis_client, ex) == 0


def test_a_restarted_scheduler_applies_its_pending_results_a_slice_at_a_time(make_executor, redis_client, keys,
                                                                            settings, monkeypatch) -> None:
    """Results an earlier process read and did not acknowledge (it died) are applied first, in slices that
    go on after one another, then the new ones."""
    from kubestream.executor import executor as executor_module
    from kubestream.keys import RESULTS_GROUP

    monkeypatch.setattr(executor_module, "RESULT_SLICE", 10)
    first = make_executor()
    work = [workload("backlog", f"t{i:02d}") for i in range(25)]
    Driver(first).submit(work)
    _failed_results(first, redis_client, keys, settings, work[:20])
    # the earlier process read these 20 and died before it acknowledged them
    assert len(redis_client.xreadgroup(RESULTS_GROUP, "sched-a", {first.results_stream: ">"})[0][1]) == 20
    _failed_results(first, redis_client, keys, settings, work[20:])  # and 5 more came since
    assert _pending(redis_client, first) == 20
    first.terminate()
    restarted = make_executor()
    restarted.running.update(w.ti.key for w in work)  # what adoption would have given back
    assert restarted.apply_results() == 25  # 10 + 10 pending, an empty read, then the 5 new ones
    assert _pending(redis_client, restarted) == 0
    assert {k for k in restarted.get_event_buffer()} == {w.ti.key for w in work}
