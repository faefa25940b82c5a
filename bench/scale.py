"""Benchmark: kubestream at scale (10,000 tasks queued at once), and its dispatch path alone.

    .venv/bin/python -m bench.scale [--tasks 10000] [--latency-ms 200] [--launchers 4] [--concurrency 16]
                                    [--kubelet-workers 32] [--noop-consumers 2] [--cap-seconds 360]
                                    [--max-seconds 540] [--out bench/results] [--no-docs]

One real kube-apiserver + etcd, one redis-server and one PostgreSQL (Airflow metadata DB) for the run,
put together as ``bench.versus`` does.

- Phase "dispatch" (the dispatch path alone): the real ``KubeStreamExecutor`` on N queued task instances
  -> Redis -> ``--noop-consumers`` no-op launchers (``bench.scale_noop``: each launch acknowledged and
  answered with a signed SUCCEEDED result through ``TaskStore.publish``; no Kubernetes) -> ``sync()``,
  driven by the scheduler's loop (``bench.versus_loop.drive``) until all N are final: tasks per second
  end to end. The task instances' own "success" is written to the DB before the clock starts (what each
  task's process would have done), so ``sync()`` pays its real DB read.
- Phase "scale": ``bench.versus_phases.kubestream_phase`` (the real executor, ``--launchers`` launcher
  processes, one watcher, the sized simulated kubelet, every Kubernetes API connection through a TCP
  latency proxy of ``--latency-ms``) with N tasks. Its first heartbeat dispatches all N; right after
  it, before any pod can have finished, ``sync()`` is timed (wall and CPU) with all N in ``running``,
  and so is the ``running`` walk alone (``results._newest_tries``), which every sync that applies
  results pays. Then the loop runs until all N are final.

Writes ``<out>/scale-<UTC time>.json``, prints a Markdown table and (unless ``--no-docs``) puts it into
docs/benchmarks.md between its ``scale`` markers (the section is appended when missing).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.runner import BenchAborted, arm_watchdog, run_workdir, shield_signals
from bench.versus import _default_signals, _log
from devkit.components import REPO_ROOT
from devkit.postgres import PostgresServer

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
SECTION = "## Scale: 10,000 tasks"

__all__ = ["BenchAborted", "main"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="task instances queued at once (each phase)")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="added one-way Kubernetes API latency")
    parser.add_argument("--launchers", type=int, default=4, help="launcher processes of the scale phase")
    parser.add_argument("--concurrency", type=int, default=16, help="creates in flight per launcher (its default)")
    parser.add_argument("--kubelet-workers", type=int, default=32, help="API workers of the simulated kubelet")
    parser.add_argument("--noop-consumers", type=int, default=2, help="no-op launchers of the dispatch phase")
    parser.add_argument("--cap-seconds", type=float, default=360.0, help="time limit of each phase's loop")
    parser.add_argument("--max-seconds", type=int, default=540, help="abort (and clean up) after this long")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="directory of the JSON results")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md as it is")
    return parser.parse_args(argv)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _timed(call: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, this thread's CPU seconds, result) of ``call()``."""
    w0, c0 = time.perf_counter(), time.thread_time()
    value = call()
    return time.perf_counter() - w0, time.thread_time() - c0, value


# -- phase "scale": the real pipeline at N --------------------------------------------------------------------


