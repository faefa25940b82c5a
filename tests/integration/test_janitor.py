"""Growth without bound: the janitor deletes result streams of schedulers that are gone and stale consumers."""

from __future__ import annotations

import json
import subprocess
import sys

from devkit.scheduler import Driver
from devkit.workloads import workload
from kubestream.janitor import sweep_consumers, sweep_result_streams
from kubestream.keys import LAUNCH_GROUP, RESULTS_GROUP
from kubestream.messages import FIELD


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


def test_janitor_once_through_the_cli(settings, redis_client, keys) -> None:
    redis_client.xadd(keys.results("ghost"), {FIELD: b"x"})
    env = {**settings.to_env(), "KUBESTREAM_STALE_AFTER_SECONDS": "60", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "kubestream.cli", "janitor", "--once"], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == {"result_streams": [], "consumers": []}  # not stale yet: 60 s
    assert redis_client.exists(keys.results("ghost"))
