"""The measured phases of the side-by-side benchmark (imports Airflow: only with ``airflow_env`` set).

For one latency (one ``LatencyRig``: the TCP latency proxy, the simulated kubelet and the pod
observer, all in processes of their own):

- ``raw_ceiling``: the official client creating N pods with as many threads as kubestream's widest
  configuration has creates in flight (no kubelet in that namespace: a create is all that is measured);
- ``kubestream_phase``: the real ``KubeStreamExecutor`` (real metadata DB) with 1, 2 or 4
  ``kubestream launcher`` processes and one ``kubestream watcher``;
- ``kubernetes_executor_phase``: the provider's ``KubernetesExecutor`` with its defaults or its best
  throughput settings.

Both executors get the same N queued task instances of a DagRun of their own, the same loop
(``versus_loop.drive``), the same simulated kubelet, the same latency on every Kubernetes API
connection they open (the kubelet and the observer go direct), and each phase returns a ``Figures``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from kubernetes import client as k8s

from bench.pipeline import Namespaces, Rig, alternating_rounds, raw_client_phase
from bench.versus_airflow import AirflowDb
from bench.versus_kubelet import start_sized_kubelet
from bench.versus_loop import LoopRecord, drive
from bench.versus_observer import PodSeen, read_observations
from bench.versus_procs import ProcSample, children_of, peak_rss_mb, percentile, pss_mb, reset_peak_rss
from devkit.cluster import ClusterState
from devkit.components import Components
from devkit.pipeline import Pipeline
from devkit.probe import Streams
from devkit.scheduler import executor_env
from devkit.tcplatency import LatencyProxyProcess, start_tcp_latency
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.kubeapi import api_client
from kubestream.settings import AIRFLOW_ENV_PREFIX, Settings

NAMESPACE = "versus"  # the executors' pods; the simulated kubelet runs them
RAW_NAMESPACE = "versus-raw"  # the raw ceiling's pods (no kubelet: they stay Pending)
CREATES_NAMESPACE = "versus-creates"  # the launchers' pods of the equal-concurrency rounds (no kubelet either)
KE_ENV = "AIRFLOW__KUBERNETES_EXECUTOR__"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


@dataclass
class Figures:
    config: str
    executor: str  # "kubestream" or "KubernetesExecutor"
    settings: dict[str, Any]
    latency_ms: float
    tasks: int
    tasks_terminal: int
    final_states: dict[str, int]
    capped: bool  # stopped at the phase's time limit before every task was terminal
    seconds_measured: float
    pods_created: int
    pods_per_s: float  # over what it created: pods / (last create - first heartbeat), or / the time limit
    seconds_to_all_terminal: float | None
    report_lag_ms_p50: float | None  # pod Succeeded (observer) -> final event out of get_event_buffer()
    report_lag_ms_p99: float | None
    kubelet_ms_p50: float | None  # pod first seen -> Succeeded (the simulated kubelet's own time: 150 ms ideal)
    kubelet_ms_p99: float | None
    kubelet_cpu_busy: float  # the simulated kubelet's CPU seconds per second of the phase (1.0 = one core)
    heartbeat_ms_max: float
    heartbeat_ms_p99: float
    heartbeats: int
    first_heartbeat_ms: float
    gc_ms: float
    scheduler_cpu_ms_per_task: float  # the scheduler thread inside heartbeat() + get_event_buffer()
    scheduler_process_cpu_ms_per_task: float  # every thread of the scheduler's process
    helper_cpu_ms_per_task: dict[str, float]
    total_cpu_ms_per_task: float  # scheduler process + helpers
    peak_rss_mb: dict[str, float | None]  # VmHWM: a forked helper's includes the pages it shares with its parent
    pss_mb: dict[str, float | None]  # at the end of the phase, shared pages counted in proportion
    redis_used_memory_mb: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LatencyRig:
    latency_ms: float
    cluster: ClusterState
    redis_url: str
    children: Components
    proxy: LatencyProxyProcess
    kubelet_pid: int
    observer_file: Path
    work: Path
    ke_kubeconfig: str  # the path [kubernetes_executor] config_file names; rewritten for each latency
    admin: k8s.CoreV1Api

    def kubeconfig(self, identity: str) -> str:
        """A kubeconfig for ``identity`` reaching the apiserver (TLS, as is) through the latency proxy."""
        path = self.work / f"kubeconfig-latency-{identity}"
        _write_kubeconfig(path, self.proxy.port, self.cluster, identity)
        return str(path)

    def clean(self, namespace: str = NAMESPACE, timeout: float = 300) -> None:
        """Delete every pod of ``namespace`` at once and wait until none is left. On a slow machine the
        apiserver can give up on deleting 10,000 pods in one request (504 after its request timeout, the
        deletion cut short): the request is sent again for what is left."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin.delete_collection_namespaced_pod(namespace, grace_period_seconds=0,
                                                            _preload_content=False)
            except k8s.ApiException as exc:
                if exc.status != 504 or time.monotonic() > deadline:
                    raise
            settle = time.monotonic() + 10
            while self.admin.list_namespaced_pod(namespace, limit=1).items:
                if time.monotonic() > min(settle, deadline):
                    break
                time.sleep(0.2)
            else:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"pods of {namespace} not deleted")


