"""Benchmark: pod-creation throughput (kubestream launchers vs a raw client), completions end to end,
and scheduler-side cost.

Runs against a real redis-server and the real local kube-apiserver. Every Kubernetes API call of
the raw client, the launchers and the watcher goes through ONE ``HttpFaultProxy`` (plain HTTP on
loopback -> HTTPS apiserver) that adds ``--latency-ms`` to each request, so both sides of the
throughput comparison see the same conditions. The proxy and the simulated kubelet run in child
processes of their own (``devkit.isolated``), so that they share neither a GIL nor ``process_time``
with the raw client or the executor measured here. Prints figures and writes them to
bench-results/pipeline.json. Compare ratios, not absolute times: this is a noisy 2-core machine.

    .venv/bin/python -m bench.pipeline [--latency-ms 0] [--pods 300] [--rounds 3] [--launchers 4]
                                       [--concurrency 8] [--tasks 300] [--no-direct] [--max-seconds 420]

Phases (each returns a dataclass of figures; they share one ``Rig``: the cluster, Redis, the proxy
and the child processes, all from ``devkit``, as the tests use them):

1. ``throughput_phase``: ``--rounds`` rounds of ``--pods`` creates per side, the order rotating each
   round (no kubelet in those namespaces: pods stay Pending, a create is all that is measured; every
   round's pods are counted, then deleted), medians reported:
   - ``raw_client_phase``: the official client with launchers x concurrency threads, reading each
     (small) response so that its connection is reused (as the launchers do);
   - ``launchers_phase``: ``--launchers`` ``kubestream launcher`` processes, ``--concurrency``
     creates in flight each, fed through Redis.
   Then the same rounds again without the proxy (``direct_no_proxy``; skip with ``--no-direct``):
   behind the proxy every request gets a new upstream TLS connection whatever the client does, so
   only the direct rounds show what connection reuse is worth against the real apiserver;
2. ``executor_batch_phase``: one ``_process_workloads`` batch of 2000 workloads and ``sync()``
   applying 2000 results (no Kubernetes involved; the Airflow DB lookup is a constant);
3. ``completions_phase``: ``--tasks`` tasks dispatched through the real executor, created by the
   launchers, run by a SimKubelet (rules mode, default "succeed", direct to the apiserver), reported
   by a ``kubestream watcher`` (through the proxy) and applied by the executor's ``sync()``, polled
   every 50 ms while idle as a scheduler loop would. Reported: time to all final states, the slowest
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
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from kubernetes import client as k8s

from bench.runner import arm_watchdog, run_workdir, shield_signals
from devkit.cluster import ClusterState, LocalCluster
from devkit.components import REPO_ROOT, Components
from devkit.isolated import IsolatedProxy, proxied_kubeconfig, start_kubelet, start_proxy
from devkit.pipeline import Pipeline
from devkit.probe import Streams
from devkit.redisserver import RedisServer
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.keys import Keys
from kubestream.kubeapi import api_client, raw
from kubestream.messages import LaunchTask, TaskState, TaskStateChanged, encode
from kubestream.settings import Settings
from kubestream.signing import signer_for
from kubestream.store import TaskStore
from kubestream.taskkey import TaskKey
from kubestream.workers.podspec import build_pod

RESULTS_FILE = REPO_ROOT / "bench-results" / "pipeline.json"
VIA = "one HttpFaultProxy (own process) for raw client, launchers and watcher; kubelet direct"
POLL = 0.05  # sync() polling interval while no result is waiting
EXECUTOR_BATCH = 2000


# -- the rig: what every phase shares ------------------------------------------------------------------


@dataclass(frozen=True)
class Namespaces:
    raw: str = "bench-raw"  # raw client creates (no kubelet: pods stay Pending)
    launched: str = "bench-ks"  # launcher creates (no kubelet)
    done: str = "bench-done"  # completions (a simulated kubelet runs the pods)


@dataclass(frozen=True)
class Rig:
    """The local cluster, Redis, ONE latency proxy (own process) for every measured API call, the
    child processes, and a direct admin client for setup and cleanup (never measured)."""

    cluster: ClusterState
    redis_url: str
    proxy: IsolatedProxy | None  # None: the caller passes its own kubeconfigs
    children: Components
    admin: k8s.CoreV1Api
    work: Path
    namespaces: Namespaces
    setenv: Callable[[str, str], object]  # for the executor's AIRFLOW__KUBESTREAM__* variables

    def kubeconfig(self, identity: str, *, proxied: bool) -> str:
        if proxied:
            assert self.proxy is not None, "this rig has no proxy"
            return proxied_kubeconfig(self.work, self.proxy.url, self.cluster.tokens[identity], identity)
        return self.cluster.kubeconfig(identity)

    def settings(self, *, namespace: str, queue: str, scheduler_id: str) -> Settings:
        """Settings with a key prefix of their own (a phase never sees another's streams)."""
        return Settings.from_mapping({"redis_url": self.redis_url, "key_prefix": f"b{uuid.uuid4().hex[:8]}",
                                      "scheduler_id": scheduler_id, "namespace": namespace, "queues": queue,
                                      "signing_keys": DEV_SIGNING_KEYS})

    def settle(self, namespace: str, expected: int) -> None:
        """Check that a round created ``expected`` pods in ``namespace``, then delete them (unbound pods
        go at once) so that the next round starts from an empty namespace."""
        created = len(self.admin.list_namespaced_pod(namespace).items)
        if created != expected:
            raise RuntimeError(f"{created} pods in {namespace}, {expected} expected")
        self.admin.delete_collection_namespaced_pod(namespace, grace_period_seconds=0, _preload_content=False)
        deadline = time.monotonic() + 60
        while self.admin.list_namespaced_pod(namespace, limit=1).items:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pods of {namespace} not deleted")
            time.sleep(0.1)


@contextmanager
def bench_rig(local: LocalCluster, cluster: ClusterState, redis_url: str, work: Path, *, latency_ms: float,
              namespaces: Namespaces = Namespaces(),
              setenv: Callable[[str, str], object] = os.environ.__setitem__) -> Iterator[Rig]:
    """A rig on a running cluster and Redis: namespaces created, the proxy started; all stopped after."""
    local.ensure_namespaces(cluster, (namespaces.raw, namespaces.launched, namespaces.done))
    children = Components(work, log_level="WARNING")
    admin = api_client(cluster.kubeconfig("admin"))
    try:
        proxy = start_proxy(children, cluster, latency_ms=latency_ms)
        yield Rig(cluster, redis_url, proxy, children, k8s.CoreV1Api(admin), work, namespaces, setenv)
    except BaseException:
        print(children.logs(), file=sys.stderr)
        raise
    finally:
        admin.close()
        children.stop_all()


@contextmanager
def local_servers(work: Path) -> Iterator[tuple[LocalCluster, ClusterState, str]]:
    """A fresh local cluster and redis-server under ``work``; stopped after."""
    local, redis_server = LocalCluster(work / "cluster"), RedisServer(data_dir=work / "redis")
    try:
        redis_server.start()
        yield local, local.up(), redis_server.url
    finally:
        local.down()
        redis_server.stop()


# -- 1. throughput -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    pods: int
    seconds: float

    @property
    def pods_per_s(self) -> float:
        return self.pods / self.seconds


@dataclass(frozen=True)
class Throughput:
    raw_client_pods_per_s: float
    kubestream_pods_per_s: float
    ratio_kubestream_to_raw: float
    rounds_pods_per_s: dict[str, list[float]]
    pods_created: dict[str, int]  # per side, over the measured rounds (each round's count is checked)


def raw_client_phase(core: k8s.CoreV1Api, namespace: str, pods: int, threads: int, run: str) -> Round:
    """``pods`` creates, ``threads`` in flight, each response read so that its connection is reused."""

    def create(i: int) -> None:
        pod = build_pod(key=TaskKey("raw", f"t{i}", run, 1), namespace=namespace, image="img",
                        workload_json="{}", scheduler_id="bench", template=None, pod_override=None)
        raw(core.create_namespaced_pod, namespace, pod)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(pods)))
    return Round(pods, time.perf_counter() - t0)


