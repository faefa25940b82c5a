"""Failover: how long a dead launcher or watcher holds tasks up, measured with kubestream's default settings.

    .venv/bin/python -m bench.failover [--phases none,launcher-kill,watcher-kill] [--tasks 300]
                                       [--pod-seconds 3] [--submit-seconds 0] [--launchers 4] [--concurrency 8]
                                       [--launcher-kill-every 2] [--watcher-kill-every 4] [--first-kill S]
                                       [--drain-timeout 120]
                                       [--keep-logs] [--max-seconds 900] [--results PATH] [--docs PATH | --no-docs]

One run, the same servers for every phase (a real redis-server, the real local kube-apiserver + etcd, the
simulated kubelet in a process of its own), one phase per scenario, each with a fresh key prefix and
namespace. A phase is a ``bench.chaos`` phase (``run_phase``: the real executor driven in this process as a
scheduler loop drives it, launchers and watchers as real ``kubestream`` processes, a ``devkit.podwatch.PodLedger``
recording every pod object) with these differences:

- kubestream's **default settings** (``reclaim_idle_seconds``, ``lease_seconds``, ``liveness_seconds``...:
  nothing overridden; the defaults are what is measured);
- ``--tasks`` tasks queued at once (``--submit-seconds 0``), each pod running ``--pod-seconds`` in the
  simulated kubelet (no jitter, every pod succeeds), ``--launchers`` launchers x ``--concurrency`` creates
  in flight, two watchers (one leads, one stands by) in every phase;
- the fault plays until every task has a final state (at most ``fault_window_max`` seconds), then the
  phase waits at most ``--drain-timeout`` more; a killed process is restarted at once under the same
  name (a stable identity: ``KUBESTREAM_CONSUMER_NAME`` unchanged, as for a restarted container).

The phases:

- ``none``: no fault, the baseline;
- ``launcher-kill``: a launcher killed with SIGKILL every ``--launcher-kill-every`` seconds (in turn);
- ``watcher-kill``: every ``--watcher-kill-every`` seconds, the watcher holding the lease (acquired since the
  previous kill) killed with SIGKILL; a strike that finds no such leader kills nothing;
- ``launcher-kill-new-name`` (only when named in ``--phases``): as ``launcher-kill``, but the replacement gets
  a new consumer name (a Deployment's new pod), so the dead launcher's pending entries must be claimed by
  the others; under the same name the restarted launcher takes its own pending entries back at start.

Figures per phase: ``seconds_to_drain`` (first submission to the last final state out of the executor),
``drain_ratio`` (to ``none``'s), ``pods_created``, ``duplicate_pods`` (pod objects beyond the first per (pod
name, dispatch)), ``tasks_lost`` (no final state by the drain timeout), ``kills``, and the **report lag**: per
task, from the moment the pod ledger's watch saw its pod of the task's dispatch reach Succeeded/Failed to
the moment its final event came out of the executor's ``sync()`` + event buffer (p50, p99, max); the
watcher phase also times each takeover (kill to the next lease acquisition). The figures ``bench.chaos``
keeps (wrong states, final twice, exits...) are in the JSON too. Output: a Markdown table, JSON in
``bench/results/failover-<UTC>.json`` and the table in ``docs/failover.md`` (between its figure markers).
Cut off by ``--max-seconds`` (SIGALRM); everything started is stopped on any exit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos import (
    RESULTS_DIR,
    ChaosConfig,
    PhaseFigures,
    Servers,
    TaskRun,
    chaos_servers,
    machine,
    run_phase,
    source_version,
)
from bench.runner import arm_watchdog, shield_signals
from devkit.chaos_faults import Fault, LauncherKill, NoFault, WatcherKill
from devkit.components import REPO_ROOT
from devkit.podwatch import PodLedger

PHASES = ("none", "launcher-kill", "watcher-kill")
EXTRA_PHASES = ("launcher-kill-new-name",)  # only when asked for (--phases)
DOCS = REPO_ROOT / "docs" / "failover.md"
FIGURES_START, FIGURES_END = "<!-- failover figures: start -->", "<!-- failover figures: end -->"
DRAIN_RATIO_BAR = 1.5  # launcher-kill drains within 1.5x the time of none
REPORT_LAG_BAR = 5.0  # watcher-kill: the longest report lag under 5 s


@dataclass(frozen=True)
class FailoverConfig:
    tasks: int = 300
    pod_seconds: float = 3.0
    submit_seconds: float = 0.0  # 0: all at once
    launchers: int = 4
    concurrency: int = 8
    watchers: int = 2
    launcher_kill_every: float = 2.0
    watcher_kill_every: float = 4.0
    first_kill: float | None = None  # seconds after the tasks are queued; None: one kill interval
    min_kills: int = 2  # a fault phase goes on until it struck this often, even when drained before
    fault_window_max: float = 180.0
    drain_timeout: float = 120.0
    queued_timeout: float = 600.0  # Airflow's default task_queued_timeout: no requeue within a phase
    keep_logs: bool = False

    def chaos_config(self, phase: str) -> ChaosConfig:
        return ChaosConfig(tasks=self.tasks, submit_seconds=self.submit_seconds, launchers=self.launchers,
                           concurrency=self.concurrency, fail_every=0, queued_timeout=self.queued_timeout,
                           drain_timeout=self.drain_timeout, min_strikes=0 if phase == "none" else self.min_kills,
                           fault_window_max=self.fault_window_max, keep_logs=self.keep_logs, watchers=self.watchers,
                           pod_seconds=self.pod_seconds, pod_jitter=0.0, fault_until_drained=True, settings={})


def make_phase_fault(phase: str, config: FailoverConfig) -> Fault:
    if phase == "none":
        return NoFault()
    if phase in ("launcher-kill", "launcher-kill-new-name"):
        first = config.launcher_kill_every if config.first_kill is None else config.first_kill
        return LauncherKill(every=config.launcher_kill_every, first=first, same_name=phase == "launcher-kill")
    if phase == "watcher-kill":
        first = config.watcher_kill_every if config.first_kill is None else config.first_kill
        return WatcherKill(every=config.watcher_kill_every, first=first, leader=True)
    raise ValueError(f"unknown phase {phase!r}; known: {', '.join(PHASES + EXTRA_PHASES)}")


@dataclass
class FailoverFigures:
    phase: str
    tasks: int = 0
    seconds_to_drain: float | None = None
    drain_ratio: float | None = None  # to the none phase of the same run
    pods_created: int = 0
    duplicate_pods: int = 0
    tasks_lost: int = 0
    kills: int = 0
    kills_in_flight: int = 0  # kills before the last task's final state (the others struck a drained phase)
    report_lag_p50: float | None = None
    report_lag_p99: float | None = None
    report_lag_max: float | None = None
    report_lags: int = 0  # tasks whose lag was measured (a final state and a finished pod of its dispatch)
    takeover_seconds: list[float | None] = field(default_factory=list)  # watcher-kill: kill -> next lease taken
    wrong_states: int = 0
    duplicate_final_states: int = 0
    unexpected_exits: int = 0
    errors: list[str] = field(default_factory=list)
    chaos: dict[str, Any] = field(default_factory=dict)  # bench.chaos's figures of the phase, details included

    @property
    def broken(self) -> bool:
        return bool(self.tasks_lost or self.duplicate_pods or self.wrong_states or self.duplicate_final_states
                    or self.errors or self.seconds_to_drain is None)


def report_lags(runs: Sequence[TaskRun], ledger: PodLedger) -> list[float]:
    """Per task with a final state: seconds from its pod (of the task's dispatch) seen finished to its final
    event out of the executor. Tasks whose pod was never seen finished are left out."""
    lags = []
    for run in runs:
        if not run.final_at:
            continue
        finished = [r.finished_at for r in ledger.records(run.pod)
                    if r.dispatch == run.dispatch and r.finished_at is not None]
        if finished:
            lags.append(run.final_at[0] - min(finished))
    return lags


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def figures_of(phase: str, chaos: PhaseFigures, lags: Sequence[float], fault: Fault) -> FailoverFigures:
    kill_times = [float(s["at"]) for s in chaos.strike_log if str(s.get("what", "")).startswith("kill -9")]
    drained = chaos.seconds_to_drain
    out = FailoverFigures(
        phase=phase, tasks=chaos.tasks_submitted, seconds_to_drain=chaos.seconds_to_drain,
        pods_created=chaos.pods_created, duplicate_pods=chaos.duplicate_pods, tasks_lost=chaos.tasks_lost,
        kills=len(kill_times), kills_in_flight=sum(1 for t in kill_times if drained is None or t < drained),
        report_lag_p50=_r(percentile(lags, 50), 3), report_lag_p99=_r(percentile(lags, 99), 3),
        report_lag_max=_r(max(lags, default=None), 3), report_lags=len(lags), wrong_states=chaos.wrong_states,
        duplicate_final_states=chaos.duplicate_final_states, unexpected_exits=chaos.unexpected_exits,
        errors=list(chaos.errors), chaos=asdict(chaos))
    if isinstance(fault, WatcherKill):
        out.takeover_seconds = fault.takeovers()
    return out


def run_one(servers: Servers, phase: str, config: FailoverConfig, log: Callable[[str], None]) -> FailoverFigures:
    """One phase: a ``bench.chaos`` phase with the fault ``phase`` names, and its failover figures."""
    fault = make_phase_fault(phase, config)
    lags: list[float] = []
    chaos = run_phase(servers, phase, config.chaos_config(phase), log, fault=fault,
                      observe=lambda runs, ledger: lags.extend(report_lags(runs, ledger)))
    return figures_of(phase, chaos, lags, fault)


def run_failover(servers: Servers, config: FailoverConfig = FailoverConfig(), phases: Sequence[str] = PHASES,
                 log: Callable[[str], None] = print,
                 results: list[FailoverFigures] | None = None) -> list[FailoverFigures]:
    """One phase per name in ``phases``, in order, on ``servers``; the figures of each (ratios filled in),
    appended to ``results`` as each phase ends when given (what an aborted run did is kept)."""
    results = [] if results is None else results
    for phase in phases:
        results.append(run_one(servers, phase, config, log))
        r = results[-1]
        log(f"[{phase}] " + ", ".join(f"{h} {_cell(getattr(r, n))}" for h, n in COLUMNS[1:] if n != "drain_ratio")
            + "".join(f"\n  ERROR {e}" for e in r.errors)
            + (f"\n  logs kept in {r.chaos['logs']}" if r.chaos.get("logs") else ""))
    fill_ratios(results)
    return results


def fill_ratios(results: Sequence[FailoverFigures]) -> None:
    """Each phase's drain time over the none phase's (left None without a drained none phase)."""
    base = next((r.seconds_to_drain for r in results if r.phase == "none"), None)
    for r in results:
        if base and r.seconds_to_drain is not None:
            r.drain_ratio = round(r.seconds_to_drain / base, 2)


def bars(results: Sequence[FailoverFigures]) -> list[dict[str, Any]]:
    """Issue 14's bars and whether this run met them (None: not measured)."""
    by = {r.phase: r for r in results}
    out: list[dict[str, Any]] = []
    lk, wk = by.get("launcher-kill"), by.get("watcher-kill")
    met: bool | None = None
    if lk is not None and lk.drain_ratio is not None:
        met = lk.drain_ratio <= DRAIN_RATIO_BAR and lk.duplicate_pods == 0 and lk.tasks_lost == 0
    out.append({"bar": f"launcher-kill drains within {DRAIN_RATIO_BAR}x none, 0 duplicate pods, 0 lost",
                "measured": None if lk is None else {"drain_ratio": lk.drain_ratio, "duplicate_pods": lk.duplicate_pods,
                                                     "tasks_lost": lk.tasks_lost},
                "met": met})
    met = None
    if wk is not None and wk.report_lag_max is not None:
        met = wk.report_lag_max < REPORT_LAG_BAR and wk.tasks_lost == 0
    out.append({"bar": f"watcher-kill: longest pod-final -> executor event under {REPORT_LAG_BAR:g} s",
                "measured": None if wk is None else {"report_lag_max": wk.report_lag_max, "tasks_lost": wk.tasks_lost},
                "met": met})
    return out


# -- output ---------------------------------------------------------------------------------------------------

COLUMNS = [  # (header, figure)
    ("phase", "phase"), ("tasks", "tasks"), ("drain s", "seconds_to_drain"), ("ratio to none", "drain_ratio"),
    ("pods created", "pods_created"), ("duplicate pods", "duplicate_pods"), ("lost", "tasks_lost"),
    ("kills", "kills"), ("kills in flight", "kills_in_flight"), ("report lag p50 s", "report_lag_p50"),
    ("p99 s", "report_lag_p99"), ("max s", "report_lag_max"), ("longest takeover s", "takeover_seconds"),
]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):  # takeovers: the longest (a kill not followed by a takeover counts as none)
        if not value:
            return "-"
        return "never" if None in value else f"{max(value):.2f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def table(results: Sequence[FailoverFigures]) -> str:
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        lines.append("| " + " | ".join(_cell(getattr(r, name)) for _, name in COLUMNS) + " |")
    return "\n".join(lines)


