"""Benchmark: kubestream beside the KubernetesExecutor, on the same cluster, in the same run.

    .venv/bin/python -m bench.versus [--tasks 300] [--latencies 0,50,200] [--launchers 1,2,4]
                                     [--concurrency 16] [--equal-rounds 5] [--equal-pods 1000]
                                     [--kubelet-workers 32] [--cap-seconds 120] [--max-seconds 1500]
                                     [--out bench/results] [--no-docs]

One real kube-apiserver + etcd, one redis-server and one PostgreSQL (Airflow metadata DB, ``airflow db
migrate``) for the whole run. At each latency, one TCP latency proxy (``devkit.tcplatency``: each
client->server chunk delayed by the latency, connections kept as the client keeps them, TLS passed
through) carries EVERY Kubernetes API connection of the measured side: the raw client, kubestream's
launchers and watcher, the KubernetesExecutor's client, its async client and its watcher process.
One simulated kubelet (own process, direct to the apiserver) runs every executor's pods (succeed:
50 ms ContainerCreating + 100 ms Running), and a pod observer (own process, direct) records when each
pod appeared and succeeded.

At each latency, in this order: the raw ceiling (the official client, as many threads as kubestream's
widest configuration has creates in flight), launchers against the raw client at equal concurrency
(``--equal-rounds`` alternating rounds of ``--equal-pods`` creates per side for each launcher count,
no kubelet; directly too at 0 ms), kubestream with each launcher count, the
KubernetesExecutor with its defaults, then with its best throughput settings. Each executor gets N
task instances QUEUED in a DagRun of its own (real metadata DB: a Job row, ``ExecuteTask.make``,
``queue_workload``), driven by the same loop (``heartbeat()`` + ``get_event_buffer()``). A phase stops
when all N are terminal or at ``--cap-seconds`` (the KubernetesExecutor's defaults at 200 ms create ~1
pod/s: its figures are then over what it created, and the table says so).

Writes ``<out>/versus-<UTC time>.json``, the PNG plots in docs/img/ and (unless ``--no-docs``) the
results table into docs/benchmarks.md between its ``versus`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.runner import arm_watchdog, run_workdir, shield_signals
from devkit.components import REPO_ROOT
from devkit.postgres import PostgresServer

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
IMAGES = REPO_ROOT / "docs" / "img"
VIA = ("one TCP latency proxy per latency (devkit.tcplatency: each client->server chunk delayed, connections "
       "kept, TLS passed through) for the raw client, launchers, watcher and every KubernetesExecutor connection; "
       "simulated kubelet and pod observer direct")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300, help="task instances per configuration")
    parser.add_argument("--latencies", default="0,50,200", help="added one-way latencies, ms, comma-separated")
    parser.add_argument("--launchers", default="1,2,4", help="kubestream launcher counts, comma-separated")
    parser.add_argument("--concurrency", type=int, default=16, help="creates in flight per launcher (its default)")
    parser.add_argument("--equal-rounds", type=int, default=5,
                        help="rounds per side, launchers vs raw client at equal concurrency (0: none)")
    parser.add_argument("--equal-pods", type=int, default=1000,
                        help="creates per round of those rounds (long enough that a round's start and end "
                             "do not weigh at 1000 pods/s)")
    parser.add_argument("--kubelet-workers", type=int, default=32, help="API workers of the simulated kubelet")
    parser.add_argument("--cap-seconds", type=float, default=120.0, help="time limit of one configuration")
    parser.add_argument("--max-seconds", type=int, default=1500, help="abort (and clean up) after this long")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="directory of the JSON results")
    parser.add_argument("--images", default=str(IMAGES), help="directory of the PNG plots")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md as it is")
    return parser.parse_args(argv)


def _numbers(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Everything, with the servers of ``work``; returns the results document."""
    from bench.versus_airflow import AirflowDb, airflow_env

    started = time.monotonic()
    pg = PostgresServer()  # its own directory (as root it runs as the postgres user, outside our 0700 work dir)
    ke_kubeconfig = str(work / "kubeconfig-kubernetes-executor")
    env = airflow_env(work / "airflow", pg.url, tasks=args.tasks, namespace="versus", kubeconfig=ke_kubeconfig)
    os.environ.update(env)  # before anything imports Airflow
    from bench.pipeline import local_servers  # imports Airflow (through the executor)
    from bench.versus_phases import (
        CREATES_NAMESPACE,
        NAMESPACE,
        RAW_NAMESPACE,
        equal_concurrency,
        kubernetes_executor_has_async_creation,
        kubernetes_executor_phase,
        kubestream_phase,
        raw_ceiling,
        start_latency_rig,
        stop_rig,
    )

    launcher_counts = [int(n) for n in _numbers(args.launchers)]
    results: list[dict[str, Any]] = []
    ceilings: list[dict[str, Any]] = []
    equal: list[dict[str, Any]] = []
    pg.start()
    try:
        db = AirflowDb(work / "airflow", args.tasks)
        _log("airflow db migrate + the benchmark DAG")
        db.prepare({**os.environ})
        with local_servers(work) as (local, cluster, redis_url):
            local.ensure_namespaces(cluster, (NAMESPACE, RAW_NAMESPACE, CREATES_NAMESPACE))
            setup_seconds = time.monotonic() - started
            for latency in _numbers(args.latencies):
                rig = start_latency_rig(cluster, redis_url, work / f"latency-{int(latency)}", latency_ms=latency,
                                        ke_kubeconfig=ke_kubeconfig, db_url=pg.url,
                                        kubelet_workers=args.kubelet_workers)
                try:
                    ceiling = raw_ceiling(rig, pods=args.tasks, threads=max(launcher_counts) * args.concurrency)
                    ceilings.append(asdict(ceiling))
                    _log(f"{latency:.0f} ms: raw client {ceiling.pods_per_s} pods/s ({ceiling.threads} threads)")
                    # through the proxy at every latency, and directly too at 0 ms
                    for direct in ((False, True) if latency == 0 else (False,)) if args.equal_rounds else ():
                        for n in launcher_counts:
                            eq = equal_concurrency(rig, pods=args.equal_pods, rounds=args.equal_rounds, launchers=n,
                                                   concurrency=args.concurrency, direct=direct)
                            equal.append(asdict(eq))
                            _log(f"{latency:.0f} ms, {eq.via}: {n} launchers x {args.concurrency} "
                                 f"{eq.launchers_pods_per_s} pods/s, raw client {eq.raw_pods_per_s} ({eq.ratio})")
                    configs: list[int | str] = [*launcher_counts, "default", "best"]
                    for config in configs:
                        if isinstance(config, int):
                            figures = kubestream_phase(rig, db, tasks=args.tasks, launchers=config,
                                                       concurrency=args.concurrency, cap_seconds=args.cap_seconds)
                        else:
                            figures = kubernetes_executor_phase(rig, db, tasks=args.tasks, best=config == "best",
                                                                cap_seconds=args.cap_seconds)
                        results.append(asdict(figures))
                        _log(f"{latency:.0f} ms: {figures.config}: {figures.pods_per_s} pods/s, "
                             f"{figures.tasks_terminal}/{figures.tasks} terminal in {figures.seconds_measured} s, "
                             f"longest heartbeat {figures.heartbeat_ms_max} ms, "
                             f"scheduler CPU {figures.scheduler_cpu_ms_per_task} ms/task, "
                             f"kubelet p99 {figures.kubelet_ms_p99} ms")
                finally:
                    stop_rig(rig)
    finally:
        pg.stop()
    from importlib.metadata import version

    return {
        "benchmark": "versus", "generated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m bench.versus " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {p: version(p) for p in ("apache-airflow-core", "apache-airflow-providers-cncf-kubernetes",
                                             "kubernetes", "redis")},
        "kubernetes_executor_async_pod_creation": kubernetes_executor_has_async_creation(),
        "tasks": args.tasks, "latencies_ms": _numbers(args.latencies), "launchers": launcher_counts,
        "launch_concurrency": args.concurrency, "cap_seconds": args.cap_seconds, "via": VIA,
        "kubelet": "one simulated kubelet process (rules mode, succeed: 50 ms ContainerCreating + 100 ms Running, "
                   f"{args.kubelet_workers} API workers) for every configuration",
        "raw_ceiling": ceilings, "equal_concurrency": equal, "equal_rounds": args.equal_rounds,
        "equal_pods": args.equal_pods, "results": results,
        "setup_seconds": round(setup_seconds, 1), "bench_seconds": round(time.monotonic() - started, 1),
    }


def _default_signals() -> None:
    """In a forked child (the KubernetesExecutor's Managers and watcher): the signals' own behaviour."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.alarm(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    arm_watchdog(args.max_seconds)
    os.register_at_fork(after_in_child=_default_signals)
    with run_workdir("kubestream-versus-") as work:
        doc = run(args, work)
        shield_signals()
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"versus-{doc['generated'].replace(':', '').replace('-', '')}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        from bench.plots import plot_versus
        from bench.versus_report import markdown, update_docs

        images = plot_versus(doc, Path(args.images))
        table = markdown(doc, results_file=path, images=images)
        print(table)
        if not args.no_docs:
            update_docs(DOCS, table)
        _log(f"results in {path}; plots {', '.join(str(i) for i in images)}; {doc['bench_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
