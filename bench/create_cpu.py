"""Benchmark: CPU microseconds per pod create, the launcher's path stage by stage against a raw client.

Against a real redis-server and the real local kube-apiserver, in ONE thread of this process, so that
``time.thread_time_ns()`` counts this process's work only (never the apiserver's, Redis's, or another
program's on a shared machine: CPU time stays meaningful on a loaded box, wall time does not):

- *raw*: the official client's ``create_namespaced_pod`` with a pod dict built beforehand, its answer read
  fully and not deserialized (``kubeapi.raw``): the raw-client ceiling of ``bench/pipeline.py`` and
  ``bench/versus*.py``, less its ``build_pod`` (reported as a stage of the launcher);
- *launcher, whole*: the real code of a launcher process, batch by batch as its loop does it (XREADGROUP of up
  to ``--batch`` entries, ``Launcher.prepare``, ``Launcher.handle`` of each entry, the acknowledgement);
- *launcher, stages*: the same work split into its pieces, each timed on its own (the read, signature
  verify, msgpack decode, the dispatch checks' Redis round trips, token expiry, ``build_pod``, the policy,
  ``PodApi.create`` over HTTP, the acknowledgement); the round trips of a batch are divided among its entries.
  Their sum is a little under *whole* (metrics, logging calls, the retry wrapper are left out).

Each round makes ``--creates`` creates per side after a warm-up (connections, caches), the three sides taking
turns batch by batch (the order rotating), so that they see the same load on a shared machine; medians of
the per-round means are reported. Prints the figures and writes
``bench/results/create_cpu.json``.

    .venv/bin/python -m bench.create_cpu            # defaults: --creates 300 --rounds 3 --batch 32
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from kubernetes import client as k8s

from bench.runner import arm_watchdog, run_workdir
from devkit.cluster import ClusterState, LocalCluster
from devkit.components import REPO_ROOT
from devkit.redisserver import RedisServer
from devkit.workloads import DEV_SIGNING_KEYS, jwt_with
from kubestream.keys import Keys
from kubestream.kubeapi import api_client, raw
from kubestream.messages import LaunchTask, decode, encode
from kubestream.settings import Settings
from kubestream.signing import signer_for
from kubestream.store import TaskStore
from kubestream.taskkey import DISPATCH_ANNOTATION, TaskKey
from kubestream.workers.consumer import Entry
from kubestream.workers.launcher import Launcher
from kubestream.workers.podpolicy import apply_policy, enforce
from kubestream.workers.podspec import build_pod
from kubestream.workload import token_expiry

RESULTS_FILE = REPO_ROOT / "bench" / "results" / "create_cpu.json"
SIDES = ("raw", "launcher", "stages")
STAGES = ("read", "verify", "decode", "verdicts", "token_expiry", "build_pod", "policy", "create", "ack")
QUEUE = "cpu"


def workload_json(key: TaskKey) -> str:
    """A workload of the size Airflow sends (a JWT, the task instance, the bundle), as the launcher reads it."""
    token = jwt_with({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 3600, "iat": int(time.time()),
                      "aud": "urn:airflow.apache.org:task", "scope": "ExecuteTask"})
    ti = {"id": str(uuid.uuid4()), "dag_id": key.dag_id, "task_id": key.task_id, "run_id": key.run_id,
          "try_number": key.try_number, "map_index": key.map_index, "dag_version_id": str(uuid.uuid4()),
          "pool_slots": 1, "queue": "default", "priority_weight": 1, "parent_context_carrier": {},
          "context_carrier": {}, "external_executor_id": str(uuid.uuid4())}
    return json.dumps({"token": token, "ti": ti, "dag_rel_path": f"{key.dag_id}.py",
                       "bundle_info": {"name": "dags-folder", "version": None},
                       "log_path": f"dag_id={key.dag_id}/run_id={key.run_id}/task_id={key.task_id}/attempt=1.log",
                       "type": "ExecuteTask"})


@dataclass(frozen=True)
class CreateCpu:
    creates: int  # per round and side
    rounds: int
    batch: int
    raw_us: float  # median over rounds of CPU us per create
    launcher_us: float  # the launcher's real code, whole
    stages_us: dict[str, float]  # medians per stage (us per create)
    stages_sum_us: float
    ratio_raw_to_launcher: float  # raw CPU / launcher CPU: the launcher's throughput share when CPU-bound
    rounds_us: dict[str, list[float]]


class Bench:
    """A launcher (real class, never started: its code is called here, in this thread) and a raw client."""

    def __init__(self, cluster: ClusterState, redis_url: str, namespace: str, *, batch: int) -> None:
        self.namespace = namespace
        self.batch = batch
        self.settings = Settings.from_mapping({
            "redis_url": redis_url, "key_prefix": f"c{uuid.uuid4().hex[:8]}", "namespace": namespace,
            "queues": QUEUE, "scheduler_id": "bench", "signing_keys": DEV_SIGNING_KEYS,
            "launch_concurrency": str(max(1, batch // 2)), "retry_budget_seconds": "30"})
        self.keys = Keys(self.settings.key_prefix)
        self.stream = self.keys.launch(QUEUE)
        self.redis = redis.Redis.from_url(redis_url)
        self.store = TaskStore(self.redis, self.keys, self.settings, signer_for(self.settings))
        self.launcher_api = api_client(cluster.kubeconfig("launcher"), pool_size=4)
        self.launcher = Launcher(self.settings, self.redis, self.launcher_api, name="cpu-bench")
        self.launcher.consumer.ensure_groups()
        self.launcher._own_pending_left = False
        self.raw_api = api_client(cluster.kubeconfig("admin"), pool_size=4)
        self.core = k8s.CoreV1Api(self.raw_api)

    def close(self) -> None:
        self.launcher._pool.shutdown(wait=True)
        self.launcher_api.close()
        self.raw_api.close()
        self.redis.close()

    # -- feeding (not measured) --------------------------------------------------------------------------------
    def feed(self, run: str, n: int) -> None:
        """``n`` launches written as the executor writes them (task records, signed entries)."""
        pipe = self.redis.pipeline(transaction=True)
        for i in range(n):
            key = TaskKey("cpu", f"t{i}", run, 1)
            dispatch = str(uuid.uuid4())
            msg = LaunchTask(key=key, queue=QUEUE, scheduler_id="bench", workload_json=workload_json(key),
                             external_executor_id=dispatch)
            self.store.dispatch(pipe, key, owner="bench", queue=QUEUE, namespace=self.namespace, dispatch=dispatch,
                                stream=self.stream, message=encode(msg))
        pipe.execute()

    def read(self, count: int) -> list[Entry]:
        entries = self.launcher.consumer.read_new(count, 100)
        if not entries:
            raise RuntimeError("the launch stream ran dry before every side had its creates")
        return entries

    # -- the sides, one batch at a time (each returns the CPU ns it spent and how many creates) ---------------
    def raw_pods(self, run: str, n: int) -> list[dict[str, Any]]:
        """The raw client's pods, built beforehand (not measured): the same body a launcher sends."""
        keys = [TaskKey("raw", f"t{i}", run, 1) for i in range(n)]
        return [build_pod(key=key, namespace=self.namespace, image="img", workload_json=workload_json(key),
                          scheduler_id="bench", template=None, pod_override=None, key_prefix=self.settings.key_prefix)
                for key in keys]

    def raw_batch(self, pods: list[dict[str, Any]]) -> int:
        t0 = time.thread_time_ns()
        for pod in pods:
            raw(self.core.create_namespaced_pod, self.namespace, pod)
        return time.thread_time_ns() - t0

    def launcher_batch(self, count: int) -> tuple[int, int]:
        """One batch through the launcher's own code, as its loop runs it: read, prepare, handle, acknowledge."""
        launcher = self.launcher
        t0 = time.thread_time_ns()
        entries = self.read(count)
        for work in launcher.prepare(entries):
            launcher.handle(work)
        settled = launcher.settled()
        launcher._settled.clear()
        launcher.consumer.ack(settled)
        spent = time.thread_time_ns() - t0
        if len(settled) != len(entries):
            raise RuntimeError(f"{len(entries) - len(settled)} launches not settled: see the log")
        return spent, len(entries)

    def stages_batch(self, count: int, ns: dict[str, int]) -> int:
        """One batch of the launcher's work split into stages, each timed on its own (ns added to ``ns``)."""
        clock = time.thread_time_ns
        launcher, settings = self.launcher, self.settings
        t = clock()
        entries = self.read(count)
        ns["read"] += clock() - t
        msgs: list[tuple[LaunchTask, str]] = []
        for entry in entries:
            t = clock()
            launcher.signer.verify(entry.stream, entry.fields)
            t1 = clock()
            msg = decode(entry.raw)
            assert isinstance(msg, LaunchTask)
            msgs.append((msg, msg.key.pod_name()))
            ns["verify"] += t1 - t
            ns["decode"] += clock() - t1
        t = clock()
        launcher.store.launch_verdicts([(name, m.external_executor_id) for m, name in msgs])
        ns["verdicts"] += clock() - t
        for msg, name in msgs:
            t = clock()
            token_expiry(msg.workload_json)
            t1 = clock()
            pod = build_pod(key=msg.key, namespace=self.namespace, image=settings.worker_image,
                            workload_json=msg.workload_json, scheduler_id=msg.scheduler_id,
                            template=launcher.template, pod_override=msg.pod_override,
                            key_prefix=settings.key_prefix, pod_mutation=msg.pod_mutation, pod_name=name)
            t2 = clock()
            if launcher.policy.overlay:  # as the launcher does: no copy of its own pod without an overlay
                pod = apply_policy(pod, launcher.policy, namespace=self.namespace)
            else:
                enforce(pod, launcher.policy, namespace=self.namespace)
            pod["metadata"]["annotations"][DISPATCH_ANNOTATION] = msg.external_executor_id
            t3 = clock()
            launcher.pods.create_unread(self.namespace, pod, timeout=(5.0, 30.0))
            t4 = clock()
            ns["token_expiry"] += t1 - t
            ns["build_pod"] += t2 - t1
            ns["policy"] += t3 - t2
            ns["create"] += t4 - t3
        t = clock()
        launcher.consumer.ack(entries)
        ns["ack"] += clock() - t
        return len(entries)

    def round(self, run: str, n: int, first: int = 0) -> tuple[float, float, dict[str, float]]:
        """``n`` creates per side, the sides taking turns batch by batch (the order rotating from ``first``),
        so that all three see the same load on a shared machine. CPU us per create: raw, launcher, stages."""
        self.feed(run, 2 * n)  # the launcher's and the stages' entries, read from the one stream in turn
        pods = self.raw_pods(run, n)
        raw_ns = launcher_ns = 0
        stage_ns = dict.fromkeys(STAGES, 0)
        done = {"raw": 0, "launcher": 0, "stages": 0}
        turn = first
        while min(done.values()) < n:
            for side in SIDES[turn % 3:] + SIDES[:turn % 3]:
                if done[side] >= n:
                    continue
                if side == "raw":
                    batch = pods[done["raw"]:done["raw"] + self.batch]
                    raw_ns += self.raw_batch(batch)
                    done["raw"] += len(batch)
                elif side == "launcher":
                    spent, count = self.launcher_batch(min(self.batch, n - done["launcher"]))
                    launcher_ns += spent
                    done["launcher"] += count
                else:
                    done["stages"] += self.stages_batch(min(self.batch, n - done["stages"]), stage_ns)
            turn += 1
        return (raw_ns / 1000 / done["raw"], launcher_ns / 1000 / done["launcher"],
                {stage: value / 1000 / done["stages"] for stage, value in stage_ns.items()})

    def clear(self, admin: k8s.CoreV1Api) -> None:
        """Delete the namespace's pods (unbound: they go at once); not measured."""
        admin.delete_collection_namespaced_pod(self.namespace, grace_period_seconds=0, _preload_content=False)
        deadline = time.monotonic() + 60
        while admin.list_namespaced_pod(self.namespace, limit=1).items:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pods of {self.namespace} not deleted")
            time.sleep(0.05)