class SyncProbe:
    """Stands in for ``versus_loop.drive`` inside ``kubestream_phase``: one timed first heartbeat (it
    dispatches every queued task), ``sync()`` and the ``running`` walk timed with all N running, then
    the real loop. The loop record starts at the first heartbeat and includes it."""

    def __init__(self, drive: Callable[..., Any], syncs: int = 3, walks: int = 5) -> None:
        self._drive, self._syncs, self._walks = drive, syncs, walks
        self.figures: dict[str, Any] = {}
        self.started = 0.0

    def __call__(self, executor: Any, keys: set[Any], *, cap_seconds: float,
                 between: Callable[[], None] | None = None) -> Any:
        from kubestream.executor import results

        gc.collect()  # as drive() does: the setup's garbage is not the first heartbeat's
        started = self.started = time.monotonic()
        first_wall, first_cpu, _ = _timed(executor.heartbeat)
        running = len(executor.running)
        syncs = [_timed(executor.apply_results) for _ in range(self._syncs)]  # the body of sync()
        walks = [_timed(lambda: results._newest_tries(executor.running)) for _ in range(self._walks)]
        self.figures = {
            "dispatched_by_first_heartbeat": running,
            "first_heartbeat_ms": _ms(first_wall), "first_heartbeat_cpu_ms": _ms(first_cpu),
            "running_during_sync": len(executor.running),
            "sync_ms": [_ms(w) for w, _, _ in syncs], "sync_cpu_ms": [_ms(c) for _, c, _ in syncs],
            "sync_results_applied": [n for _, _, n in syncs],
            "running_walk_ms": [_ms(w) for w, _, _ in walks],
        }
        rec = self._drive(executor, keys, cap_seconds=max(1.0, cap_seconds - (time.monotonic() - started)),
                          between=between)
        rec.started = started
        rec.calls.insert(0, (first_wall, first_cpu))
        rec.first_call_ms = first_wall * 1000
        return rec


def scale_phase(rig: Any, db: Any, *, tasks: int, launchers: int, concurrency: int,
                cap_seconds: float) -> dict[str, Any]:
    from bench import versus_phases
    from bench.versus_observer import read_observations

    probe = SyncProbe(versus_phases.drive)
    versus_phases.drive = probe  # kubestream_phase calls drive() by this name; restored below
    try:
        figures = versus_phases.kubestream_phase(rig, db, tasks=tasks, launchers=launchers, concurrency=concurrency,
                                                 cap_seconds=cap_seconds)
    finally:
        versus_phases.drive = probe._drive
    seen = sorted(p.seen_at for p in read_observations(rig.observer_file))
    out = asdict(figures)
    # not final when the loop ended: lost when the loop ran to its end, unknown (slow or lost) when capped
    out["lost"] = None if figures.capped else figures.tasks - figures.tasks_terminal
    out["not_final_at_cap"] = figures.tasks - figures.tasks_terminal if figures.capped else 0
    out["pods_seen"] = len(seen)
    out["sync_with_all_running"] = probe.figures
    # time to all created: the first heartbeat -> the last pod the observer saw (one clock, CLOCK_MONOTONIC)
    out["seconds_to_all_created"] = round(seen[-1] - probe.started, 2) \
        if seen and len(seen) >= figures.tasks else None
    return out


# -- phase "dispatch": executor -> Redis -> no-op launchers -> sync() -----------------------------------------