def bars_text(checks: Sequence[dict[str, Any]]) -> str:
    word = {True: "met", False: "NOT met", None: "not measured"}
    return "\n".join(f"- {c['bar']}: **{word[c['met']]}** ({json.dumps(c['measured'])})" for c in checks)


def report(results: Sequence[FailoverFigures], config: FailoverConfig, seconds: float,
           command: str) -> dict[str, Any]:
    now = time.gmtime()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", now), "stamp": time.strftime("%Y%m%dT%H%M%SZ", now),
            "command": command, "machine": machine(), "source": source_version(), "config": asdict(config),
            "settings": "kubestream defaults (none overridden)", "seconds": round(seconds, 1),
            "bars": bars(results), "phases": [asdict(r) for r in results]}


def docs_section(data: dict[str, Any], results: Sequence[FailoverFigures], results_path: str) -> str:
    m = data["machine"]
    return (f"{FIGURES_START}\n"
            f"Run of {data['date']} on {m['host']} ({m['cpus']} CPUs, {m['cpu_model'] or 'unknown CPU'}, "
            f"{m['memory_gib']} GiB, Python {m['python']}), source `{data['source'] or 'unknown'}`, "
            f"{data['seconds']:.0f} s in all:\n\n```\n{data['command']}\n```\n\n"
            f"{table(results)}\n\n{bars_text(data['bars'])}\n\n"
            f"Full figures: `{results_path}`.\n{FIGURES_END}")