def measure(cluster: ClusterState, redis_url: str, namespace: str, *, creates: int, rounds: int,
            batch: int) -> CreateCpu:
    """``rounds`` rounds after a warm-up; medians of each round's CPU us per create."""
    bench = Bench(cluster, redis_url, namespace, batch=batch)
    admin_api = api_client(cluster.kubeconfig("admin"))
    admin = k8s.CoreV1Api(admin_api)
    got: dict[str, list[Any]] = {"raw": [], "launcher": [], "stages": []}
    try:
        bench.round("warm", max(2, min(creates, batch)))  # connections, caches: not measured
        bench.clear(admin)
        for i in range(rounds):
            raw_us, launcher_us, stages = bench.round(f"r{i}", creates, first=i)
            got["raw"].append(raw_us)
            got["launcher"].append(launcher_us)
            got["stages"].append(stages)
            bench.clear(admin)
    finally:
        admin_api.close()
        bench.close()
    stages_us = {s: round(statistics.median(r[s] for r in got["stages"]), 1) for s in STAGES}
    raw_us, launcher_us = statistics.median(got["raw"]), statistics.median(got["launcher"])
    return CreateCpu(
        creates=creates, rounds=rounds, batch=batch, raw_us=round(raw_us, 1), launcher_us=round(launcher_us, 1),
        stages_us=stages_us, stages_sum_us=round(sum(stages_us.values()), 1),
        ratio_raw_to_launcher=round(raw_us / launcher_us, 3),
        rounds_us={"raw": [round(v, 1) for v in got["raw"]], "launcher": [round(v, 1) for v in got["launcher"]]},
    )