def _write_kubeconfig(path: Path, port: int, cluster: ClusterState, identity: str) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "latency",
        "clusters": [{"name": "latency", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                     "certificate-authority": cluster.ca_file}}],
        "users": [{"name": identity, "user": {"token": cluster.tokens[identity]}}],
        "contexts": [{"name": "latency", "context": {"cluster": "latency", "user": identity, "namespace": NAMESPACE}}],
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)


def start_latency_rig(cluster: ClusterState, redis_url: str, work: Path, *, latency_ms: float,
                      ke_kubeconfig: str, db_url: str, kubelet_workers: int = 32) -> LatencyRig:
    """The latency proxy, the simulated kubelet (direct) for NAMESPACE and the observer; stop with ``stop_rig``."""
    work.mkdir(parents=True, exist_ok=True)
    children = Components(work, log_level="WARNING")
    try:
        proxy = start_tcp_latency(children, cluster.apiserver_port, latency_ms=latency_ms)
        kubelet = start_sized_kubelet(children, cluster.kubeconfig("kubelet"), NAMESPACE, node_name="versus-node",
                                      workers=kubelet_workers)
        observed = work / "observed.jsonl"
        ready = work / "observer.ready"
        observer = children.start_module("observer", "bench.versus_observer", [
            "--kubeconfig", cluster.kubeconfig("admin"), "--namespace", NAMESPACE, "--out", str(observed),
            "--ready-file", str(ready), "--db-url", db_url])
        children.wait(ready.exists, timeout=60, what="pod observer ready", procs=[observer])
        _write_kubeconfig(Path(ke_kubeconfig), proxy.port, cluster, "admin")
        admin = k8s.CoreV1Api(api_client(cluster.kubeconfig("admin")))
    except BaseException:
        children.stop_all()
        raise
    return LatencyRig(latency_ms, cluster, redis_url, children, proxy, kubelet.pid, observed, work, ke_kubeconfig,
                      admin)


def stop_rig(rig: LatencyRig) -> None:
    rig.admin.api_client.close()
    rig.children.stop_all()


# -- the raw ceiling ----------------------------------------------------------------------------------------


@dataclass
class RawCeiling:
    latency_ms: float
    pods: int
    threads: int
    pods_per_s: float


def raw_ceiling(rig: LatencyRig, *, pods: int, threads: int) -> RawCeiling:
    """The official client, ``threads`` in flight, through the same proxy: a warm-up round, then ``pods``."""
    api = api_client(rig.kubeconfig("admin"), pool_size=2 * threads)
    try:
        core = k8s.CoreV1Api(api)
        raw_client_phase(core, RAW_NAMESPACE, threads, threads, f"w{int(rig.latency_ms)}")
        rig.clean(RAW_NAMESPACE)
        measured = raw_client_phase(core, RAW_NAMESPACE, pods, threads, f"r{int(rig.latency_ms)}")
        created = len(rig.admin.list_namespaced_pod(RAW_NAMESPACE).items)
        if created != pods:
            raise RuntimeError(f"raw client: {created} pods created, {pods} expected")
        rig.clean(RAW_NAMESPACE)
    finally:
        api.close()
    return RawCeiling(rig.latency_ms, pods, threads, round(measured.pods_per_s, 1))


# -- launchers against the raw client, at equal concurrency ---------------------------------------------------


@dataclass
class EqualConcurrency:
    latency_ms: float
    via: str  # "proxy" (the latency proxy, as every other figure at this latency) or "direct" (no proxy)
    launchers: int
    in_flight: int  # launchers x launch_concurrency = the raw client's threads
    pods: int
    raw_pods_per_s: float
    launchers_pods_per_s: float
    ratio: float  # launchers / raw client, medians over the rounds
    rounds_pods_per_s: dict[str, list[float]]