def _mark_tasks_written(run_id: str, dag_id: str) -> None:
    """What each task's own process would have written: its state, success (one UPDATE)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
                        .values(state=TaskInstanceState.SUCCESS))


def _delete_prefix(url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        names = list(client.scan_iter(match="{" + prefix + "}:*", count=1000))
        for i in range(0, len(names), 1000):
            client.unlink(*names[i:i + 1000])
        return len(names)
    finally:
        client.close()


def dispatch_phase(db: Any, redis_url: str, work: Path, *, tasks: int, consumers: int,
                   cap_seconds: float) -> dict[str, Any]:
    import redis

    from bench.versus_airflow import DAG_ID
    from bench.versus_loop import drive
    from bench.versus_phases import NAMESPACE
    from bench.versus_procs import ProcSample, percentile
    from devkit.components import Components, component_env
    from devkit.scheduler import executor_env
    from devkit.workloads import DEV_SIGNING_KEYS
    from kubestream.executor import KubeStreamExecutor
    from kubestream.executor.executor import DISPATCH_CHUNK, RESULT_SLICE
    from kubestream.settings import AIRFLOW_ENV_PREFIX, Settings

    tag = f"d{uuid.uuid4().hex[:6]}"
    settings = Settings.from_mapping({"redis_url": redis_url, "key_prefix": tag, "scheduler_id": tag,
                                      "namespace": NAMESPACE, "queues": "default", "signing_keys": DEV_SIGNING_KEYS})
    work.mkdir(parents=True, exist_ok=True)
    children = Components(work)
    client = redis.Redis.from_url(redis_url)
    executor = None
    try:
        procs = []
        for i in range(consumers):
            ready = work / f"noop-{i}.ready"
            procs.append(children.start_module(f"noop-{i}", "bench.scale_noop",
                                               ["--name", f"noop-{i}", "--ready-file", str(ready)],
                                               component_env(settings)))
            children.wait(ready.exists, timeout=60, what=f"no-op launcher {i} ready")
        for name, value in executor_env(settings).items():
            os.environ[name] = value
        executor = KubeStreamExecutor(parallelism=max(32, tasks))
        executor.job_id = db.job("kubestream.executor.KubeStreamExecutor")
        run = db.queued_run(f"scale-dispatch-{tag}", executor, tasks=tasks)
        _mark_tasks_written(run.run_id, DAG_ID)
        # started after the DB setup, whose length depends on the machine: the reconciliation of running, due
        # reconcile_seconds after start(), is then never in the window (it is periodic, not a per-task cost)
        executor.start()
        for w in run.workloads:
            executor.queue_workload(w, session=None)
        samples = [ProcSample.of(f"noop-{i}", p.pid) for i, p in enumerate(procs)]
        samples.append(ProcSample.of("redis-server", int(client.info("server")["process_id"])))
        scheduler = ProcSample.of("scheduler", os.getpid())
        rec = drive(executor, run.keys, cap_seconds=cap_seconds, between=lambda: children.check(procs))
        walls = [w for w, _ in rec.calls]
        last = max((at for _, at in rec.finals.values()), default=rec.ended)
        seconds = last - rec.started
        terminal = len(rec.finals)
        per_task = max(1, terminal)
        return {
            "tasks": tasks, "noop_consumers": consumers, "tasks_terminal": terminal, "lost": tasks - terminal,
            "final_states": dict(Counter(s for s, _ in rec.finals.values())), "capped": rec.capped,
            "dispatch_chunk": DISPATCH_CHUNK, "result_slice": RESULT_SLICE, "sync_batch": settings.sync_batch,
            "seconds_end_to_end": round(seconds, 3),
            # the executor -> Redis leg alone: every launch written by the first heartbeat
            "dispatch_only_tasks_per_s": round(tasks / max(1e-9, rec.calls[0][0]), 1) if rec.calls else None,
            "tasks_per_s": round(terminal / max(1e-9, seconds), 1),
            "loop_iterations": len(walls), "idle_sleeps": rec.idle_sleeps,
            "heartbeat_ms_max": _ms(max(walls, default=0.0)), "heartbeat_ms_p99": _ms(percentile(walls, 0.99)),
            "first_heartbeat_ms": round(rec.first_call_ms, 1),
            "scheduler_cpu_ms_per_task": round(sum(c for _, c in rec.calls) / per_task * 1000, 4),
            "scheduler_process_cpu_ms_per_task": round(scheduler.cpu_since() / per_task * 1000, 4),
            "helper_cpu_ms_per_task": {s.name: round(s.cpu_since() / per_task * 1000, 4) for s in samples},
            "gc_ms": round(rec.gc_ms, 1),
        }
    finally:
        if executor is not None:
            executor.end()
        children.stop_all()
        client.close()
        for name in [n for n in os.environ if n.startswith(AIRFLOW_ENV_PREFIX)]:
            del os.environ[name]
        _delete_prefix(redis_url, tag)  # its records and streams would weigh on the scale phase's Redis figures


# -- the run ----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Both phases with the servers of ``work``; returns the results document."""
    from bench.versus_airflow import AirflowDb, airflow_env

    started = time.monotonic()
    pg = PostgresServer()
    env = airflow_env(work / "airflow", pg.url, tasks=args.tasks, namespace="versus",
                      kubeconfig=str(work / "kubeconfig-unused"))
    os.environ.update(env)  # before anything imports Airflow
    from bench.pipeline import local_servers  # imports Airflow (through the executor)
    from bench.versus_phases import NAMESPACE, start_latency_rig, stop_rig

    pg.start()
    try:
        db = AirflowDb(work / "airflow", args.tasks)
        _log(f"airflow db migrate + the benchmark DAG ({args.tasks} tasks)")
        db.prepare({**os.environ})
        with local_servers(work) as (local, cluster, redis_url):
            local.ensure_namespaces(cluster, (NAMESPACE,))
            setup_seconds = time.monotonic() - started
            _log(f"dispatch path: {args.tasks} tasks, {args.noop_consumers} no-op launchers")
            dispatch = dispatch_phase(db, redis_url, work / "dispatch", tasks=args.tasks,
                                      consumers=args.noop_consumers, cap_seconds=args.cap_seconds)
            _log(f"dispatch path: {dispatch['tasks_terminal']}/{args.tasks} final in {dispatch['seconds_end_to_end']} s"
                 f" = {dispatch['tasks_per_s']} tasks/s")
            rig = start_latency_rig(cluster, redis_url, work / "scale", latency_ms=args.latency_ms,
                                    ke_kubeconfig=str(work / "kubeconfig-unused"), db_url=pg.url,
                                    kubelet_workers=args.kubelet_workers)
            try:
                _log(f"scale: {args.tasks} tasks at {args.latency_ms:.0f} ms, {args.launchers} launchers")
                scale = scale_phase(rig, db, tasks=args.tasks, launchers=args.launchers,
                                    concurrency=args.concurrency, cap_seconds=args.cap_seconds)
            finally:
                stop_rig(rig)
            _log(f"scale: {scale['tasks_terminal']}/{args.tasks} final in {scale['seconds_to_all_terminal']} s, "
                 f"all created in {scale['seconds_to_all_created']} s, "
                 f"longest heartbeat {scale['heartbeat_ms_max']} ms")
    finally:
        pg.stop()
    from importlib.metadata import version

    return {
        "benchmark": "scale", "generated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python -m bench.scale", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "versions": {p: version(p) for p in ("apache-airflow-core", "kubernetes", "redis")},
        "tasks": args.tasks, "latency_ms": args.latency_ms, "launchers": args.launchers,
        "launch_concurrency": args.concurrency, "kubelet_workers": args.kubelet_workers,
        "cap_seconds": args.cap_seconds,
        "kubelet": "one simulated kubelet process (rules mode, succeed: 50 ms ContainerCreating + 100 ms Running, "
                   f"{args.kubelet_workers} API workers), direct to the apiserver",
        "dispatch": dispatch, "scale": scale,
        "setup_seconds": round(setup_seconds, 1), "bench_seconds": round(time.monotonic() - started, 1),
    }


