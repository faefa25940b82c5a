"""The local demo: the whole kubestream pipeline on this machine, then a summary.

Starts a redis-server, the local kube-apiserver + etcd, the simulated kubelet,
two launcher processes and the watcher (through the real ``kubestream`` CLI),
then plays the scheduler's part through kubestream's own dispatch path
(task records + LaunchTask messages in one MULTI/EXEC, results read from the
scheduler's result stream) for a batch of tasks with mixed outcomes, shows
progress and prints a summary. Everything it started is stopped on exit,
Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from kubestream.keys import RESULTS_GROUP, Keys
from kubestream.localcluster.cluster import LocalCluster
from kubestream.localcluster.kubeclient import api_client
from kubestream.localcluster.kubelet import SimKubelet
from kubestream.localcluster.procs import stop_pid
from kubestream.localcluster.redisserver import RedisServer
from kubestream.messages import FIELD, LaunchTask, TaskState, decode, encode
from kubestream.redisconn import connect
from kubestream.settings import Settings
from kubestream.store import TaskStore
from kubestream.taskkey import TaskKey

RULES = [("succeed", 6), ("run:delay=2", 2), ("exit:3", 1), ("errimagepull", 1)]


def _rule(i: int) -> str:
    cycle = [rule for rule, weight in RULES for _ in range(weight)]
    return cycle[i % len(cycle)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubestream-demo")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="kubestream-demo-"))
    redis_server = RedisServer(data_dir=work / "redis")
    cluster = LocalCluster(work / "cluster")
    procs: list[subprocess.Popen[bytes]] = []
    kubelet = None
    try:
        print(f"[demo] starting redis-server and the local cluster (state in {work})", flush=True)
        redis_server.start()
        state = cluster.up(("kubestream-demo",))
        print(f"[demo] kube-apiserver {state.host}; try: kubectl --kubeconfig {state.kubeconfig('admin')} "
              f"get pods -n kubestream-demo", flush=True)
        kubelet = SimKubelet(api_client(state.kubeconfig("kubelet")), node_name="demo-node",
                             namespaces=["kubestream-demo"]).start()
        settings = Settings.from_mapping({"redis_url": redis_server.url, "namespace": "kubestream-demo",
                                          "scheduler_id": "demo-scheduler", "key_prefix": "kubestream"})
        env = {**os.environ, "KUBESTREAM_REDIS_URL": redis_server.url, "KUBESTREAM_NAMESPACE": "kubestream-demo"}
        for name, kind, identity in (("launcher-1", "launcher", "launcher"), ("launcher-2", "launcher", "launcher"),
                                     ("watcher", "watcher", "watcher")):
            log = open(work / f"{name}.log", "ab")  # noqa: SIM115
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "kubestream.cli", kind],
                env={**env, "KUBESTREAM_KUBE_CONFIG": state.kubeconfig(identity), "KUBESTREAM_CONSUMER_NAME": name},
                stdout=log, stderr=subprocess.STDOUT))
            log.close()
        print(f"[demo] 2 launchers and the watcher running (logs in {work})", flush=True)
        return _run(settings, args.tasks, args.timeout, work)
    except KeyboardInterrupt:
        print("\n[demo] interrupted", flush=True)
        return 130
    finally:
        print("[demo] stopping everything it started", flush=True)
        for proc in procs:
            stop_pid(proc.pid, timeout=15)
        if kubelet is not None:
            kubelet.stop()
        cluster.down()
        redis_server.stop()


def _run(settings: Settings, count: int, timeout: float, work: Path) -> int:
    client = connect(settings)
    keys = Keys(settings.key_prefix)
    store = TaskStore(client, keys, settings)
    stream = keys.results(settings.scheduler_id)
    client.xgroup_create(stream, RESULTS_GROUP, id="0", mkstream=True)
    run_id = time.strftime("demo__%Y%m%dT%H%M%S")
    tasks = {}
    pipe = client.pipeline(transaction=True)
    for i in range(count):
        key = TaskKey("kubestream_demo", f"task_{i:03d}", run_id, 1)
        msg = LaunchTask(key=key, queue="default", scheduler_id=settings.scheduler_id, workload_json="{}",
                         pod_override={"metadata": {"annotations": {"kubestream.io/sim": _rule(i)}}},
                         queued_at=time.time())
        tasks[key] = _rule(i)
        store.dispatch(pipe, key, owner=settings.scheduler_id, queue="default", namespace=settings.namespace,
                       dispatch="")
        pipe.xadd(keys.launch("default"), {FIELD: encode(msg)})
    started = time.monotonic()
    pipe.execute()
    print(f"[demo] dispatched {count} tasks in one round trip ({(time.monotonic() - started) * 1000:.1f} ms)",
          flush=True)
    final: dict[TaskKey, tuple[TaskState, str]] = {}
    seen_running: set[TaskKey] = set()
    last_print = 0.0
    while len(final) < count and time.monotonic() - started < timeout:
        reply = client.xreadgroup(RESULTS_GROUP, "demo", {stream: ">"}, count=1000, block=500)
        for _, entries in reply or []:
            for eid, fields in entries:
                event = decode(fields[FIELD])
                if event.state is TaskState.RUNNING:
                    seen_running.add(event.key)
                elif event.state.final:
                    final[event.key] = (event.state, event.reason)
                client.xack(stream, RESULTS_GROUP, eid)
        if time.monotonic() - last_print >= 1:
            last_print = time.monotonic()
            states = Counter(s.value for s, _ in final.values())
            print(f"[demo] {time.monotonic() - started:5.1f}s  finished {len(final):4d}/{count}  "
                  f"seen running {len(seen_running):4d}  {dict(states)}", flush=True)
    elapsed = time.monotonic() - started
    by_rule = Counter((tasks[k], s.value) for k, (s, _) in final.items())
    print("\n[demo] summary", flush=True)
    print(f"  tasks: {count}, finished: {len(final)}, time: {elapsed:.1f}s, "
          f"throughput: {len(final) / elapsed:.0f} tasks/s", flush=True)
    for (rule, state), n in sorted(by_rule.items()):
        print(f"  {rule:<16} -> {state:<10} x{n}", flush=True)
    sample = next((f"{k}: {r}" for k, (s, r) in final.items() if s is TaskState.FAILED), None)
    if sample:
        print(f"  a failure reason: {sample}", flush=True)
    expected_failed = {"exit:3", "errimagepull"}
    wrong = [k for k, (s, _) in final.items() if (s is TaskState.FAILED) != (tasks[k] in expected_failed)]
    status = subprocess.run([sys.executable, "-m", "kubestream.cli", "status"], capture_output=True, text=True,
                            env={**os.environ, "KUBESTREAM_REDIS_URL": settings.redis_url})
    print("\n" + status.stdout, flush=True)
    (work / "summary.json").write_text(json.dumps({"tasks": count, "finished": len(final), "seconds": elapsed}))
    if len(final) < count or wrong:
        print(f"[demo] FAILED: {count - len(final)} unfinished, {len(wrong)} in the wrong state", flush=True)
        return 1
    print("[demo] every task reached the state its rule says", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
