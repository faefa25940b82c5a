"""``python -m bench.failover`` at a tiny size (12 tasks, pods of 0.3 s, 2 kills per fault phase) against the
session's cluster and Redis, so that it cannot rot: every phase runs, returns figures of the right shape,
loses nothing and duplicates no pod; the outputs (JSON, the docs' figures) are written. No timing is asserted."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench.chaos import Servers, TaskRun
from bench.failover import (
    FIGURES_END,
    FIGURES_START,
    PHASES,
    FailoverConfig,
    percentile,
    report_lags,
    run_failover,
    table,
    write_outputs,
)
from devkit.podwatch import PodRecord

CONFIG = FailoverConfig(tasks=12, pod_seconds=0.3, submit_seconds=2.0, launchers=2, concurrency=4,
                        launcher_kill_every=2.0, watcher_kill_every=1.5, min_kills=2, fault_window_max=120.0,
                        drain_timeout=180.0)


@pytest.mark.cluster
def test_every_phase_measured_nothing_lost(local_cluster, cluster, redis_server, tmp_path, monkeypatch) -> None:
    servers = Servers(local_cluster, cluster, redis_server.url, None, tmp_path, monkeypatch.setenv)
    results = run_failover(servers, CONFIG, PHASES, log=print)
    print(table(results))
    detail = json.dumps([{"phase": r.phase, "errors": r.errors, "details": r.chaos.get("details"),
                          "strikes": r.chaos.get("strike_log"), "logs": r.chaos.get("logs")} for r in results],
                        indent=1, default=str)[:8000]
    assert [r.phase for r in results] == list(PHASES)
    by = {r.phase: r for r in results}
    for r in results:
        assert not r.errors, detail
        assert (r.tasks, r.pods_created, r.tasks_lost, r.duplicate_pods) == (12, 12, 0, 0), detail
        assert r.wrong_states == 0 and r.duplicate_final_states == 0, detail
        assert r.seconds_to_drain is not None and r.drain_ratio is not None, detail
        assert r.report_lags == 12, detail  # every task: its pod seen finished, its final state out of sync()
        assert r.report_lag_p50 is not None and r.report_lag_p99 is not None and r.report_lag_max is not None
        assert r.report_lag_p50 <= r.report_lag_p99 <= r.report_lag_max
        assert r.chaos["final_states"] == {"success": 12}, detail
    assert by["none"].kills == 0 and by["none"].drain_ratio == 1.0
    lk, wk = by["launcher-kill"], by["watcher-kill"]
    assert lk.kills >= CONFIG.min_kills and 0 <= lk.kills_in_flight <= lk.kills, detail
    # a killed launcher comes back under its own name: only the first launchers' names are ever killed
    killed = {s["what"].split()[2].rstrip(",") for s in lk.chaos["strike_log"]}
    assert killed and killed <= {"launcher-0", "launcher-1"}, detail
    # each kill of the watcher hit the lease holder (the first strike always finds one: a watcher leads once
    # the phase serves), a strike finding no new leader killed nothing; each takeover was timed (None: never)
    assert len(wk.chaos["strike_log"]) >= CONFIG.min_kills and wk.kills >= 1, detail
    assert len(wk.takeover_seconds) == wk.kills and 0 <= wk.kills_in_flight <= wk.kills, detail
    assert all("(leading, lease epoch" in s["what"] or s["what"].startswith("no leader")
               for s in wk.chaos["strike_log"]), detail
    assert wk.kills == sum("(leading, lease epoch" in s["what"] for s in wk.chaos["strike_log"]), detail

    docs = tmp_path / "failover.md"
    docs.write_text(f"# Failover\n\n{FIGURES_START}\nold figures\n{FIGURES_END}\n\nafter\n")
    path = write_outputs(results, CONFIG, 1.0, "python -m bench.failover --tasks 12", tmp_path / "out.json", docs)
    data = json.loads(path.read_text())
    assert [p["phase"] for p in data["phases"]] == list(PHASES)
    assert len(data["bars"]) == 2 and all(b["met"] is not None for b in data["bars"])  # both bars evaluated
    assert data["settings"].startswith("kubestream defaults") and data["machine"]["cpus"]
    text = docs.read_text()
    assert "old figures" not in text and text.endswith("after\n") and table(results) in text


class _Ledger:
    def __init__(self, records: dict[str, list[PodRecord]]) -> None:
        self._records = records

    def records(self, name: str) -> list[PodRecord]:
        return self._records.get(name, [])


def test_report_lag_is_pod_finished_to_final_event() -> None:
    def run(task: str, final_at: list[float]) -> TaskRun:
        work = SimpleNamespace(ti=SimpleNamespace(external_executor_id=f"d-{task}"))
        return TaskRun(task, "rule", "success", work, f"pod-{task}", finals=[("success", "")] * len(final_at),
                       final_at=final_at)

    def pod(task: str, dispatch: str, finished_at: float | None) -> PodRecord:
        return PodRecord(f"pod-{task}", f"uid-{task}-{dispatch}", dispatch, 0.0, {"Succeeded"}, finished_at)

    ledger = _Ledger({
        "pod-a": [pod("a", "d-a", 10.0)],
        "pod-b": [pod("b", "old", 1.0), pod("b", "d-b", 20.0)],  # only the pod of the task's dispatch counts
        "pod-c": [pod("c", "d-c", None)],  # never seen finished: no lag
    })
    runs = [run("a", [10.5, 11.0]), run("b", [23.0]), run("c", [5.0]), run("lost", [])]
    assert report_lags(runs, ledger) == [0.5, 3.0]  # type: ignore[arg-type]
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([1.0, 2.0], 99) == 2.0
    assert percentile([], 50) is None
