"""Chaos: kubestream's "nothing lost, nothing stuck" promise, measured under faults.

    .venv/bin/python -m bench.chaos [--faults all | launcher-kill,watcher-kill,...] [--tasks 1000]
                                    [--submit-seconds 30] [--launchers 2] [--concurrency 8] [--fail-every 3]
                                    [--queued-timeout 120] [--drain-timeout 300] [--max-seconds 5400]
                                    [--keep-logs] [--results PATH]

One phase per fault, in the order given, on the same servers (a real redis-server, the real local
kube-apiserver + etcd), each with a fresh key prefix and namespace, so that every figure is attributable
to one fault. A phase runs ``--tasks`` tasks through the real stack: the real executor driven in this
process as a scheduler loop drives it (``trigger_tasks``, then ``sync()`` + the event buffer, polled),
launchers and the watcher as real ``kubestream`` processes, the simulated kubelet in a process of its own.
Tasks are submitted evenly over ``--submit-seconds`` while the fault plays (``devkit.chaos_faults``: a strike
every few seconds); the fault stops once every task is submitted and it struck at least twice, then the
phase waits for every task's final state (at most ``--drain-timeout`` seconds).

Each task's pod follows a simulated-kubelet rule: every ``--fail-every``-th one exits 1, the others
succeed, after 0.5-1.5 s of running. What the pods did is recorded from the apiserver's side by a
``devkit.podwatch.PodLedger`` (a list+watch of the namespace, by pod uid), which also stands in for the
Airflow DB (``devkit.ledgerdb``: the state a task wrote is what its pod did). The scheduler's handling
of tasks stuck in queued is played too: a task with no final state whose pod of the current dispatch
was not seen running ``--queued-timeout`` seconds after it was queued is revoked and queued again
(a new dispatch, as Airflow's ``task_queued_timeout`` does), at most twice.

Figures per phase (and in total):

- ``tasks_submitted``, ``pods_created`` (distinct pod objects, by uid, the apiserver's side);
- ``duplicate_pods``: pod objects beyond the first for one (pod name, dispatch);
- ``tasks_lost``: no final state in the executor within the time limit;
- ``wrong_states``: a final state that contradicts what the task's pod did (success for a pod that
  failed or never finished, failed for a pod that succeeded);
- ``failed_by_fault``: failed in the executor although its pod succeeded, or without a pod although its
  pod would have succeeded (a dead-lettered launch);
- ``duplicate_final_states``: tasks reported final more than once;
- ``requeued_stuck_in_queued``, ``unexpected_exits`` (a launcher or watcher that died by itself; it is
  restarted, as a Deployment would), ``dead_letters``;
- ``seconds_to_drain`` (first submission to the last final state) and ``seconds_after_fault``;
- ``redis_used_memory_peak_bytes`` (INFO memory, sampled every 250 ms).

Every phase also lists the tasks behind each non-zero figure (``details``: pod name, what the executor
said, what the pod did, the Redis record) and each strike of the fault. The JSON goes to
``bench/results/chaos-<UTC time the run ended>.json`` (path printed); logs of every component are kept
when a phase breaks a promise or fails. Cut off by ``--max-seconds`` (SIGALRM); everything started is stopped on any
exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.runner import arm_watchdog, shield_signals
from devkit.chaos_faults import FAULTS, Fault, FaultPlayer, Stage, make_fault
from devkit.cluster import ClusterState, LocalCluster
from devkit.components import REPO_ROOT, Components
from devkit.isolated import start_kubelet
from devkit.pipeline import Pipeline
from devkit.podwatch import PodLedger
from devkit.probe import Streams
from devkit.redisserver import RedisServer
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.keys import Keys
from kubestream.kubeapi import api_client, pods_path, request
from kubestream.settings import Settings

RESULTS_DIR = REPO_ROOT / "bench" / "results"
POLL = 0.05  # sync() polling interval while no result is waiting
MAX_REQUEUES = 2  # Airflow's num_stuck_in_queued_retries
SETTINGS = {  # short enough that recoveries happen within a phase (docs/chaos.md)
    "reclaim_idle_seconds": "10", "retry_budget_seconds": "5", "lease_seconds": "5", "reconcile_seconds": "5",
}


@dataclass(frozen=True)
class ChaosConfig:
    tasks: int = 1000  # per phase
    submit_seconds: float = 30.0
    launchers: int = 2
    concurrency: int = 8
    fail_every: int = 3  # every n-th task's pod exits 1
    queued_timeout: float = 120.0
    drain_timeout: float = 300.0
    settle_seconds: float = 5.0  # stepping on after the last final state, to catch late duplicates
    min_strikes: int = 2
    fault_window_max: float = 180.0  # the fault stops by then, struck twice or not
    keep_logs: bool = False  # keep every phase's component logs, not only those of a broken phase
    watchers: int = 1  # the first leads, the others stand by
    pod_seconds: float = 0.5  # a pod runs this long, plus up to pod_jitter
    pod_jitter: float = 1.0
    fault_until_drained: bool = False  # the fault plays until every task is final (and struck min_strikes)
    settings: dict[str, str] = field(default_factory=lambda: dict(SETTINGS))  # over kubestream's defaults


@dataclass(frozen=True)
class Servers:
    """What every phase shares. ``redis`` None: Redis cannot be restarted (a shared test server)."""

    local: LocalCluster
    cluster: ClusterState
    redis_url: str
    redis: RedisServer | None
    work: Path
    setenv: Callable[[str, str], object] = os.environ.__setitem__


@dataclass
class PhaseFigures:
    fault: str
    tasks_submitted: int = 0
    pods_created: int = 0
    duplicate_pods: int = 0
    tasks_lost: int = 0
    wrong_states: int = 0
    failed_by_fault: int = 0
    duplicate_final_states: int = 0
    requeued_stuck_in_queued: int = 0
    unexpected_exits: int = 0
    dead_letters: int = 0
    seconds_to_drain: float | None = None
    seconds_after_fault: float | None = None
    redis_used_memory_peak_bytes: int = 0
    redis_used_memory_start_bytes: int = 0
    strikes: int = 0
    final_states: dict[str, int] = field(default_factory=dict)
    component_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # evidence that the fault bit
    namespace: str = ""
    key_prefix: str = ""
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    strike_log: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, list[Any]] = field(default_factory=dict)
    logs: str = ""  # where the phase's component logs were kept ("" when removed)

    @property
    def broken(self) -> bool:
        """A promise broken (or the phase could not be measured)."""
        return bool(self.tasks_lost or self.duplicate_pods or self.wrong_states or self.failed_by_fault
                    or self.duplicate_final_states or self.errors)


# -- pieces ----------------------------------------------------------------------------------------------------


class MemorySampler:
    """Samples INFO memory's used_memory every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, redis_url: str, interval: float = 0.25) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.interval = interval
        self.peak = self.first = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-memory", daemon=True)

    def sample(self) -> int:
        used = int(self.client.info("memory")["used_memory"])
        self.peak = max(self.peak, used)
        self.first = self.first or used
        return used

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except redis.RedisError:  # restarting
                continue

    def start(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


class HealthMetrics:
    """The metrics every launcher and watcher last wrote to its health record (``{p}:health:<kind>:<member>``),
    kept per member across kills and Redis restarts; ``totals()`` sums them per kind."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.pattern = client, Keys(prefix).health_pattern
        self.last: dict[str, dict[str, float]] = {}

    def sample(self) -> None:
        try:
            for key in self.client.scan_iter(match=self.pattern, count=100):
                raw = self.client.hget(key, "metrics")
                if raw:
                    self.last[key.decode() if isinstance(key, bytes) else str(key)] = json.loads(raw)
        except (redis.RedisError, ValueError):
            pass  # Redis restarting: the next sample

    def totals(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for key, metrics in self.last.items():
            kind = key.split(":")[-2]
            into = out.setdefault(kind, {})
            for name, value in metrics.items():
                if name.endswith("_total") and isinstance(value, int | float):
                    into[name] = into.get(name, 0) + value
        return {kind: dict(sorted(m.items())) for kind, m in sorted(out.items())}


def pod_rule(index: int, fail_every: int, seconds: float = 0.5, jitter: float = 1.0) -> tuple[str, str]:
    """The simulated kubelet's rule for task ``index`` and the state its task must end in."""
    timing = f"delay={seconds:g},jitter={jitter:g}"
    if fail_every and index % fail_every == fail_every - 1:
        return f"exit:1,{timing}", "failed"
    return f"succeed:{timing}", "success"


@dataclass
class TaskRun:
    """One task instance of a phase, as the scheduler sees it."""

    task_id: str
    rule: str
    expected: str
    work: Any  # the current ExecuteTask (a requeue makes a new one: a new dispatch)
    pod: str
    queued_at: float = 0.0
    requeues: int = 0
    finals: list[tuple[str, str]] = field(default_factory=list)  # (state, info) of each final event
    final_at: list[float] = field(default_factory=list)  # time.monotonic() each came out of the event buffer

    @property
    def dispatch(self) -> str:
        return str(self.work.ti.external_executor_id)


def phase_settings(servers: Servers, namespace: str, prefix: str,
                   overrides: dict[str, str] | None = None) -> Settings:
    return Settings.from_mapping({"redis_url": servers.redis_url, "key_prefix": prefix, "scheduler_id": "chaos",
                                  "namespace": namespace, "queues": "default", "signing_keys": DEV_SIGNING_KEYS,
                                  **(SETTINGS if overrides is None else overrides)})


def supervise(stage: Stage, exits: list[str]) -> None:
    """Restart launchers and watchers that exited by themselves (a Deployment would), noting each."""
    with stage.lock:
        pipe = stage.pipe
        for proc in [*pipe.launchers, *pipe.watchers]:
            if proc.poll() is None:
                continue
            launcher = proc in pipe.launchers
            name = stage.name_of(proc)
            tail = pipe.components.log(name).strip().splitlines()[-1:] or [""]
            exits.append(f"{name} exited with {proc.returncode}: {tail[0][-300:]}")
            stage.forget(proc)
            stage.reap(proc)
            if launcher:
                stage.new_launcher()
            else:
                stage.new_watcher()


def _cleanup(servers: Servers, admin: Any, namespace: str, prefix: str) -> None:
    """Free what a finished phase left: its pods (at once) and its Redis keys."""
    try:
        request(admin, "DELETE", pods_path(namespace), {"apiVersion": "v1", "kind": "DeleteOptions",
                                                       "gracePeriodSeconds": 0}, timeout=(5.0, 60.0))
    except Exception as exc:  # noqa: BLE001 - best effort
        print(f"  (pods of {namespace} not deleted: {exc})", file=sys.stderr)
    try:
        with redis.Redis.from_url(servers.redis_url) as client:
            keys = list(client.scan_iter(match="{" + prefix + "}*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i:i + 500])
    except redis.RedisError as exc:
        print(f"  (keys of {prefix} not deleted: {exc})", file=sys.stderr)


# -- one phase ------------------------------------------------------------------------------------------------


def run_phase(servers: Servers, fault_name: str, config: ChaosConfig = ChaosConfig(),
              log: Callable[[str], None] = print, *, fault: Fault | None = None,
              observe: Callable[[Sequence[TaskRun], PodLedger], None] | None = None) -> PhaseFigures:
    """Run ``config.tasks`` tasks while ``fault_name`` plays (``fault``: this instance of it); its figures
    (``errors`` if it could not be measured). ``observe`` is shown the phase's tasks and pod ledger at its end."""
    tag = uuid.uuid4().hex[:6]
    namespace, prefix = f"chaos-{fault_name}-{tag}"[:63], f"c{tag}"
    figures = PhaseFigures(fault=fault_name, namespace=namespace, key_prefix=prefix)
    phase_dir = servers.work / f"{fault_name}-{tag}"
    phase_dir.mkdir(parents=True)
    started = time.monotonic()
    servers.local.ensure_namespaces(servers.cluster, (namespace,))
    admin = api_client(servers.cluster.kubeconfig("admin"), pool_size=8)
    components = Components(phase_dir, log_level="INFO")
    try:
        _measure(servers, fault or make_fault(fault_name), config, figures, namespace, prefix, phase_dir, admin,
                 components, log, observe)
    except Exception as exc:  # noqa: BLE001 - one broken phase must not hide the others' figures
        figures.errors.append(f"phase aborted: {type(exc).__name__}: {exc}")
    finally:
        components.stop_all()
        _cleanup(servers, admin, namespace, prefix)
        admin.close()
    figures.seconds = round(time.monotonic() - started, 1)
    if figures.broken or figures.unexpected_exits or config.keep_logs:
        figures.logs = str(phase_dir)
    else:
        shutil.rmtree(phase_dir, ignore_errors=True)
    return figures


def _measure(servers: Servers, fault: Fault, config: ChaosConfig, figures: PhaseFigures, namespace: str,
             prefix: str, phase_dir: Path, admin: Any, components: Components, log: Callable[[str], None],
             observe: Callable[[Sequence[TaskRun], PodLedger], None] | None = None) -> None:
    from devkit.ledgerdb import start_ledger_executor  # imports Airflow
    from devkit.scheduler import Driver

    fault_name = figures.fault
    settings = phase_settings(servers, namespace, prefix, config.settings)
    stage = Stage(servers.local, servers.cluster, servers.redis, admin, namespace, phase_dir, settings,
                  launcher_overrides={"launch_concurrency": str(config.concurrency)})
    ledger = PodLedger(admin, namespace)
    with ExitStack() as stack:
        ledger.start()
        stack.callback(ledger.stop)
        stack.callback(fault.close, stage)
        fault.prepare(stage)
        kubelet = start_kubelet(components, servers.cluster.kubeconfig("kubelet"), namespace,
                                node_name=f"node-{namespace}"[:63])
        pipe = Pipeline(settings, servers.cluster, components, setenv=servers.setenv,
                        launcher_kubeconfig=stage.launcher_kubeconfig, watcher_kubeconfig=stage.watcher_kubeconfig)
        stage.pipeline = pipe
        stack.callback(pipe.stop)
        for _ in range(config.launchers):
            stage.new_launcher()
        for _ in range(config.watchers):
            stage.new_watcher()
        probe_client = redis.Redis.from_url(servers.redis_url)
        stack.callback(probe_client.close)
        streams = Streams(probe_client, settings)
        pipe.wait_serving(streams)
        logger = _file_logger(phase_dir)
        stack.callback(_close_handlers, logger)
        executor = start_ledger_executor(settings, ledger, servers.setenv, logger=logger)
        stack.callback(executor.terminate)
        driver = Driver(executor)
        health = HealthMetrics(probe_client, prefix)
        runs = _task_runs(config, fault_name)
        by_key = {run.work.ti.key: run for run in runs}
        sampler = MemorySampler(servers.redis_url).start()
        stack.callback(sampler.stop)
        player = FaultPlayer(fault, stage).start()
        healed = threading.Event()

        def heal() -> None:
            if not healed.is_set():
                healed.set()
                player.stop()

        stack.callback(heal)
        log(f"[{fault_name}] {config.tasks} tasks over {config.submit_seconds:.0f} s, namespace {namespace}, "
            f"prefix {prefix}: {fault.summary}")
        exits: list[str] = []
        t0 = time.monotonic()
        interval = config.submit_seconds / config.tasks if config.tasks else 0.0
        submitted = done = seen = 0
        last_final = fault_stopped = 0.0
        next_chores = t0 + 1.0
        settle_until = 0.0
        while True:
            now = time.monotonic()
            due = len(runs) if interval <= 0 else min(len(runs), int((now - t0) / interval) + 1)
            for run in runs[submitted:due]:
                run.queued_at = now
                executor.queue_workload(run.work, session=None)
            submitted = max(submitted, due)
            if executor.queued_tasks:  # the scheduler loop triggers every heartbeat (Redis may have refused)
                executor.trigger_tasks(len(executor.queued_tasks))
            driver.step()
            stepped = time.monotonic()
            stage.start_wanted()
            fresh = driver.events[seen:]
            seen = len(driver.events)
            for key, state, info in fresh:
                if state in ("running", "queued") or key not in by_key:
                    continue
                run = by_key[key]
                run.finals.append((state, str(info or "")))
                run.final_at.append(stepped)
                if len(run.finals) == 1:
                    done += 1
                    last_final = stepped
            if now >= next_chores:
                next_chores = now + 1.0
                components.check([kubelet])
                supervise(stage, exits)
                health.sample()
                figures.requeued_stuck_in_queued += _requeue_stuck(executor, runs[:submitted], ledger, config, now)
            if not fault_stopped and submitted == len(runs) and (
                    (len(player.strikes) >= config.min_strikes
                     and (done == len(runs) or not config.fault_until_drained))
                    or now - t0 > config.fault_window_max):
                heal()
                fault_stopped = time.monotonic()
                log(f"[{fault_name}] fault stopped after {fault_stopped - t0:.0f} s ({len(player.strikes)} strikes), "
                    f"{done}/{len(runs)} tasks final")
            if fault_stopped and done == len(runs) and not settle_until:
                settle_until = now + config.settle_seconds
            if settle_until and now >= settle_until:
                break
            if fault_stopped and now - fault_stopped > config.drain_timeout:
                log(f"[{fault_name}] drain timeout: {len(runs) - done} tasks without a final state")
                break
            if not fresh:
                time.sleep(POLL)
        heal()
        health.sample()
        figures.component_metrics = health.totals()
        ledger.catch_up()
        figures.seconds_to_drain = round(last_final - t0, 1) if done == len(runs) else None
        figures.seconds_after_fault = round(max(0.0, last_final - fault_stopped), 1) if done == len(runs) else None
        figures.redis_used_memory_peak_bytes = sampler.peak
        figures.redis_used_memory_start_bytes = sampler.first
        figures.strikes = len(player.strikes)
        figures.strike_log = [asdict(s) for s in player.strikes]
        figures.errors.extend(player.errors)
        figures.errors.extend(getattr(fault, "unclean", []))
        figures.unexpected_exits = len(exits)
        figures.details["unexpected_exits"] = exits
        try:
            figures.dead_letters = streams.dead_count()
        except redis.RedisError:
            figures.dead_letters = -1
        _tally(figures, runs[:submitted], ledger, streams)
        if observe is not None:
            observe(runs[:submitted], ledger)


def _task_runs(config: ChaosConfig, fault_name: str) -> list[TaskRun]:
    from devkit.workloads import pod_name, sim, workload

    runs = []
    for i in range(config.tasks):
        rule, expected = pod_rule(i, config.fail_every, config.pod_seconds, config.pod_jitter)
        work = workload("chaos", f"t{i:05d}", run_id=fault_name, executor_config=sim(rule))
        runs.append(TaskRun(f"t{i:05d}", rule, expected, work, pod_name(work)))
    return runs


def _requeue_stuck(executor: Any, runs: Sequence[TaskRun], ledger: PodLedger, config: ChaosConfig,
                   now: float) -> int:
    """The scheduler's task_queued_timeout: revoke a task whose current dispatch never started and queue it
    again (a new dispatch, same try); returns how many."""
    from devkit.workloads import sim, workload

    count = 0
    for run in runs:
        if run.finals or run.requeues >= MAX_REQUEUES or now - run.queued_at < config.queued_timeout:
            continue
        if ledger.started(run.pod, run.dispatch):
            continue
        ti = run.work.ti
        executor.revoke_task(ti=types.SimpleNamespace(key=ti.key, queue=ti.queue,
                                                      external_executor_id=ti.external_executor_id))
        run.work = workload("chaos", run.task_id, run_id=ti.run_id, executor_config=sim(run.rule))
        run.requeues += 1
        run.queued_at = now
        executor.queue_workload(run.work, session=None)
        count += 1
    return count


def _tally(figures: PhaseFigures, runs: Sequence[TaskRun], ledger: PodLedger, streams: Streams) -> None:
    """The figures (and the tasks behind them) from what the executor said and what the pods did."""
    names = {run.pod for run in runs}
    creations = {k: n for k, n in ledger.creations().items() if k[0] in names}
    figures.tasks_submitted = len(runs)
    figures.pods_created = sum(creations.values())
    dups = {k: n for k, n in creations.items() if n > 1}
    figures.duplicate_pods = sum(n - 1 for n in dups.values())
    figures.details["duplicate_pods"] = [{"pod": name, "dispatch": dispatch, "pod_objects": n}
                                         for (name, dispatch), n in sorted(dups.items())]
    lost, wrong, by_fault, twice = [], [], [], []
    finals: Counter[str] = Counter()
    for run in runs:
        did = ledger.outcome(run.pod)
        final = run.finals[0][0] if run.finals else None
        row: dict[str, Any] = {"task": run.task_id, "pod": run.pod, "rule": run.rule, "pod_did": did,
                               "executor_said": run.finals, "requeues": run.requeues}
        if final is None:
            try:
                row["redis_record"] = streams.task(run.pod)
            except redis.RedisError as exc:
                row["redis_record"] = f"unreadable: {exc}"
            row["pods_seen"] = [{"uid": r.uid, "dispatch": r.dispatch, "phases": sorted(r.phases)}
                                for r in ledger.records(run.pod)]
            lost.append(row)
            continue
        finals[final] += 1
        if (did is not None and final != did) or (did is None and final == "success"):
            wrong.append(row)
        if final == "failed" and (did == "success" or (did is None and run.expected == "success")):
            by_fault.append(row)
        if len(run.finals) > 1:
            twice.append(row)
    figures.tasks_lost, figures.wrong_states, figures.failed_by_fault = len(lost), len(wrong), len(by_fault)
    figures.duplicate_final_states = len(twice)
    figures.final_states = dict(finals)
    figures.details.update(lost=lost[:50], wrong_states=wrong[:50], failed_by_fault=by_fault[:50],
                           duplicate_final_states=twice[:50])


# -- the command ------------------------------------------------------------------------------------------------


COLUMNS = [  # (header, figure)
    ("fault", "fault"), ("tasks", "tasks_submitted"), ("pods created", "pods_created"),
    ("duplicate pods", "duplicate_pods"), ("lost", "tasks_lost"), ("wrong state", "wrong_states"),
    ("failed by fault", "failed_by_fault"), ("final twice", "duplicate_final_states"),
    ("requeued", "requeued_stuck_in_queued"), ("exits", "unexpected_exits"), ("drain s", "seconds_to_drain"),
    ("Redis peak MiB", "redis_used_memory_peak_bytes"), ("strikes", "strikes"),
]
SUMMED = {"tasks_submitted", "pods_created", "duplicate_pods", "tasks_lost", "wrong_states", "failed_by_fault",
          "duplicate_final_states", "requeued_stuck_in_queued", "unexpected_exits", "strikes", "seconds_to_drain"}


def totals(phases: Sequence[PhaseFigures]) -> dict[str, Any]:
    out: dict[str, Any] = {"fault": "total"}
    for _, name in COLUMNS[1:]:
        values = [getattr(p, name) for p in phases]
        if name == "redis_used_memory_peak_bytes":
            out[name] = max(values, default=0)
        elif name == "seconds_to_drain":
            out[name] = round(sum(v for v in values if v is not None), 1) if None not in values else None
        else:
            out[name] = sum(values)
    return out


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name == "redis_used_memory_peak_bytes":
        return f"{value / 2**20:.1f}"
    return str(value)


def table(phases: Sequence[PhaseFigures]) -> str:
    """The figures as a Markdown table, one row per fault and the total."""
    rows = [asdict(p) for p in phases] + [totals(phases)]
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(name, row.get(name)) for _, name in COLUMNS) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return {"host": platform.node(), "cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def source_version() -> str:
    """``git describe --always --dirty`` of the code measured ("" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def parse_faults(text: str) -> list[str]:
    names = list(FAULTS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown fault(s) {', '.join(unknown) or '(none)'}; "
                                         f"known: all, {', '.join(FAULTS)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--faults", type=parse_faults, default=list(FAULTS),
                        help=f"comma-separated, or all (default): {', '.join(FAULTS)}")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per phase (one phase per fault)")
    parser.add_argument("--submit-seconds", type=float, default=30.0, help="a phase's tasks are submitted over this")
    parser.add_argument("--launchers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="creates in flight per launcher")
    parser.add_argument("--fail-every", type=int, default=3, help="every n-th task's pod exits 1 (0: none)")
    parser.add_argument("--queued-timeout", type=float, default=120.0,
                        help="a task whose pod never started is revoked and queued again after this (Airflow's "
                             "task_queued_timeout)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="after the fault stops, tasks without a final state by then are lost")
    parser.add_argument("--keep-logs", action="store_true", help="keep every phase's component logs")
    parser.add_argument("--max-seconds", type=int, default=5400, help="abort (and clean up) after this long")
    parser.add_argument("--results", type=Path, help="JSON output (default bench/results/chaos-<UTC time>.json)")
    return parser.parse_args(argv)


@contextmanager
def chaos_servers(work: Path) -> Iterator[Servers]:
    """A fresh local cluster and a redis-server of our own (restartable) under ``work``; stopped after."""
    local, server = LocalCluster(work / "cluster"), RedisServer(data_dir=work / "redis")
    try:
        server.start()
        yield Servers(local, local.up(), server.url, server, work)
    finally:
        local.down()
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    arm_watchdog(args.max_seconds)
    config = ChaosConfig(tasks=args.tasks, submit_seconds=args.submit_seconds, launchers=args.launchers,
                         concurrency=args.concurrency, fail_every=args.fail_every,
                         queued_timeout=args.queued_timeout, drain_timeout=args.drain_timeout,
                         keep_logs=args.keep_logs)
    work = Path(tempfile.mkdtemp(prefix="kubestream-chaos-"))
    os.environ["AIRFLOW_HOME"] = str(work / "airflow")  # before anything imports airflow
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    started = time.monotonic()
    phases: list[PhaseFigures] = []
    keep = False
    try:
        with chaos_servers(work) as servers:
            for name in args.faults:
                figures = run_phase(servers, name, config, log=lambda line: print(line, flush=True))
                phases.append(figures)
                keep = keep or bool(figures.logs)
                print(f"[{name}] " + ", ".join(f"{h} {_cell(n, getattr(figures, n))}" for h, n in COLUMNS[1:])
                      + "".join(f"\n  {kind}: " + ", ".join(f"{k} {v:g}" for k, v in m.items() if v)
                                for kind, m in figures.component_metrics.items())
                      + "".join(f"\n  ERROR {e}" for e in figures.errors)
                      + (f"\n  logs kept in {figures.logs}" if figures.logs else ""), flush=True)
    finally:
        shield_signals()
        if phases:
            now = time.gmtime()
            results = args.results or RESULTS_DIR / f"chaos-{time.strftime('%Y%m%dT%H%M%SZ', now)}.json"
            report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", now), "machine": machine(),
                      "source": source_version(),
                      "config": asdict(config), "settings": SETTINGS, "faults": args.faults,
                      "seconds": round(time.monotonic() - started, 1), "total": totals(phases),
                      "phases": [asdict(p) for p in phases]}
            results.parent.mkdir(parents=True, exist_ok=True)
            results.write_text(json.dumps(report, indent=2, default=str))
            print("\n" + table(phases))
            print(f"\nresults: {results}")
        if keep:
            print(f"logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    broken = [p.fault for p in phases if p.broken]
    if broken:
        print(f"promise broken or not measured under: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken or len(phases) < len(args.faults) else 0


def _file_logger(directory: Path) -> logging.Logger:
    """A logger writing to ``<directory>/executor.log`` only: the in-process executor's warnings during a
    Redis outage would flood the console."""
    logger = logging.getLogger(f"bench.chaos.executor.{directory.name}")
    handler = logging.FileHandler(directory / "executor.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def _close_handlers(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        handler.close()
    logger.handlers = []


if __name__ == "__main__":
    sys.exit(main())