def equal_concurrency(rig: LatencyRig, *, pods: int, rounds: int, launchers: int, concurrency: int,
                      direct: bool = False) -> EqualConcurrency:
    """``rounds`` alternating rounds of ``pods`` creates: the official client with ``launchers x
    concurrency`` threads against ``launchers`` launcher processes x ``concurrency``, fed through Redis
    (no kubelet in either namespace: a create is all that is measured), through the latency proxy or
    ``direct``ly against the apiserver."""
    creates = Rig(rig.cluster, rig.redis_url, None, rig.children, rig.admin, rig.work,
                  Namespaces(raw=RAW_NAMESPACE, launched=CREATES_NAMESPACE, done=NAMESPACE), os.environ.__setitem__)
    via = "direct" if direct else "proxy"
    measured = alternating_rounds(creates, rig.cluster.kubeconfig if direct else rig.kubeconfig,
                                  tag=f"{via[0]}{int(rig.latency_ms)}-k{launchers}", pods=pods, rounds=rounds,
                                  launchers=launchers, concurrency=concurrency)
    return EqualConcurrency(rig.latency_ms, via, launchers, launchers * concurrency, pods,
                            measured.raw_client_pods_per_s, measured.kubestream_pods_per_s,
                            measured.ratio_kubestream_to_raw, measured.rounds_pods_per_s)


# -- shared measurement ---------------------------------------------------------------------------------------


