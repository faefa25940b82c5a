"""Redis memory per task and the cost of signing, measured on the product's own code paths.

``python -m bench.footprint [--tasks 1000]`` starts a throwaway redis-server and drives the task
lifecycle through kubestream's real writers (the executor's record + signed launch, a launcher
settling the entry, the watcher publishing running and succeeded, the executor acknowledging):

- ``memory_phase``: Redis ``used_memory`` with N tasks in flight (records, live set, result
  entries) and after they finished (records kept ``final_record_ttl_seconds``, result entries
  kept until trimmed at ``results_maxlen``); per task, and projected for 100k tasks a day;
- ``signing_phase``: microseconds to sign and to verify one launch message of a typical size,
  beside the time to encode and decode it.

Prints the figures and writes them to bench/results/footprint.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from devkit.redisserver import RedisServer
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.keys import LAUNCH_GROUP, RESULTS_GROUP, Keys
from kubestream.messages import LaunchTask, TaskState, TaskStateChanged, decode, encode
from kubestream.settings import Settings
from kubestream.signing import Signer, signer_for
from kubestream.store import TaskStore
from kubestream.taskkey import TaskKey

RESULTS_FILE = Path(__file__).with_name("results") / "footprint.json"
WORKLOAD_BYTES = 1500  # an ExecuteTask's JSON with its token is 1-2 kB


@dataclass(frozen=True)
class Memory:
    tasks: int
    in_flight_bytes_per_task: float  # records, live set, launch entry gone, result entries kept
    finished_bytes_per_task: float  # final record (until final_record_ttl_seconds) + its result entries
    record_bytes_per_finished_task: float  # the final record alone
    result_entry_bytes: float  # one result entry (kept until trimmed at results_maxlen)
    per_100k_tasks_a_day_mib: float  # records alive for final_record_ttl_seconds + results_maxlen entries


@dataclass(frozen=True)
class Signing:
    message_bytes: int
    sign_us: float
    verify_us: float
    encode_us: float
    decode_us: float


def _used(client: redis.Redis) -> int:
    client.execute_command("MEMORY", "PURGE")
    return int(client.info("memory")["used_memory"])


def _launch(key: TaskKey) -> LaunchTask:
    workload = json.dumps({"token": "x" * (WORKLOAD_BYTES - 200), "ti": {"dag_id": key.dag_id}})
    return LaunchTask(key, "default", "sched", workload, f"ext-{key.task_id}")


def memory_phase(client: redis.Redis, settings: Settings, tasks: int) -> Memory:
    keys = Keys(settings.key_prefix)
    signer = signer_for(settings)
    store = TaskStore(client, keys, settings, signer)
    stream = keys.launch("default")
    client.xgroup_create(stream, LAUNCH_GROUP, id="0", mkstream=True)
    client.xgroup_create(keys.results("sched"), RESULTS_GROUP, id="0", mkstream=True)
    base = _used(client)
    task_keys = [TaskKey("footprint", f"t{i}", "run-1", 1) for i in range(tasks)]
    pipe = client.pipeline(transaction=True)
    for key in task_keys:  # the executor's dispatch
        store.dispatch(pipe, key, owner="sched", queue="default", namespace="tasks", dispatch=f"ext-{key.task_id}",
                       stream=stream, message=encode(_launch(key)))
    pipe.execute()
    client.xreadgroup(LAUNCH_GROUP, "launcher", {stream: ">"}, count=tasks)  # a launcher settles them all
    for eid, _ in client.xrange(stream):
        client.xack(stream, LAUNCH_GROUP, eid)
        client.xdel(stream, eid)
    for key in task_keys:  # the watcher: pending, running
        for state in (TaskState.PENDING, TaskState.RUNNING):
            store.publish(TaskStateChanged(key, state, "", key.pod_name(), "tasks", time.time()),
                          f"ext-{key.task_id}")
    in_flight = _used(client) - base
    results_before = client.xlen(keys.results("sched"))
    for key in task_keys:
        store.publish(TaskStateChanged(key, TaskState.SUCCEEDED, "", key.pod_name(), "tasks", time.time()),
                      f"ext-{key.task_id}")
    finished = _used(client) - base
    entries = client.xlen(keys.results("sched"))
    client.delete(keys.results("sched"))
    records_only = _used(client) - base
    entry_bytes = (finished - records_only) / max(entries, 1)
    per_record = records_only / tasks
    alive = 100_000 * min(settings.final_record_ttl_seconds, 86_400) / 86_400
    projected = alive * per_record + settings.results_maxlen * entry_bytes
    assert results_before == 2 * tasks and entries == 3 * tasks, (results_before, entries)
    return Memory(tasks, round(in_flight / tasks, 1), round(finished / tasks, 1), round(per_record, 1),
                  round(entry_bytes, 1), round(projected / 2**20, 1))


def signing_phase(settings: Settings, rounds: int = 20_000) -> Signing:
    signer = signer_for(settings)
    assert isinstance(signer, Signer)
    stream = Keys(settings.key_prefix).launch("default")
    message = _launch(TaskKey("footprint", "t", "run-1", 1))
    raw = encode(message)
    fields = signer.sign(stream, raw)

    def per_call(call: object) -> float:
        assert callable(call)
        started = time.perf_counter()
        for _ in range(rounds):
            call()
        return round((time.perf_counter() - started) / rounds * 1e6, 2)

    return Signing(len(raw), per_call(lambda: signer.sign(stream, raw)),
                   per_call(lambda: signer.verify(stream, fields)),
                   per_call(lambda: encode(message)), per_call(lambda: decode(raw)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args(argv)
    with RedisServer(data_dir=Path(tempfile.mkdtemp(prefix="kubestream-footprint-"))) as server:
        settings = Settings.from_mapping({"redis_url": server.url, "key_prefix": "footprint",
                                          "signing_keys": DEV_SIGNING_KEYS})
        client = redis.Redis.from_url(server.url)
        memory = memory_phase(client, settings, args.tasks)
        client.close()
    signing = signing_phase(settings)
    results = {"date": time.strftime("%Y-%m-%d"), "memory": asdict(memory), "signing": asdict(signing)}
    print(json.dumps(results, indent=2))
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
