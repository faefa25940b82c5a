"""Priority-aware launch, measured: a backlog of mixed-weight tasks behind a capped create rate.

    .venv/bin/python -m bench.priority [--tasks 1000] [--create-rate 100] [--launchers 2] [--concurrency 8]
                                       [--bands 900,500,100] [--batch 50] [--batch-interval 0.1]
                                       [--max-seconds 900]

One run, the same servers (a real redis-server, the real local kube-apiserver + etcd), two phases on
the same tasks: ``fifo`` (no priority bands: one stream per queue) and ``bands`` (``priority_bands``).
Each phase starts the launchers (their creates share a cluster-wide rate limit of ``--create-rate`` per
second), then dispatches ``--tasks`` tasks through the real executor (weights 1..1000, shuffled) in
scheduler loops of ``--batch`` tasks every ``--batch-interval`` seconds, as a scheduler queues a growing
backlog: each loop is ordered by priority (Airflow's ``trigger_tasks`` does that, as the
KubernetesExecutor's batches are), the loops follow one another. The backlog drains at the create rate.
A ``devkit.podwatch.PodLedger`` (list + watch) notes when each pod appears. Figures per phase: the mean
and p50 launch delay (its loop's dispatch -> pod seen) of the top-weight tenth and of the bottom-weight
tenth, and their ratio (bottom / top: how much sooner the important tasks start). The bar: a ratio of at
least 5 with bands. No kubelet runs in the namespace: a create is all that is measured. JSON goes to
``bench/results/priority.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from bench.pipeline import Rig, bench_rig, local_servers
from bench.runner import arm_watchdog, run_workdir
from devkit.pipeline import Pipeline
from devkit.podwatch import SENTINEL, PodLedger
from devkit.probe import Streams
from devkit.procs import wait_for
from devkit.workloads import pod_name, workload
from kubestream.kubeapi import api_client

RESULTS_FILE = Path(__file__).parent / "results" / "priority.json"


@dataclass(frozen=True)
class Phase:
    name: str
    bands: str
    tasks: int
    seconds_to_all_created: float
    top_tenth_mean_delay_s: float
    top_tenth_p50_delay_s: float
    bottom_tenth_mean_delay_s: float
    bottom_tenth_p50_delay_s: float
    bottom_over_top: float


def weights(tasks: int, seed: int = 7) -> list[int]:
    """Weights spread over 1..1000, shuffled (the same for every phase)."""
    values = [1 + (i * 1000) // tasks for i in range(tasks)]
    random.Random(seed).shuffle(values)
    return values


def run_phase(rig: Rig, name: str, bands: str, task_weights: Sequence[int], *, create_rate: float,
              launchers: int, concurrency: int, batch: int, batch_interval: float) -> Phase:
    namespace = rig.namespaces.launched
    settings = dataclasses.replace(rig.settings(namespace=namespace, queue="default", scheduler_id=f"prio-{name}"),
                                   priority_bands=tuple(int(b) for b in bands.split(",") if b))
    pipeline = Pipeline(settings, rig.cluster, rig.children, setenv=rig.setenv)
    api = api_client(rig.cluster.kubeconfig("admin"))
    client = redis.Redis.from_url(rig.redis_url)
    ledger = PodLedger(api, namespace).start()
    try:
        run = f"{name}-{int(time.time())}"
        work = [workload("prio", f"t{i:04d}", run_id=run, priority_weight=w) for i, w in enumerate(task_weights)]
        by_pod = {pod_name(w): w.ti.priority_weight for w in work}
        for _ in range(launchers):
            pipeline.launcher(launch_concurrency=str(concurrency), create_rate=str(create_rate),
                              create_burst="1")
        pipeline.wait_serving(Streams(client, settings))
        dispatched: dict[str, float] = {}
        for start in range(0, len(work), batch):  # scheduler loops, each ordered by priority (Airflow does)
            chunk = work[start:start + batch]
            at = time.monotonic()
            pipeline.submit(chunk)
            dispatched.update((pod_name(w), at) for w in chunk)
            time.sleep(batch_interval)
        wait_for(lambda: {r.name for r in ledger.records()} >= set(by_pod), timeout=60 + len(work) / create_rate * 3,
                 interval=0.2, what="every pod created")
        seen = {r.name: r.seen_at - dispatched[r.name] for r in ledger.records() if r.name in by_pod}
    finally:
        ledger.stop()
        pipeline.stop()
        api.close()
        client.close()
    sentinel = rig.admin.list_namespaced_pod(namespace, field_selector=f"metadata.name={SENTINEL}").items
    rig.settle(namespace, len(work) + len(sentinel))  # the ledger's own pod, if it made one
    ranked = sorted(by_pod, key=lambda pod: by_pod[pod])
    tenth = max(1, len(ranked) // 10)
    top = [seen[p] for p in ranked[-tenth:]]
    bottom = [seen[p] for p in ranked[:tenth]]
    top_mean, bottom_mean = statistics.fmean(top), statistics.fmean(bottom)
    return Phase(name, bands, len(work), round(max(seen.values()), 2), round(top_mean, 2),
                 round(statistics.median(top), 2), round(bottom_mean, 2), round(statistics.median(bottom), 2),
                 round(bottom_mean / top_mean, 2))


def table(phases: Sequence[Phase]) -> str:
    rows = ["| phase | priority_bands | tasks | all created (s) | top tenth mean / p50 delay (s) | "
            "bottom tenth mean / p50 delay (s) | bottom / top |", "|---|---|---|---|---|---|---|"]
    for p in phases:
        rows.append(f"| {p.name} | {p.bands or '(none)'} | {p.tasks} | {p.seconds_to_all_created} | "
                    f"{p.top_tenth_mean_delay_s} / {p.top_tenth_p50_delay_s} | "
                    f"{p.bottom_tenth_mean_delay_s} / {p.bottom_tenth_p50_delay_s} | {p.bottom_over_top} |")
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.priority", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--create-rate", type=float, default=100.0, help="cluster-wide creates per second")
    parser.add_argument("--launchers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bands", default="900,500,100", help="priority_bands of the bands phase")
    parser.add_argument("--batch", type=int, default=50, help="tasks per scheduler loop (trigger_tasks call)")
    parser.add_argument("--batch-interval", type=float, default=0.1, help="seconds between scheduler loops")
    parser.add_argument("--max-seconds", type=int, default=900)
    parser.add_argument("--results", type=Path, default=RESULTS_FILE)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    arm_watchdog(args.max_seconds)
    task_weights = weights(args.tasks)
    sizes = {"create_rate": args.create_rate, "launchers": args.launchers, "concurrency": args.concurrency,
             "batch": args.batch, "batch_interval": args.batch_interval}
    with run_workdir("kubestream-priority-") as work:
        os.environ["AIRFLOW_HOME"] = str(work / "airflow")  # before anything imports airflow
        os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        with local_servers(work) as (local, cluster, redis_url), \
                bench_rig(local, cluster, redis_url, work, latency_ms=0) as rig:
            phases = [run_phase(rig, "fifo", "", task_weights, **sizes),
                      run_phase(rig, "bands", args.bands, task_weights, **sizes)]
        results = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": {
            k: str(v) for k, v in vars(args).items()}, "phases": [asdict(p) for p in phases]}
        print(table(phases))
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
