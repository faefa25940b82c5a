"""bench.scale (N tasks queued at once; the dispatch path alone) end to end at a tiny size, so that it cannot
rot. It runs as the command users run, in a subprocess: it migrates its own Airflow metadata DB and starts its
own cluster, Redis and PostgreSQL. Figures are checked for structure and for no lost task, never for speed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devkit.components import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

TASKS = 30


def test_scale_benchmark_runs_both_phases_and_loses_nothing(tmp_path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--tasks", str(TASKS), "--latency-ms", "0", "--launchers", "2",
         "--concurrency", "4", "--noop-consumers", "1", "--cap-seconds", "120", "--max-seconds", "420",
         "--out", str(out), "--no-docs"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [path] = out.glob("scale-*.json")
    doc = json.loads(path.read_text())
    assert (doc["benchmark"], doc["tasks"], doc["launchers"]) == ("scale", TASKS, 2)

    scale = doc["scale"]
    # every task went through a pod the simulated kubelet completed, and its final event came back
    assert (scale["tasks_terminal"], scale["lost"], scale["final_states"], scale["capped"]) == \
        (TASKS, 0, {"success": TASKS}, False)
    assert scale["pods_created"] == TASKS and scale["pods_seen"] >= TASKS
    assert scale["seconds_to_all_created"] is not None and scale["seconds_to_all_terminal"] is not None
    assert scale["heartbeats"] >= 2 and scale["heartbeat_ms_max"] >= scale["heartbeat_ms_p99"] > 0
    assert scale["redis_used_memory_mb"]["peak"] > 0
    sync = scale["sync_with_all_running"]
    assert sync["dispatched_by_first_heartbeat"] == TASKS  # the first heartbeat dispatched every task
    assert len(sync["sync_ms"]) == len(sync["sync_cpu_ms"]) == len(sync["sync_results_applied"]) == 3
    assert len(sync["running_walk_ms"]) == 5

    dispatch = doc["dispatch"]
    assert (dispatch["tasks_terminal"], dispatch["lost"], dispatch["final_states"], dispatch["capped"]) == \
        (TASKS, 0, {"success": TASKS}, False)
    assert dispatch["tasks_per_s"] > 0 and dispatch["loop_iterations"] >= 1
    assert set(dispatch["helper_cpu_ms_per_task"]) == {"noop-0", "redis-server"}
    assert dispatch["gc_ms"] >= 0
    assert (dispatch["dispatch_chunk"], dispatch["result_slice"], dispatch["sync_batch"]) == (250, 250, 2000)

    assert f"| tasks final / lost | {TASKS} / 0" in proc.stdout  # the Markdown table
    assert "logs kept in" not in proc.stderr
