"""Benchmark: pod-creation throughput (kubestream launchers vs a raw client) and scheduler-side cost.

Runs against a real redis-server and the real local kube-apiserver (no kubelet:
created pods stay Pending, which is all a create costs the API). Prints figures
and writes them to bench-results/pipeline.json. Compare ratios, not absolute
times: this is a noisy 2-core machine.

    .venv/bin/python bench/pipeline.py [--pods 400] [--launchers 4] [--concurrency 8] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client as k8s  # noqa: E402

from kubestream.keys import LAUNCH_GROUP, Keys  # noqa: E402
from kubestream.localcluster.cluster import LocalCluster  # noqa: E402
from kubestream.localcluster.kubeclient import api_client  # noqa: E402
from kubestream.localcluster.procs import stop_pid, wait_for  # noqa: E402
from kubestream.localcluster.redisserver import RedisServer  # noqa: E402
from kubestream.messages import TaskState, TaskStateChanged  # noqa: E402
from kubestream.settings import Settings  # noqa: E402
from kubestream.store import TaskStore  # noqa: E402
from kubestream.taskkey import TaskKey  # noqa: E402
from kubestream.workers.podspec import build_pod  # noqa: E402


def raw_client(core: k8s.CoreV1Api, ns: str, pods: int, threads: int) -> float:
    def create(i: int) -> None:
        pod = build_pod(key=TaskKey("raw", f"t{i}", "r", 1), namespace=ns, image="img", workload_json="{}",
                        scheduler_id="bench", template=None, pod_override=None)
        core.create_namespaced_pod(ns, pod, _preload_content=False)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(pods)))
    return pods / (time.perf_counter() - t0)


def executor_side(settings: Settings, pods: int, queue: str) -> dict[str, float]:
    """Dispatch `pods` workloads and apply `pods` results through the real executor; CPU per task."""
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-airflow-")
    from tests.helpers import airflow_env, workload  # airflow-aware helpers

    os.environ.update(airflow_env(settings))
    from kubestream.executor import KubeStreamExecutor

    class Ex(KubeStreamExecutor):
        def task_states_from_db(self, keys):  # no Airflow DB in this benchmark
            return {k: "success" for k in keys}

    ex = Ex()
    ex.start()
    work = [workload("bench", f"t{i}", queue=queue) for i in range(pods)]
    for w in work:
        ex.queue_workload(w, session=None)
    c0, t0 = time.process_time(), time.perf_counter()
    ex.trigger_tasks(pods)
    dispatch_cpu, dispatch_wall = time.process_time() - c0, time.perf_counter() - t0
    store = TaskStore(ex.redis, ex.keys, ex.settings)
    for w in work:
        k = w.ti.key
        store.publish(TaskStateChanged(TaskKey(k.dag_id, k.task_id, k.run_id, k.try_number, k.map_index),
                                       TaskState.SUCCEEDED))
    c0, t0, calls, worst = time.process_time(), time.perf_counter(), 0, 0.0
    while ex.running:
        s = time.perf_counter()
        ex.sync()
        ex.get_event_buffer()
        worst = max(worst, time.perf_counter() - s)
        calls += 1
    sync_cpu = time.process_time() - c0
    return {"dispatch_ms_per_batch": dispatch_wall * 1000, "cpu_us_per_task_dispatch": dispatch_cpu / pods * 1e6,
            "cpu_us_per_task_sync": sync_cpu / pods * 1e6, "worst_sync_ms": worst * 1000, "sync_calls": calls}


def launchers(settings: Settings, kubeconfig: str, ns: str, pods: int, n: int, concurrency: int) -> float:
    keys = Keys(settings.key_prefix)
    r = __import__("redis").Redis.from_url(settings.redis_url)
    store = TaskStore(r, keys, settings)
    from kubestream.messages import FIELD, LaunchTask, encode

    for q in ("bench",):
        r.xgroup_create(keys.launch(q), LAUNCH_GROUP, id="0", mkstream=True)
    env = {**os.environ, "KUBESTREAM_REDIS_URL": settings.redis_url, "KUBESTREAM_KEY_PREFIX": settings.key_prefix,
           "KUBESTREAM_NAMESPACE": ns, "KUBESTREAM_QUEUES": "bench", "KUBESTREAM_KUBE_CONFIG": kubeconfig,
           "KUBESTREAM_LAUNCH_CONCURRENCY": str(concurrency), "KUBESTREAM_LOG_LEVEL": "WARNING"}
    procs = [subprocess.Popen([sys.executable, "-m", "kubestream.cli", "launcher", "--log-level", "WARNING"],
                              env={**env, "KUBESTREAM_CONSUMER_NAME": f"bench-{i}"}) for i in range(n)]
    try:
        wait_for(lambda: len(r.xinfo_consumers(keys.launch("bench"), LAUNCH_GROUP)) == n, timeout=60,
                 what="launchers ready")
        pipe = r.pipeline(transaction=True)
        for i in range(pods):
            key = TaskKey("ks", f"t{i}", "r", 1)
            store.dispatch(pipe, key, owner="bench", queue="bench", namespace=ns, dispatch="")
            pipe.xadd(keys.launch("bench"), {FIELD: encode(LaunchTask(key, "bench", "bench", "{}"))})
        t0 = time.perf_counter()
        pipe.execute()
        wait_for(lambda: r.xlen(keys.launch("bench")) == 0, timeout=600, interval=0.01, what="all pods created")
        return pods / (time.perf_counter() - t0)
    finally:
        for p in procs:
            stop_pid(p.pid)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=400)
    parser.add_argument("--launchers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kubestream-bench-"))
    cluster, redis_server = LocalCluster(work / "cluster"), RedisServer(data_dir=work / "redis")
    try:
        redis_server.start()
        state = cluster.up(("bench-raw", "bench-ks"))
        settings = Settings.from_mapping({"redis_url": redis_server.url, "key_prefix": f"b{uuid.uuid4().hex[:6]}",
                                          "scheduler_id": "bench"})
        core = k8s.CoreV1Api(api_client(state.kubeconfig("admin"), pool_size=64))
        inflight = args.launchers * args.concurrency
        raw = raw_client(core, "bench-raw", args.pods, inflight)
        ks = launchers(settings, state.kubeconfig("launcher"), "bench-ks", args.pods, args.launchers,
                       args.concurrency)
        sched = executor_side(settings, 2000, "unserved")
        results = {"pods": args.pods, "in_flight_creates": inflight, "raw_client_pods_per_s": round(raw, 1),
                   "kubestream_pods_per_s": round(ks, 1), "ratio_kubestream_to_raw": round(ks / raw, 3),
                   **{k: round(v, 2) for k, v in sched.items()}}
        print(json.dumps(results, indent=2))
        out = Path("bench-results")
        out.mkdir(exist_ok=True)
        (out / "pipeline.json").write_text(json.dumps(results, indent=2))
        return 0
    finally:
        cluster.down()
        redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
