"""Benchmark: pod-creation throughput (kubestream launchers vs a raw client), completions end to end,
and scheduler-side cost.

Runs against a real redis-server and the real local kube-apiserver. Every Kubernetes API call of
the raw client, the launchers and the watcher goes through ONE ``HttpFaultProxy`` (plain HTTP on
loopback -> HTTPS apiserver) that adds ``--latency-ms`` to each request, so both sides of the
throughput comparison see the same conditions. The proxy and the simulated kubelet run in child
processes of their own, so that they share neither a GIL nor ``process_time`` with the raw client
or the executor measured here. Prints figures and writes them to bench-results/pipeline.json.
Compare ratios, not absolute times: this is a noisy 2-core machine.

    .venv/bin/python bench/pipeline.py [--latency-ms 0] [--pods 300] [--rounds 3] [--launchers 4]
                                       [--concurrency 8] [--tasks 300] [--no-direct] [--max-seconds 420]

Measurements:

1. throughput: ``--rounds`` rounds of ``--pods`` creates per side, the order rotating each round
   (no kubelet in those namespaces: pods stay Pending, a create is all that is measured; the
   namespaces are emptied between rounds), medians reported:
   - ``raw``: the official client with launchers x concurrency threads, reading each (small)
     response so that its connection is reused (as the launchers do);
   - ``kubestream``: ``--launchers`` ``kubestream launcher`` processes, ``--concurrency`` creates in
     flight each, fed through Redis.
   Then the same rounds again without the proxy (``direct_no_proxy``; skip with ``--no-direct``):
   behind the proxy every request gets a new upstream TLS connection whatever the client does, so
   only the direct rounds show what connection reuse is worth against the real apiserver;
2. executor side: one ``_process_workloads`` batch of 2000 workloads and ``sync()`` applying 2000
   results (no Kubernetes involved; the Airflow DB lookup is a constant);
3. completions: ``--tasks`` tasks dispatched through the real executor, created by the launchers,
   run by a SimKubelet (rules mode, default "succeed", direct to the apiserver), reported by a
   ``kubestream watcher`` (through the proxy) and applied by the executor's ``sync()``, polled every
   50 ms while idle as a scheduler loop would. Reported: time to all final states, the slowest
   ``sync()`` and the ``trigger_tasks()`` call (wall, CPU, and time in Python's GC), and the
   scheduler thread's CPU per task (``time.thread_time`` inside those calls, idle polls included).

The whole run is bounded by ``--max-seconds`` (SIGALRM); everything started is stopped on any exit
(exception, Ctrl-C, SIGTERM); child processes also get SIGTERM if this process dies.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client as k8s

from kubestream.keys import LAUNCH_GROUP, Keys
from devkit.cluster import ClusterState, LocalCluster
from kubestream.kubeapi import api_client, raw
from devkit.procs import free_port, stop_pid
from devkit.redisserver import RedisServer
from kubestream.messages import TaskState, TaskStateChanged
from kubestream.settings import Settings
from kubestream.store import TaskStore
from kubestream.taskkey import TaskKey
from kubestream.workers.podspec import build_pod

NS_RAW, NS_KS, NS_DONE = "bench-raw", "bench-ks", "bench-done"
POLL = 0.05  # sync() polling interval while no result is waiting


class BenchAborted(BaseException):
    """Watchdog or signal: a BaseException so that no `except Exception` on the way swallows it."""


# -- child processes ------------------------------------------------------------------------------------

# Children get SIGTERM when this process dies, even by SIGKILL (PR_SET_PDEATHSIG = 1).
_GUARD = ("import ctypes, os, runpy, signal, sys; ctypes.CDLL(None).prctl(1, int(signal.SIGTERM)); "
          "os.getppid() == int(sys.argv.pop(1)) or sys.exit(1); sys.argv[0] = {name!r}; "
          "runpy.run_{kind}({target!r}, run_name='__main__')")


class Children:
    """Every process this benchmark starts itself; stopped by PID, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def cli(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        code = _GUARD.format(name="kubestream", kind="module", target="kubestream.cli")
        return self._start(name, [sys.executable, "-c", code, str(os.getpid()), *args], env)

    def helper(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        code = _GUARD.format(name=__file__, kind="path", target=__file__)
        return self._start(name, [sys.executable, "-c", code, str(os.getpid()), "--helper", *args], dict(os.environ))

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=ROOT)
        self.procs.append((name, proc))
        return proc

    def check(self, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
        for name, proc in self.procs:
            if (procs is None or proc in procs) and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, chars: int = 3000) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
        for name, proc in reversed(list(self.procs)):
            if procs is None or proc in procs:
                stop_pid(proc.pid, timeout=15)
                self.procs.remove((name, proc))


def wait(cond: Callable[[], object], *, timeout: float, what: str, children: Children,
         procs: list[subprocess.Popen[bytes]] | None = None, interval: float = 0.05) -> object:
    """Poll ``cond``; fail at once if one of ``procs`` (default: all children) exited."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        children.check(procs)
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - e.g. the server is not up yet
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last!r})" if last else ""))
        time.sleep(interval)


def run_helper(argv: list[str]) -> int:
    """Child process body: ``proxy`` (HttpFaultProxy) or ``kubelet`` (SimKubelet), until SIGTERM."""
    import threading

    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["proxy", "kubelet"])
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--target-port", type=int)
    parser.add_argument("--listen-port", type=int)
    parser.add_argument("--ca-file")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--kubeconfig")
    parser.add_argument("--namespace")
    args = parser.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    if args.kind == "proxy":
        from devkit.faultproxy import HttpFaultProxy

        server: Any = HttpFaultProxy("127.0.0.1", args.target_port, listen_port=args.listen_port,
                                     ca_file=args.ca_file).start()
        server.latency_ms = args.latency_ms
    else:
        from devkit.kubelet import SimKubelet

        server = SimKubelet(api_client(args.kubeconfig, pool_size=16), node_name="bench-node",
                            mode="rules", default_rule="succeed", namespaces=[args.namespace]).start()
    Path(args.ready_file).write_text("ready")
    try:
        while not done.wait(1.0):
            pass
    finally:
        server.stop()
        if args.kind == "proxy":
            print(f"proxy: {server.requests_seen} requests forwarded", flush=True)
    return 0


def start_helper(children: Children, work: Path, kind: str, args: list[str]) -> subprocess.Popen[bytes]:
    ready = work / f"{kind}.ready"
    proc = children.helper(kind, [kind, "--ready-file", str(ready), *args])
    wait(ready.exists, timeout=60, what=f"{kind} helper ready", children=children, procs=[proc])
    return proc


def proxied_kubeconfig(work: Path, proxy_url: str, state: ClusterState, identity: str) -> str:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "proxied",
        "clusters": [{"name": "proxied", "cluster": {"server": proxy_url}}],
        "users": [{"name": identity, "user": {"token": state.tokens[identity]}}],
        "contexts": [{"name": "proxied", "context": {"cluster": "proxied", "user": identity}}],
    }
    path = work / f"kubeconfig-proxied-{identity}"
    path.write_text(json.dumps(config))  # JSON is valid YAML
    path.chmod(0o600)
    return str(path)


def component_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESTREAM_")}
    env.update(settings.to_env())
    env.update({f"KUBESTREAM_{k.upper()}": v for k, v in overrides.items()})
    return env


def start_launchers(children: Children, settings: Settings, kubeconfig: str, n: int, concurrency: int,
                    tag: str) -> list[subprocess.Popen[bytes]]:
    import redis

    procs = [children.cli(f"{tag}-launcher-{i}", ["launcher", "--log-level", "WARNING"],
                          component_env(settings, kube_config=kubeconfig, launch_concurrency=str(concurrency),
                                        consumer_name=f"{tag}-{i}"))
             for i in range(n)]
    r = redis.Redis.from_url(settings.redis_url)
    streams = [Keys(settings.key_prefix).launch(q) for q in settings.queues]
    try:
        # a consumer shows up with its first XREADGROUP: then it is serving
        wait(lambda: all(len(r.xinfo_consumers(s, LAUNCH_GROUP)) == n for s in streams), timeout=90,
             what="launchers ready", children=children, procs=procs, interval=0.2)
    finally:
        r.close()
    return procs


# -- 1. throughput ------------------------------------------------------------------------------------------


def raw_client(core: k8s.CoreV1Api, ns: str, pods: int, threads: int, run: str) -> float:
    """``threads`` creates in flight, each response read so that its connection is reused."""

    def create(i: int) -> None:
        pod = build_pod(key=TaskKey("raw", f"t{i}", run, 1), namespace=ns, image="img",
                        workload_json="{}", scheduler_id="bench", template=None, pod_override=None)
        raw(core.create_namespaced_pod, ns, pod)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(pods)))
    return pods / (time.perf_counter() - t0)


def throughput(core: k8s.CoreV1Api, cleanup: k8s.CoreV1Api, settings: Settings, children: Children,
               procs: list[subprocess.Popen[bytes]], pods: int, rounds: int, inflight: int, tag: str) -> dict[str, Any]:
    """Alternating rounds (the order rotates) of: raw client, launchers."""
    sides: dict[str, Callable[[str], float]] = {
        "raw": lambda run: raw_client(core, NS_RAW, pods, inflight, run),
        "kubestream": lambda run: launchers_round(settings, children, procs, NS_KS, pods, run),
    }
    raw_client(core, NS_RAW, inflight, inflight, f"{tag}-warmup")  # connections and caches, not measured
    empty_namespace(cleanup, NS_RAW)
    got: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            got[name].append(sides[name](f"{tag}{i}"))
            empty_namespace(cleanup, NS_KS if name == "kubestream" else NS_RAW)
        print(f"{tag} round {i}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in got.items()) + " pods/s",
              file=sys.stderr, flush=True)
    med = {name: statistics.median(v) for name, v in got.items()}
    return {
        "raw_client_pods_per_s": round(med["raw"], 1),
        "kubestream_pods_per_s": round(med["kubestream"], 1),
        "ratio_kubestream_to_raw": round(med["kubestream"] / med["raw"], 3),
        "rounds_pods_per_s": {name: [round(x, 1) for x in v] for name, v in got.items()},
    }


def launchers_round(settings: Settings, children: Children, procs: list[subprocess.Popen[bytes]], ns: str,
                    pods: int, run: str) -> float:
    import redis

    from kubestream.messages import FIELD, LaunchTask, encode

    keys = Keys(settings.key_prefix)
    r = redis.Redis.from_url(settings.redis_url)
    store = TaskStore(r, keys, settings)
    stream = keys.launch(settings.queues[0])
    try:
        pipe = r.pipeline(transaction=True)
        for i in range(pods):
            key = TaskKey("ks", f"t{i}", run, 1)
            store.record_dispatch(pipe, key, owner="bench", queue=settings.queues[0], namespace=ns, dispatch="")
            pipe.xadd(stream, {FIELD: encode(LaunchTask(key, settings.queues[0], "bench", "{}"))})
        t0 = time.perf_counter()
        pipe.execute()
        # the launcher deletes an entry once its pod is created: an empty stream = all created
        wait(lambda: r.xlen(stream) == 0, timeout=120 + pods, interval=0.01, what="all pods created",
             children=children, procs=procs)
        return pods / (time.perf_counter() - t0)
    finally:
        r.close()


def empty_namespace(core: k8s.CoreV1Api, ns: str) -> None:
    """Unbound pods are deleted at once: the next round starts from an empty namespace."""
    core.delete_collection_namespaced_pod(ns, grace_period_seconds=0, _preload_content=False)
    deadline = time.monotonic() + 60
    while core.list_namespaced_pod(ns, limit=1).items:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pods of {ns} not deleted")
        time.sleep(0.1)


# -- 2. executor side -----------------------------------------------------------------------------------------


def executor_side(settings: Settings, pods: int, queue: str) -> dict[str, float]:
    """Dispatch `pods` workloads and apply `pods` results through the real executor; CPU per task."""
    from tests.helpers import DbStandIn, airflow_env, workload

    os.environ.update(airflow_env(settings))
    ex = DbStandIn()
    ex.start()
    try:
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
        c0, calls, worst = time.process_time(), 0, 0.0
        while ex.running:
            s = time.perf_counter()
            ex.sync()
            ex.get_event_buffer()
            worst = max(worst, time.perf_counter() - s)
            calls += 1
        sync_cpu = time.process_time() - c0
    finally:
        ex.terminate()
    return {"dispatch_ms_per_batch": dispatch_wall * 1000, "cpu_us_per_task_dispatch": dispatch_cpu / pods * 1e6,
            "cpu_us_per_task_sync": sync_cpu / pods * 1e6, "worst_sync_ms": worst * 1000, "sync_calls": calls}


# -- 3. completions ----------------------------------------------------------------------------------------------


class GcClock:
    """Time spent in Python's cyclic GC (``gc.callbacks``): a gen-2 pass over a scheduler-sized heap
    (Airflow imported: ~250k objects) takes ~100 ms and lands in whichever call allocates."""

    def __init__(self) -> None:
        self.total = self.longest = 0.0
        self.full = 0  # generation-2 passes
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        took = time.perf_counter() - self._start
        self.total += took
        self.longest = max(self.longest, took)
        self.full += info.get("generation") == 2


def completions(settings: Settings, children: Children, launcher_kubeconfig: str, watcher_kubeconfig: str,
                tasks: int, n_launchers: int, concurrency: int, timeout: float) -> dict[str, Any]:
    """Dispatch ``tasks`` through the real executor; time until sync() has reported every final state."""
    import redis

    from tests.helpers import DbStandIn, airflow_env, workload

    keys = Keys(settings.key_prefix)
    r = redis.Redis.from_url(settings.redis_url)
    watcher = children.cli("watcher", ["watcher", "--log-level", "WARNING"],
                           component_env(settings, kube_config=watcher_kubeconfig, consumer_name="bench-watcher"))
    procs = [watcher, *start_launchers(children, settings, launcher_kubeconfig, n_launchers, concurrency, "done")]
    # the watcher has relisted and checkpointed its resourceVersion: it is watching
    wait(lambda: r.get(keys.resource_version(settings.namespace)), timeout=90, what="watcher watching",
         children=children, procs=procs, interval=0.2)

    os.environ.update(airflow_env(settings))
    ex = DbStandIn()
    ex.start()
    stream = keys.launch("default")
    gc_clock = GcClock()
    try:
        work = [workload("done", f"t{i:04d}") for i in range(tasks)]
        for w in work:
            ex.queue_workload(w, session=None)
        sched_cpu, idle_cpu, idle_calls = 0.0, 0.0, 0
        sync_calls: list[tuple[float, float, float]] = []  # (wall, cpu, gc) of each sync() + get_event_buffer()
        gc.callbacks.append(gc_clock)
        finals: dict[Any, str] = {}
        final_at: list[float] = []
        running_events = 0
        all_created = None
        t0 = time.perf_counter()
        c0, g0 = time.thread_time(), gc_clock.total
        ex.trigger_tasks(tasks)
        trigger_ms = (time.perf_counter() - t0) * 1000
        trigger_cpu = time.thread_time() - c0
        trigger_gc = gc_clock.total - g0
        sched_cpu += trigger_cpu
        while len(finals) < tasks:
            now = time.perf_counter()
            if now - t0 > timeout:
                raise TimeoutError(f"only {len(finals)} of {tasks} final states after {timeout:.0f}s "
                                   f"(launch stream length {r.xlen(stream)})")
            c0, g0 = time.thread_time(), gc_clock.total
            n = ex.sync()
            buffer = ex.get_event_buffer()
            cpu = time.thread_time() - c0
            sched_cpu += cpu
            if not n:
                idle_cpu, idle_calls = idle_cpu + cpu, idle_calls + 1
            sync_calls.append((time.perf_counter() - now, cpu, gc_clock.total - g0))
            at = time.perf_counter() - t0
            for key, (state, _info) in buffer.items():
                value = str(getattr(state, "value", state))
                if value == "running":
                    running_events += 1
                elif value != "queued" and key not in finals:
                    finals[key] = value
                    final_at.append(at)
            if all_created is None and r.xlen(stream) == 0:
                all_created = time.perf_counter() - t0
            if not n:
                children.check(procs)
                time.sleep(POLL)
        total = time.perf_counter() - t0
    finally:
        if gc_clock in gc.callbacks:
            gc.callbacks.remove(gc_clock)
        ex.terminate()
        r.close()
        children.stop(procs)
    walls_ms = sorted(w * 1000 for w, _, _ in sync_calls)
    slowest = max(sync_calls)
    return {
        "tasks": tasks,
        "seconds_dispatch_to_all_final_in_sync": round(total, 2),
        "seconds_dispatch_to_all_pods_created": round(all_created, 2) if all_created is not None else None,
        "seconds_dispatch_to_first_final": round(final_at[0], 2),
        "seconds_dispatch_to_median_final": round(statistics.median(final_at), 2),
        "final_states": dict(Counter(finals.values())),
        "running_events": running_events,
        "trigger_tasks_ms": round(trigger_ms, 1),
        "trigger_tasks_cpu_ms": round(trigger_cpu * 1000, 1),
        "trigger_tasks_gc_ms": round(trigger_gc * 1000, 1),
        "slowest_sync_ms": round(walls_ms[-1], 1),
        "slowest_sync_cpu_ms": round(slowest[1] * 1000, 1),  # the rest: Redis round trips, waiting for a core
        "slowest_sync_gc_ms": round(slowest[2] * 1000, 1),
        "p99_sync_ms": round(walls_ms[min(len(walls_ms) - 1, int(len(walls_ms) * 0.99))], 1),
        "sync_calls": len(walls_ms),
        "sync_calls_idle": idle_calls,
        "scheduler_cpu_us_per_task": round(sched_cpu / tasks * 1e6, 1),
        "scheduler_cpu_us_per_task_without_idle_polls": round((sched_cpu - idle_cpu) / tasks * 1e6, 1),
        "gc_full_collections": gc_clock.full,
        "gc_longest_pause_ms": round(gc_clock.longest * 1000, 1),
    }


# -- main ----------------------------------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--helper":
        return run_helper(sys.argv[2:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every API request (both sides)")
    parser.add_argument("--pods", type=int, default=300, help="creates per throughput round and side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw / launcher rounds")
    parser.add_argument("--launchers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=300, help="tasks of the completions measurement")
    parser.add_argument("--no-direct", action="store_true", help="skip the throughput rounds without the proxy")
    parser.add_argument("--max-seconds", type=int, default=420, help="abort (and clean up) after this long")
    args = parser.parse_args()

    def abort(signum: int, _frame: Any) -> None:
        raise BenchAborted(f"aborted by {signal.Signals(signum).name}"
                           + (f" after --max-seconds {args.max_seconds}" if signum == signal.SIGALRM else ""))

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, abort)
    signal.alarm(args.max_seconds)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="kubestream-bench-"))
    os.environ["AIRFLOW_HOME"] = str(work / "airflow")  # before anything imports airflow
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    children = Children(work)
    cluster, redis_server = LocalCluster(work / "cluster"), RedisServer(data_dir=work / "redis")
    apis: list[k8s.ApiClient] = []
    ok = False
    try:
        redis_server.start()
        state = cluster.up((NS_RAW, NS_KS, NS_DONE))
        proxy_port = free_port()
        start_helper(children, work, "proxy", ["--target-port", str(state.apiserver_port), "--listen-port",
                                               str(proxy_port), "--ca-file", state.ca_file,
                                               "--latency-ms", str(args.latency_ms)])
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        inflight = args.launchers * args.concurrency

        direct = api_client(state.kubeconfig("admin"))  # setup and cleanup only, never measured
        raw_api = api_client(proxied_kubeconfig(work, proxy_url, state, "admin"), pool_size=2 * inflight)
        apis += [direct, raw_api]
        direct_core, raw_core = k8s.CoreV1Api(direct), k8s.CoreV1Api(raw_api)

        # -- 1. throughput: alternating rounds through the proxy, then the same directly (no proxy)
        settings = Settings.from_mapping({"redis_url": redis_server.url, "key_prefix": f"b{uuid.uuid4().hex[:6]}",
                                          "scheduler_id": "bench", "namespace": NS_KS, "queues": "bench"})
        procs = start_launchers(children, settings, proxied_kubeconfig(work, proxy_url, state, "launcher"),
                                args.launchers, args.concurrency, "proxied")
        proxied = throughput(raw_core, direct_core, settings, children, procs, args.pods, args.rounds, inflight, "p")
        children.stop(procs)
        raw_api.close()
        direct_tp: dict[str, Any] = {}
        if not args.no_direct:
            raw_direct = api_client(state.kubeconfig("admin"), pool_size=2 * inflight)
            apis.append(raw_direct)
            procs = start_launchers(children, settings, state.kubeconfig("launcher"), args.launchers,
                                    args.concurrency, "direct")
            direct_tp = throughput(k8s.CoreV1Api(raw_direct), direct_core, settings, children, procs, args.pods,
                                   args.rounds, inflight, "d")
            children.stop(procs)
            raw_direct.close()

        # -- 2. executor side (no Kubernetes)
        sched = executor_side(settings, 2000, "unserved")

        # -- 3. completions: executor -> launchers -> proxy -> apiserver -> kubelet -> watcher -> sync()
        start_helper(children, work, "kubelet", ["--kubeconfig", state.kubeconfig("kubelet"),
                                                 "--namespace", NS_DONE])
        done_settings = Settings.from_mapping({
            "redis_url": redis_server.url, "key_prefix": f"c{uuid.uuid4().hex[:6]}", "scheduler_id": "bench-done",
            "namespace": NS_DONE, "queues": "default"})
        comp = completions(done_settings, children, proxied_kubeconfig(work, proxy_url, state, "launcher"),
                           proxied_kubeconfig(work, proxy_url, state, "watcher"), args.tasks, args.launchers,
                           args.concurrency, timeout=120 + args.tasks * 0.2)

        results = {
            "latency_ms": args.latency_ms,
            "via": "one HttpFaultProxy (own process) for raw client, launchers and watcher; kubelet direct",
            "pods_per_round": args.pods, "rounds": args.rounds, "in_flight_creates": inflight,
            **proxied,
            "direct_no_proxy": direct_tp or None,
            **{k: round(v, 2) for k, v in sched.items()},
            "completions": comp,
            "bench_seconds": None,
        }
        results["bench_seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(results, indent=2))
        out = ROOT / "bench-results"
        out.mkdir(exist_ok=True)
        (out / "pipeline.json").write_text(json.dumps(results, indent=2))
        ok = True
        return 0
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
        if not ok:
            for name, _ in children.procs:
                print(f"== {name} (last lines)\n{children.tail(name, 1500)}", file=sys.stderr)
        for api in apis:
            api.close()
        children.stop()
        cluster.down()
        redis_server.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