def launchers_phase(pipeline: Pipeline, redis_client: redis.Redis, pods: int, run: str) -> Round:
    """``pods`` launches written in one MULTI/EXEC; the time from the moment they are in the stream (the EXEC's
    answer: before it, no launcher can see one) until the launchers created them all. Writing them is the
    executor's work, measured by the dispatch benchmarks, not the launchers'."""
    settings = pipeline.settings
    keys, queue = Keys(settings.key_prefix), settings.queues[0]
    store = TaskStore(redis_client, keys, settings, signer_for(settings))
    stream = keys.launch(queue)
    pipe = redis_client.pipeline(transaction=True)
    for i in range(pods):  # as the executor dispatches
        key = TaskKey("ks", f"t{i}", run, 1)
        store.dispatch(pipe, key, owner="bench", queue=queue, namespace=settings.namespace, dispatch="", stream=stream,
                       message=encode(LaunchTask(key=key, queue=queue, scheduler_id="bench", workload_json="{}")))
    pipe.execute()
    t0 = time.perf_counter()
    # a launcher deletes an entry once it is settled: an empty stream = all handled (settle() counts the pods)
    pipeline.components.wait(lambda: redis_client.xlen(stream) == 0, timeout=120 + pods, interval=0.01,
                             what="all pods created", procs=pipeline.launchers)
    return Round(pods, time.perf_counter() - t0)