def report(result: CreateCpu) -> str:
    lines = [f"CPU us per create (this thread; median of {result.rounds} rounds x {result.creates} creates, "
             f"batches of {result.batch})",
             f"  raw client (create_namespaced_pod, pod prebuilt): {result.raw_us:8.1f}",
             f"  launcher, its real code (read..ack):              {result.launcher_us:8.1f}",
             f"  ratio raw / launcher:                             {result.ratio_raw_to_launcher:8.3f}",
             "  launcher stages:"]
    lines += [f"    {stage:<14}{value:8.1f}" for stage, value in result.stages_us.items()]
    lines.append(f"    {'(sum)':<14}{result.stages_sum_us:8.1f}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.create_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=300, help="creates per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="entries per read (a launcher: 2 x concurrency)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    parser.add_argument("--max-seconds", type=int, default=600, help="abort (and clean up) after this long")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # as the benchmarks run launchers: --log-level WARNING
    arm_watchdog(args.max_seconds)
    with run_workdir("create-cpu") as work:
        local, redis_server = LocalCluster(work / "cluster"), RedisServer(data_dir=work / "redis")
        try:
            redis_server.start()
            cluster = local.up()
            local.ensure_namespaces(cluster, ("bench-cpu",))
            result = measure(cluster, redis_server.url, "bench-cpu", creates=args.creates, rounds=args.rounds,
                             batch=args.batch)
        finally:
            local.down()
            redis_server.stop()
    print(report(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": f"{_cpus()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()}", **asdict(result)}, indent=2) + "\n")
    print(f"written {args.output}", file=sys.stderr)
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