def update_docs(path: Path, section: str) -> bool:
    """Replace the figures between the markers of ``path``; False if it has no markers (left alone)."""
    try:
        text = path.read_text()
    except OSError:
        return False
    start, end = text.find(FIGURES_START), text.find(FIGURES_END)
    if start < 0 or end < start:
        return False
    path.write_text(text[:start] + section + text[end + len(FIGURES_END):])
    return True


def write_outputs(results: Sequence[FailoverFigures], config: FailoverConfig, seconds: float, command: str,
                  results_path: Path | None = None, docs: Path | None = DOCS) -> Path:
    """The JSON (default ``bench/results/failover-<UTC>.json``) and the figures in ``docs``; the JSON's path."""
    data = report(results, config, seconds, command)
    path = results_path or RESULTS_DIR / f"failover-{data['stamp']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    if docs is not None:
        try:
            shown = str(path.resolve().relative_to(REPO_ROOT))
        except ValueError:
            shown = str(path)
        if not update_docs(docs, docs_section(data, results, shown)):
            print(f"(no figure markers in {docs}: not updated)", file=sys.stderr)
    return path


# -- the command ----------------------------------------------------------------------------------------------


def parse_phases(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PHASES + EXTRA_PHASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown phase(s) {', '.join(unknown) or '(none)'}; "
                                         f"known: {', '.join(PHASES + EXTRA_PHASES)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    d = FailoverConfig()
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--phases", type=parse_phases, default=list(PHASES),
                        help=f"comma-separated, in order: {', '.join(PHASES + EXTRA_PHASES)}")
    parser.add_argument("--tasks", type=int, default=d.tasks, help="tasks per phase")
    parser.add_argument("--pod-seconds", type=float, default=d.pod_seconds, help="each pod runs this long")
    parser.add_argument("--submit-seconds", type=float, default=d.submit_seconds, help="0: all tasks at once")
    parser.add_argument("--launchers", type=int, default=d.launchers)
    parser.add_argument("--concurrency", type=int, default=d.concurrency, help="creates in flight per launcher")
    parser.add_argument("--launcher-kill-every", type=float, default=d.launcher_kill_every)
    parser.add_argument("--watcher-kill-every", type=float, default=d.watcher_kill_every)
    parser.add_argument("--first-kill", type=float, help="seconds after the tasks are queued (default: one interval)")
    parser.add_argument("--drain-timeout", type=float, default=d.drain_timeout,
                        help="after the fault stops, tasks without a final state by then are lost")
    parser.add_argument("--keep-logs", action="store_true", help="keep every phase's component logs")
    parser.add_argument("--max-seconds", type=int, default=900, help="abort (and clean up) after this long")
    parser.add_argument("--results", type=Path, help="JSON output (default bench/results/failover-<UTC time>.json)")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", type=Path, default=DOCS, help="the figures are written between its markers")
    docs.add_argument("--no-docs", dest="docs", action="store_const", const=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    arm_watchdog(args.max_seconds)
    config = FailoverConfig(tasks=args.tasks, pod_seconds=args.pod_seconds, submit_seconds=args.submit_seconds,
                            launchers=args.launchers, concurrency=args.concurrency,
                            launcher_kill_every=args.launcher_kill_every, watcher_kill_every=args.watcher_kill_every,
                            first_kill=args.first_kill,
                            drain_timeout=args.drain_timeout, keep_logs=args.keep_logs)
    command = " ".join([".venv/bin/python -m bench.failover", *(sys.argv[1:] if argv is None else argv)])
    work = Path(tempfile.mkdtemp(prefix="kubestream-failover-"))
    os.environ["AIRFLOW_HOME"] = str(work / "airflow")  # before anything imports airflow
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    started = time.monotonic()
    results: list[FailoverFigures] = []
    try:
        with chaos_servers(work) as servers:
            run_failover(servers, config, args.phases, log=lambda line: print(line, flush=True), results=results)
    finally:
        shield_signals()
        fill_ratios(results)
        if results:
            path = write_outputs(results, config, time.monotonic() - started, command, args.results, args.docs)
            print("\n" + table(results) + "\n\n" + bars_text(bars(results)))
            print(f"\nresults: {path}")
        if any(r.chaos.get("logs") for r in results):
            print(f"logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    broken = [r.phase for r in results if r.broken]
    if broken:
        print(f"tasks lost, duplicated or not measured under: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken or len(results) < len(args.phases) else 0


if __name__ == "__main__":
    sys.exit(main())