def throughput_phase(rig: Rig, *, proxied: bool, pods: int, rounds: int, launchers: int,
                     concurrency: int) -> Throughput:
    """Alternating rounds of the raw client and the launchers, through the proxy or directly against the
    apiserver; medians."""
    return alternating_rounds(rig, lambda who: rig.kubeconfig(who, proxied=proxied), tag="p" if proxied else "d",
                              pods=pods, rounds=rounds, launchers=launchers, concurrency=concurrency)


def alternating_rounds(rig: Rig, kubeconfig: Callable[[str], str], *, tag: str, pods: int, rounds: int,
                       launchers: int, concurrency: int) -> Throughput:
    """``rounds`` rounds (the order rotating each round) of ``pods`` creates by the raw client with
    ``launchers * concurrency`` threads and by ``launchers`` launcher processes x ``concurrency``, both
    reaching the apiserver with ``kubeconfig(identity)``; each side gets a warm-up round first (its
    connections opened, its caches filled: not measured); medians."""
    inflight = launchers * concurrency
    ns = rig.namespaces
    settings = rig.settings(namespace=ns.launched, queue="bench", scheduler_id="bench")
    raw_api = api_client(kubeconfig("admin"), pool_size=2 * inflight)
    redis_client = redis.Redis.from_url(rig.redis_url)
    pipe = Pipeline(settings, rig.cluster, rig.children, setenv=rig.setenv,
                    launcher_kubeconfig=kubeconfig("launcher"))
    try:
        for i in range(launchers):
            pipe.launcher(launch_concurrency=str(concurrency), consumer_name=f"{tag}-launcher-{i}")
        pipe.wait_serving(Streams(redis_client, settings))
        raw_core = k8s.CoreV1Api(raw_api)
        sides: dict[str, tuple[str, Callable[[str], Round]]] = {
            "raw": (ns.raw, lambda run: raw_client_phase(raw_core, ns.raw, pods, inflight, run)),
            "kubestream": (ns.launched, lambda run: launchers_phase(pipe, redis_client, pods, run)),
        }
        raw_client_phase(raw_core, ns.raw, inflight, inflight, f"{tag}-warmup")
        rig.settle(ns.raw, inflight)
        launchers_phase(pipe, redis_client, 2 * inflight, f"{tag}-warmup")  # each launcher reads 2 x concurrency
        rig.settle(ns.launched, 2 * inflight)
        got: dict[str, list[Round]] = {name: [] for name in sides}
        names = list(sides)
        for i in range(rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                namespace, side = sides[name]
                got[name].append(side(f"{tag}{i}"))
                rig.settle(namespace, pods)
            print(f"{tag} round {i}: " + ", ".join(f"{n} {r[-1].pods_per_s:.1f}" for n, r in got.items()) + " pods/s",
                  file=sys.stderr, flush=True)
    finally:
        pipe.stop()
        raw_api.close()
        redis_client.close()
    med = {name: statistics.median(r.pods_per_s for r in rs) for name, rs in got.items()}
    return Throughput(
        raw_client_pods_per_s=round(med["raw"], 1),
        kubestream_pods_per_s=round(med["kubestream"], 1),
        ratio_kubestream_to_raw=round(med["kubestream"] / med["raw"], 3),
        rounds_pods_per_s={name: [round(r.pods_per_s, 1) for r in rs] for name, rs in got.items()},
        pods_created={name: sum(r.pods for r in rs) for name, rs in got.items()},
    )


# -- 2. executor side -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutorBatch:
    batch_tasks: int  # dispatched in one batch, and as many final states applied by sync()
    dispatch_ms_per_batch: float
    cpu_us_per_task_dispatch: float
    cpu_us_per_task_sync: float
    worst_sync_ms: float
    sync_calls: int


def executor_batch_phase(rig: Rig, tasks: int = EXECUTOR_BATCH, queue: str = "unserved") -> ExecutorBatch:
    """Dispatch ``tasks`` workloads in one batch and apply as many results through the real executor
    (nothing serves ``queue``; the results are published directly); CPU per task."""
    from devkit.scheduler import start_executor
    from devkit.workloads import workload

    settings = rig.settings(namespace=rig.namespaces.launched, queue=queue, scheduler_id="bench")
    ex = start_executor(settings, rig.setenv)
    try:
        work = [workload("bench", f"t{i}", queue=queue) for i in range(tasks)]
        for w in work:
            ex.queue_workload(w, session=None)
        c0, t0 = time.process_time(), time.perf_counter()
        ex.trigger_tasks(tasks)
        dispatch_cpu, dispatch_wall = time.process_time() - c0, time.perf_counter() - t0
        store = TaskStore(ex.redis, ex.keys, ex.settings, ex.signer)
        for w in work:
            k = w.ti.key
            store.publish(TaskStateChanged(TaskKey(k.dag_id, k.task_id, k.run_id, k.try_number, k.map_index),
                                           TaskState.SUCCEEDED))
        buffers: list[dict[Any, Any]] = []
        c0, calls, worst = time.process_time(), 0, 0.0
        while ex.running:
            s = time.perf_counter()
            ex.sync()
            buffers.append(ex.get_event_buffer())
            worst = max(worst, time.perf_counter() - s)
            calls += 1
        sync_cpu = time.process_time() - c0
    finally:
        ex.terminate()
    applied = sum(1 for buffer in buffers for state, _ in buffer.values()
                  if str(getattr(state, "value", state)) == "success")
    if applied != tasks:
        raise RuntimeError(f"sync() applied {applied} successes for {tasks} tasks")
    return ExecutorBatch(batch_tasks=tasks, dispatch_ms_per_batch=round(dispatch_wall * 1000, 2),
                         cpu_us_per_task_dispatch=round(dispatch_cpu / tasks * 1e6, 2),
                         cpu_us_per_task_sync=round(sync_cpu / tasks * 1e6, 2),
                         worst_sync_ms=round(worst * 1000, 2), sync_calls=calls)


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


@dataclass(frozen=True)
class Completions:
    tasks: int
    seconds_dispatch_to_all_final_in_sync: float
    seconds_dispatch_to_all_pods_created: float | None
    seconds_dispatch_to_first_final: float
    seconds_dispatch_to_median_final: float
    final_states: dict[str, int]
    running_events: int
    trigger_tasks_ms: float
    trigger_tasks_cpu_ms: float
    trigger_tasks_gc_ms: float
    slowest_sync_ms: float
    slowest_sync_cpu_ms: float  # the rest: Redis round trips, waiting for a core
    slowest_sync_gc_ms: float
    p99_sync_ms: float
    sync_calls: int
    sync_calls_idle: int
    scheduler_cpu_us_per_task: float
    scheduler_cpu_us_per_task_without_idle_polls: float
    gc_full_collections: int
    gc_longest_pause_ms: float


def completions_phase(rig: Rig, *, tasks: int, launchers: int, concurrency: int, timeout: float) -> Completions:
    """Dispatch ``tasks`` through the real executor; time until sync() has reported every final state:
    executor -> launchers -> proxy -> apiserver -> kubelet (own process, direct) -> watcher (proxy) -> sync()."""
    from devkit.workloads import workload

    ns = rig.namespaces.done
    settings = rig.settings(namespace=ns, queue="default", scheduler_id="bench-done")
    kubelet = start_kubelet(rig.children, rig.cluster.kubeconfig("kubelet"), ns, node_name=f"node-{ns}")
    redis_client = redis.Redis.from_url(rig.redis_url)
    pipe = Pipeline(settings, rig.cluster, rig.children, setenv=rig.setenv,
                    launcher_kubeconfig=rig.kubeconfig("launcher", proxied=True),
                    watcher_kubeconfig=rig.kubeconfig("watcher", proxied=True))
    stream = Keys(settings.key_prefix).launch("default")
    gc_clock = GcClock()
    try:
        pipe.watcher(consumer_name="bench-watcher")
        for i in range(launchers):
            pipe.launcher(launch_concurrency=str(concurrency), consumer_name=f"done-launcher-{i}")
        pipe.wait_serving(Streams(redis_client, settings))  # launchers reading, the watcher watching
        procs = [*pipe.launchers, *pipe.watchers, kubelet]
        ex = pipe.executor
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
                                   f"(launch stream length {redis_client.xlen(stream)})")
            c0, g0 = time.thread_time(), gc_clock.total
            n = ex.apply_results()
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
            if all_created is None and redis_client.xlen(stream) == 0:
                all_created = time.perf_counter() - t0
            if not n:
                rig.children.check(procs)
                time.sleep(POLL)
        total = time.perf_counter() - t0
    finally:
        if gc_clock in gc.callbacks:
            gc.callbacks.remove(gc_clock)
        pipe.stop()
        rig.children.stop([kubelet])
        redis_client.close()
    walls_ms = sorted(w * 1000 for w, _, _ in sync_calls)
    slowest = max(sync_calls)
    return Completions(
        tasks=tasks,
        seconds_dispatch_to_all_final_in_sync=round(total, 2),
        seconds_dispatch_to_all_pods_created=round(all_created, 2) if all_created is not None else None,
        seconds_dispatch_to_first_final=round(final_at[0], 2),
        seconds_dispatch_to_median_final=round(statistics.median(final_at), 2),
        final_states=dict(Counter(finals.values())),
        running_events=running_events,
        trigger_tasks_ms=round(trigger_ms, 1),
        trigger_tasks_cpu_ms=round(trigger_cpu * 1000, 1),
        trigger_tasks_gc_ms=round(trigger_gc * 1000, 1),
        slowest_sync_ms=round(walls_ms[-1], 1),
        slowest_sync_cpu_ms=round(slowest[1] * 1000, 1),
        slowest_sync_gc_ms=round(slowest[2] * 1000, 1),
        p99_sync_ms=round(walls_ms[min(len(walls_ms) - 1, int(len(walls_ms) * 0.99))], 1),
        sync_calls=len(walls_ms),
        sync_calls_idle=idle_calls,
        scheduler_cpu_us_per_task=round(sched_cpu / tasks * 1e6, 1),
        scheduler_cpu_us_per_task_without_idle_polls=round((sched_cpu - idle_cpu) / tasks * 1e6, 1),
        gc_full_collections=gc_clock.full,
        gc_longest_pause_ms=round(gc_clock.longest * 1000, 1),
    )