# -- report -----------------------------------------------------------------------------------------------------


def _first(values: list[Any]) -> Any:
    return values[0] if values else None


def markdown(doc: dict[str, Any], results_file: Path | None = None) -> str:
    s, d = doc["scale"], doc["dispatch"]
    sync = s["sync_with_all_running"]
    mem = s.get("redis_used_memory_mb") or {}
    try:
        where = results_file.relative_to(REPO_ROOT) if results_file else None
    except ValueError:
        where = results_file
    lines = [
        f"Run {doc['generated']} on {doc['machine']['cpus']} CPUs (Python {doc['machine']['python']}): "
        f"`{doc['command']}`" + (f", results in `{where}`" if where else "") + ".",
        "",
        f"**Scale: {doc['tasks']} tasks queued at once, {doc['latency_ms']:.0f} ms API latency, "
        f"{doc['launchers']} launchers x {doc['launch_concurrency']} creates in flight**",
        "",
        "| figure | value |",
        "|---|---|",
        f"| tasks final / lost | {s['tasks_terminal']} / {s['lost']} ({s['final_states']})"
        + (f", capped at {doc['cap_seconds']:.0f} s with {s['not_final_at_cap']} not final" if s['capped'] else "")
        + " |",
        f"| time to all pods created | {s['seconds_to_all_created']} s ({s['pods_per_s']} pods/s) |",
        f"| time to all final in the executor | {s['seconds_to_all_terminal']} s |",
        f"| Redis used memory, peak (over baseline) | {mem.get('peak')} MB ({mem.get('peak_over_baseline')} MB) |",
        f"| scheduler's longest call / p99 (heartbeat + get_event_buffer) | {s['heartbeat_ms_max']} ms / "
        f"{s['heartbeat_ms_p99']} ms over {s['heartbeats']} calls |",
        f"| first heartbeat (dispatches {sync['dispatched_by_first_heartbeat']}) | {sync['first_heartbeat_ms']} ms "
        f"wall, {sync['first_heartbeat_cpu_ms']} ms CPU |",
        f"| `sync()` with {sync['running_during_sync']} running (wall / CPU, ms, each call) | "
        f"{sync['sync_ms']} / {sync['sync_cpu_ms']} (results applied: {sync['sync_results_applied']}) |",
        f"| `running` walk alone (`_newest_tries`, ms) | {sync['running_walk_ms']} |",
        f"| scheduler CPU per task (loop / whole process) | {s['scheduler_cpu_ms_per_task']} ms / "
        f"{s['scheduler_process_cpu_ms_per_task']} ms |",
        f"| report lag p50 / p99 (pod Succeeded -> event out of the executor) | {s['report_lag_ms_p50']} ms / "
        f"{s['report_lag_ms_p99']} ms |",
        f"| simulated kubelet p50 / p99 (ideal 150 ms), its CPU busy | {s['kubelet_ms_p50']} ms / "
        f"{s['kubelet_ms_p99']} ms, {s['kubelet_cpu_busy']} cores |",
        "",
        f"**Dispatch path alone: executor -> Redis -> {d['noop_consumers']} no-op launchers -> result -> `sync()`**",
        "",
        "| figure | value |",
        "|---|---|",
        f"| tasks final / lost | {d['tasks_terminal']} / {d['lost']} ({d['final_states']}) |",
        f"| end to end (first heartbeat -> last final event) | {d['seconds_end_to_end']} s = "
        f"**{d['tasks_per_s']} tasks/s** (goal >= 10,000/s) |",
        f"| executor -> Redis alone (the first heartbeat writes all {d['tasks']} launches, "
        f"{d.get('dispatch_chunk', 1000)} per MULTI/EXEC) | "
        f"{d['first_heartbeat_ms']} ms = {d['dispatch_only_tasks_per_s']} tasks/s |",
        f"| scheduler's longest call / p99 | {d['heartbeat_ms_max']} ms / {d['heartbeat_ms_p99']} ms over "
        f"{d['loop_iterations']} calls |",
        f"| scheduler CPU per task (loop / whole process) | {d['scheduler_cpu_ms_per_task']} ms / "
        f"{d['scheduler_process_cpu_ms_per_task']} ms |",
        f"| helpers' CPU per task (ms) | {d['helper_cpu_ms_per_task']} |",
        f"| scheduler process in Python's GC during the run | {d['gc_ms']} ms |",
    ]
    return "\n".join(lines)


def update_docs(path: Path, table: str) -> None:
    """Put ``table`` between the scale markers of ``path``; append the section with them when missing."""
    text = path.read_text()
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    arm_watchdog(args.max_seconds)
    os.register_at_fork(after_in_child=_default_signals)
    with run_workdir("kubestream-scale-") as work:
        doc = run(args, work)
        shield_signals()
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"scale-{doc['generated'].replace(':', '').replace('-', '')}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        table = markdown(doc, results_file=path)
        print(table)
        if not args.no_docs:
            update_docs(DOCS, table)
        _log(f"results in {path}; {doc['bench_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
