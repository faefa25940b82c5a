"""The metrics docs/operations.md lists are the metrics the components expose, both ways.

A launcher and a watcher run through the CLI with ``KUBESTREAM_METRICS_PORT``; after a few tasks,
``/metrics`` of each is read over HTTP: every ``kubestream_<component>_*`` metric of the doc's tables is
exposed (its ``# TYPE`` line: a labelled metric declares itself before its first sample), and every
``kubestream_*`` metric exposed is in the doc. The executor's Airflow stats are recorded through a
stats backend of the test's own and checked against the doc's executor table the same way.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow._shared.observability.metrics import stats
from airflow._shared.observability.metrics.base_stats_logger import NoStatsLogger

from devkit.procs import free_port, wait_for
from devkit.workloads import sim, workload
from kubestream.executor.executor import STAT

pytestmark = pytest.mark.cluster

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ROW = re.compile(r"^\| `(kubestream[._][a-z0-9_.]+)` \|", re.MULTILINE)
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
SAMPLE = re.compile(r"^(\S+?)(\{[^}]*\})? (\S+)$", re.MULTILINE)

# the executor stats every dispatch-and-sync run emits (the others need adoption, resets, failures)
EXECUTOR_STATS_OF_A_RUN = {"dispatched", "dispatch_batch_duration", "results_per_sync", "results_applied",
                           "result_lag"}


def documented(prefix: str) -> set[str]:
    return {name for name in ROW.findall(DOC.read_text()) if name.startswith(prefix)}


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def exposed(text: str) -> set[str]:
    return {name for name, _ in TYPE_LINE.findall(text) if name.startswith("kubestream_")}


def value(text: str, name: str, labels: str = "") -> float:
    """The sum of ``name``'s samples whose labels contain ``labels`` (e.g. ``outcome="created"``)."""
    return sum(float(v) for n, lab, v in SAMPLE.findall(text) if n == name and labels in (lab or ""))


class RecordingStats:
    """An Airflow stats backend that records the names of what is emitted."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def _record(self, stat: str, *args: Any, **kwargs: Any) -> None:
        self.names.append(stat)

    incr = decr = gauge = timing = _record

    def timer(self, stat: str | None = None, *args: Any, **kwargs: Any) -> Any:
        if stat:
            self.names.append(stat)
        return NoStatsLogger.timer()


@pytest.fixture
def recorded_stats() -> Iterator[RecordingStats]:
    recorder = RecordingStats()
    yield recorder
    stats.initialize(factory=NoStatsLogger, export_legacy_names=False)


def test_documented_metrics_are_the_exposed_ones(pipeline, streams, recorded_stats) -> None:
    launcher_port, watcher_port = free_port(), free_port()
    pipeline.launcher(metrics_port=str(launcher_port))
    pipeline.watcher(metrics_port=str(watcher_port))
    pipeline.wait_serving(streams)
    executor = pipeline.executor  # started: its BaseExecutor set Airflow's stats up; record them from now on
    assert executor is not None
    stats.initialize(factory=lambda: recorded_stats, export_legacy_names=False)

    work = [workload("metrics", f"t{i}", executor_config=sim("exit:3" if i == 0 else "succeed")) for i in range(4)]
    pipeline.submit(work)
    finals = pipeline.run_until([w.ti.key for w in work], timeout=120)
    assert sorted(finals.values()) == ["failed", "success", "success", "success"]

    def launcher_metrics() -> str | None:
        _, text = get(launcher_port, "/metrics")
        created = value(text, "kubestream_launcher_creates_total", 'outcome="created"')
        lag_read = 'kubestream_launcher_stream_lag{queue="default"}' in text
        return text if created == 4 and lag_read else None

    def watcher_metrics() -> str | None:
        _, text = get(watcher_port, "/metrics")
        published = value(text, "kubestream_watcher_published_total", 'state="succeeded"')
        leading = value(text, "kubestream_watcher_lease_holder") == 1
        return text if published == 3 and leading else None

    launcher_text = str(wait_for(launcher_metrics, timeout=30, what="the launcher's metrics to count 4 creates"))
    watcher_text = str(wait_for(watcher_metrics, timeout=30, what="the watcher's metrics to count 3 successes"))
    assert value(watcher_text, "kubestream_watcher_published_total", 'state="failed"') == 1
    assert value(launcher_text, "kubestream_launcher_create_seconds_count") == 4

    for component, text in (("launcher", launcher_text), ("watcher", watcher_text)):
        doc = documented(f"kubestream_{component}_")
        assert doc, f"docs/operations.md has no {component} metrics table"
        shown = exposed(text)
        assert doc - shown == set(), f"documented but not exposed by the {component}"
        assert shown - doc == set(), f"exposed by the {component} but not in docs/operations.md"

    for port in (launcher_port, watcher_port):
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/nothing")[0] == 404

    doc = documented(STAT)
    emitted = {name for name in recorded_stats.names if name.startswith(STAT)}
    assert {STAT + name for name in EXECUTOR_STATS_OF_A_RUN} <= emitted
    assert emitted - doc == set(), "executor stats emitted but not in docs/operations.md"