# -- main ----------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every API request (both sides)")
    parser.add_argument("--pods", type=int, default=300, help="creates per throughput round and side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw / launcher rounds")
    parser.add_argument("--launchers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=300, help="tasks of the completions measurement")
    parser.add_argument("--no-direct", action="store_true", help="skip the throughput rounds without the proxy")
    parser.add_argument("--max-seconds", type=int, default=420, help="abort (and clean up) after this long")
    return parser.parse_args(argv)


def results_json(args: argparse.Namespace, proxied: Throughput, direct: Throughput | None, batch: ExecutorBatch,
                 completions: Completions, seconds: float) -> dict[str, Any]:
    return {
        "latency_ms": args.latency_ms, "via": VIA,
        "pods_per_round": args.pods, "rounds": args.rounds, "in_flight_creates": args.launchers * args.concurrency,
        **asdict(proxied),
        "direct_no_proxy": asdict(direct) if direct else None,
        **asdict(batch),
        "completions": asdict(completions),
        "bench_seconds": round(seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    arm_watchdog(args.max_seconds)
    started = time.monotonic()
    with run_workdir("kubestream-bench-") as work:
        os.environ["AIRFLOW_HOME"] = str(work / "airflow")  # before anything imports airflow
        os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        with ExitStack() as stack:
            local, cluster, redis_url = stack.enter_context(local_servers(work))
            rig = stack.enter_context(bench_rig(local, cluster, redis_url, work, latency_ms=args.latency_ms))
            stack.callback(shield_signals)  # runs first on the way out
            sizes = {"pods": args.pods, "rounds": args.rounds, "launchers": args.launchers,
                     "concurrency": args.concurrency}
            proxied = throughput_phase(rig, proxied=True, **sizes)
            direct = None if args.no_direct else throughput_phase(rig, proxied=False, **sizes)
            batch = executor_batch_phase(rig)
            completions = completions_phase(rig, tasks=args.tasks, launchers=args.launchers,
                                            concurrency=args.concurrency, timeout=120 + args.tasks * 0.2)
        results = results_json(args, proxied, direct, batch, completions, time.monotonic() - started)
        print(json.dumps(results, indent=2))
        RESULTS_FILE.parent.mkdir(exist_ok=True)
        RESULTS_FILE.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