class _RedisMemory:
    """``used_memory`` sampled every half second (kubestream's phases)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        info = self.client.info("memory")
        self.baseline = int(info["used_memory"])
        self.peak = self.baseline
        self._next = 0.0

    def sample(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + 0.5
            self.peak = max(self.peak, int(self.client.info("memory")["used_memory"]))

    def figures(self) -> dict[str, float]:
        self.sample()
        self.client.close()
        return {"baseline": round(self.baseline / 2**20, 2), "peak": round(self.peak / 2**20, 2),
                "peak_over_baseline": round((self.peak - self.baseline) / 2**20, 2)}


def _observed(rig: LatencyRig, keys: set[Any], finals: dict[Any, tuple[str, float]], timeout: float = 15) -> \
        dict[Any, PodSeen]:
    """The observer's record of this run's pods (newest per key), once it has seen every final pod."""
    deadline = time.monotonic() + timeout
    while True:
        pods: dict[Any, PodSeen] = {}
        for seen in read_observations(rig.observer_file):
            if seen.key in keys:
                pods[seen.key] = seen
        if all(k in pods and pods[k].done_at is not None for k in finals) or time.monotonic() > deadline:
            return pods
        time.sleep(0.1)


def _figures(rig: LatencyRig, *, config: str, executor: str, settings: dict[str, Any], keys: set[Any],
             rec: LoopRecord, procs: list[ProcSample], scheduler: ProcSample, kubelet_cpu: ProcSample,
             redis_memory: dict[str, float] | None, notes: list[str]) -> Figures:
    peak_rss = {"scheduler": peak_rss_mb(os.getpid())} | {p.name: peak_rss_mb(p.pid) for p in procs}
    pss = {"scheduler": pss_mb(os.getpid())} | {p.name: pss_mb(p.pid) for p in procs}
    pods = _observed(rig, keys, rec.finals)
    created = sorted(p.seen_at for p in pods.values())
    terminal = len(rec.finals)
    if rec.capped or not created:
        rate = len(created) / max(1e-9, rec.ended - rec.started)
    else:
        rate = len(created) / max(1e-9, created[-1] - rec.started)
    lags = [at - pods[k].done_at for k, (_, at) in rec.finals.items()  # type: ignore[operator]
            if k in pods and pods[k].done_at is not None]
    kubelet = [p.done_at - p.seen_at for p in pods.values() if p.done_at is not None]
    walls = [w for w, _ in rec.calls]
    per_task = max(1, terminal)
    sched_cpu = sum(c for _, c in rec.calls)
    process_cpu = scheduler.cpu_since()
    helper_cpu = {p.name: p.cpu_since() for p in procs}
    return Figures(
        config=config, executor=executor, settings=settings, latency_ms=rig.latency_ms, tasks=len(keys),
        tasks_terminal=terminal, final_states=dict(Counter(s for s, _ in rec.finals.values())), capped=rec.capped,
        seconds_measured=round(rec.ended - rec.started, 2), pods_created=len(created), pods_per_s=round(rate, 2),
        seconds_to_all_terminal=None if rec.capped else round(max(at for _, at in rec.finals.values())
                                                               - rec.started, 2),
        report_lag_ms_p50=_ms(percentile(lags, 0.5)), report_lag_ms_p99=_ms(percentile(lags, 0.99)),
        kubelet_ms_p50=_ms(percentile(kubelet, 0.5)), kubelet_ms_p99=_ms(percentile(kubelet, 0.99)),
        kubelet_cpu_busy=round(kubelet_cpu.cpu_since() / max(1e-9, rec.ended - rec.started), 2),
        heartbeat_ms_max=_ms(max(walls)) or 0.0, heartbeat_ms_p99=_ms(percentile(walls, 0.99)) or 0.0,
        heartbeats=len(walls), first_heartbeat_ms=round(rec.first_call_ms, 1), gc_ms=round(rec.gc_ms, 1),
        scheduler_cpu_ms_per_task=round(sched_cpu / per_task * 1000, 3),
        scheduler_process_cpu_ms_per_task=round(process_cpu / per_task * 1000, 3),
        helper_cpu_ms_per_task={name: round(cpu / per_task * 1000, 3) for name, cpu in helper_cpu.items()},
        total_cpu_ms_per_task=round((process_cpu + sum(helper_cpu.values())) / per_task * 1000, 3),
        peak_rss_mb=peak_rss, pss_mb=pss, redis_used_memory_mb=redis_memory, notes=notes,
    )


def _scheduler_notes() -> list[str]:
    return [] if reset_peak_rss() else ["the scheduler's peak RSS could not be reset: it is the process's own"]


# -- kubestream ----------------------------------------------------------------------------------------------


def kubestream_phase(rig: LatencyRig, db: AirflowDb, *, tasks: int, launchers: int, concurrency: int,
                     cap_seconds: float, setenv: Callable[[str, str], object] = os.environ.__setitem__) -> Figures:
    from kubestream.executor import KubeStreamExecutor

    config = f"kubestream {launchers} launcher{'s' if launchers > 1 else ''}"
    tag = f"{int(rig.latency_ms)}-ks{launchers}-{uuid.uuid4().hex[:4]}"
    settings = Settings.from_mapping({"redis_url": rig.redis_url, "key_prefix": f"v{tag}", "scheduler_id": f"v{tag}",
                                      "namespace": NAMESPACE, "queues": "default", "signing_keys": DEV_SIGNING_KEYS,
                                      "launch_concurrency": str(concurrency)})
    redis_client = redis.Redis.from_url(rig.redis_url)
    pipe = Pipeline(settings, rig.cluster, rig.children, setenv=setenv,
                    launcher_kubeconfig=rig.kubeconfig("launcher"), watcher_kubeconfig=rig.kubeconfig("watcher"))
    executor = None
    try:
        pipe.watcher(consumer_name=f"watcher-{tag}")
        for i in range(launchers):
            pipe.launcher(consumer_name=f"launcher-{tag}-{i}")
        pipe.wait_serving(Streams(redis_client, settings))
        for name, value in executor_env(settings).items():
            setenv(name, value)
        executor = KubeStreamExecutor(parallelism=max(32, tasks))
        executor.job_id = db.job("kubestream.executor.KubeStreamExecutor")
        executor.start()
        run = db.queued_run(f"versus-{tag}", executor, tasks=tasks)
        for w in run.workloads:
            executor.queue_workload(w, session=None)
        procs = [ProcSample.of(f"launcher-{i}", p.pid) for i, p in enumerate(pipe.launchers)]
        procs.append(ProcSample.of("watcher", pipe.watchers[0].pid))
        redis_pid = int(redis_client.info("server")["process_id"])
        procs.append(ProcSample.of("redis-server", redis_pid))
        memory = _RedisMemory(rig.redis_url)
        notes = _scheduler_notes()
        scheduler = ProcSample.of("scheduler", os.getpid())
        kubelet_cpu = ProcSample.of("kubelet", rig.kubelet_pid)
        live = [*pipe.launchers, *pipe.watchers]

        def between() -> None:
            memory.sample()
            for proc in live:
                if proc.poll() is not None:
                    rig.children.check(live)

        rec = drive(executor, run.keys, cap_seconds=cap_seconds, between=between)
        return _figures(rig, config=config, executor="kubestream",
                        settings={"launchers": launchers, "launch_concurrency": concurrency,
                                  "in_flight": launchers * concurrency},
                        keys=run.keys, rec=rec, procs=procs, scheduler=scheduler, kubelet_cpu=kubelet_cpu,
                        redis_memory=memory.figures(),
                        notes=notes)
    finally:
        if executor is not None:
            executor.end()
        pipe.stop()
        redis_client.close()
        for name in [n for n in os.environ if n.startswith(AIRFLOW_ENV_PREFIX)]:
            del os.environ[name]
        rig.clean()


# -- the KubernetesExecutor -------------------------------------------------------------------------------------


def kubernetes_executor_has_async_creation() -> bool:
    from airflow.providers.cncf.kubernetes.kube_config import KubeConfig

    return hasattr(KubeConfig(), "async_pod_creation")


def kubernetes_executor_phase(rig: LatencyRig, db: AirflowDb, *, tasks: int, best: bool,
                              cap_seconds: float) -> Figures:
    """The provider's executor with its defaults (one pod per loop, created serially), or with its best
    throughput settings: ``worker_pods_creation_batch_size`` = N and ``async_pod_creation`` (when the
    installed provider has it; its concurrency then defaults to the batch size)."""
    from airflow.providers.cncf.kubernetes.executors import kubernetes_executor_utils
    from airflow.providers.cncf.kubernetes.executors.kubernetes_executor import KubernetesExecutor

    has_async = kubernetes_executor_has_async_creation()
    settings: dict[str, Any] = {"worker_pods_creation_batch_size": tasks if best else 1}
    if has_async:
        settings["async_pod_creation"] = best
    os.environ[f"{KE_ENV}WORKER_PODS_CREATION_BATCH_SIZE"] = str(settings["worker_pods_creation_batch_size"])
    os.environ[f"{KE_ENV}ASYNC_POD_CREATION"] = str(bool(settings.get("async_pod_creation")))
    config = "KubernetesExecutor " + ("best" if best else "default")
    kubernetes_executor_utils.ResourceVersion.resource_version.clear()  # a singleton: one per executor here
    before = children_of(os.getpid())
    executor = KubernetesExecutor()
    executor.job_id = db.job("KubernetesExecutor")
    notes: list[str] = [] if has_async else ["this provider has no async_pod_creation"]
    helpers: list[int] = []
    try:
        executor.start()
        run = db.queued_run(f"versus-{int(rig.latency_ms)}-ke{'best' if best else 'default'}-{uuid.uuid4().hex[:4]}",
                            executor, tasks=tasks)
        for w in run.workloads:
            executor.queue_workload(w, session=None)
        helpers = sorted(children_of(os.getpid()) - before)
        procs = [ProcSample.of(name, pid) for pid, name in _helper_names(executor, helpers).items()]
        notes += _scheduler_notes()
        scheduler = ProcSample.of("scheduler", os.getpid())
        kubelet_cpu = ProcSample.of("kubelet", rig.kubelet_pid)
        rec = drive(executor, run.keys, cap_seconds=cap_seconds)
        if rec.capped:
            notes.append(f"stopped at the {cap_seconds:.0f} s time limit: rates are over what it created by then")
        return _figures(rig, config=config, executor="KubernetesExecutor", settings=settings, keys=run.keys, rec=rec,
                        procs=procs, scheduler=scheduler, kubelet_cpu=kubelet_cpu,
                        redis_memory=None, notes=notes)
    finally:
        executor.end()
        _reap(helpers)
        rig.clean()


def _helper_names(executor: Any, pids: list[int]) -> dict[int, str]:
    """The KubernetesExecutor's helper processes by pid: its two multiprocessing Managers and its watcher."""
    known: dict[int, str] = {}
    with contextlib.suppress(AttributeError):
        known[executor._manager._process.pid] = "executor-manager"
    with contextlib.suppress(AttributeError):
        known[executor.kube_scheduler._manager._process.pid] = "scheduler-manager"
    with contextlib.suppress(AttributeError):
        for namespace, watcher in executor.kube_scheduler.kube_watchers.items():
            known[watcher.pid] = f"watcher-{namespace}"
    return {pid: known.get(pid, f"helper-{pid}") for pid in pids}


def _reap(pids: list[int]) -> None:
    """Stop the executor's helper processes that ``end()`` left behind (by pid: only those it started)."""
    from devkit.procs import pid_alive, stop_pid

    for pid in pids:
        if pid_alive(pid):
            stop_pid(pid, timeout=5)
