"""bench.versus (kubestream beside the KubernetesExecutor) end to end at a tiny size, so that it cannot
rot. It runs as the command users run, in a subprocess: it migrates its own Airflow metadata DB and
starts its own cluster, Redis and PostgreSQL. Figures are checked for sanity, never for speed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devkit.components import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

LATENCIES = (0.0, 20.0)
CONFIGS = ("kubestream 1 launcher", "kubestream 2 launchers", "KubernetesExecutor default",
           "KubernetesExecutor best")


def test_versus_runs_every_configuration_at_each_latency(tmp_path) -> None:
    out, images = tmp_path / "results", tmp_path / "img"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.versus", "--tasks", "4", "--latencies", ",".join(map(str, LATENCIES)),
         "--launchers", "1,2", "--concurrency", "4", "--equal-rounds", "2", "--equal-pods", "6",
         "--cap-seconds", "90", "--max-seconds", "540",
         "--out", str(out), "--images", str(images), "--no-docs"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [path] = out.glob("versus-*.json")
    doc = json.loads(path.read_text())

    assert {c["latency_ms"] for c in doc["raw_ceiling"]} == set(LATENCIES)
    assert all(c["pods_per_s"] > 0 and c["threads"] == 8 for c in doc["raw_ceiling"])
    # launchers against the raw client with as many creates in flight: through the proxy at each latency,
    # directly too at 0 ms; every round created all its pods (a short round fails the run)
    assert sorted((e["latency_ms"], e["via"], e["launchers"], e["in_flight"]) for e in doc["equal_concurrency"]) == \
        sorted([(0.0, "direct", 1, 4), (0.0, "direct", 2, 8)]
               + [(latency, "proxy", n, 4 * n) for latency in LATENCIES for n in (1, 2)])
    for e in doc["equal_concurrency"]:
        assert e["raw_pods_per_s"] > 0 and e["launchers_pods_per_s"] > 0, e
        assert e["ratio"] == pytest.approx(e["launchers_pods_per_s"] / e["raw_pods_per_s"], rel=0.01), e
        assert [len(r) for r in e["rounds_pods_per_s"].values()] == [2, 2], e
    assert sorted((r["latency_ms"], r["config"]) for r in doc["results"]) == \
        sorted((latency, config) for latency in LATENCIES for config in CONFIGS)
    for r in doc["results"]:
        what = f"{r['config']} at {r['latency_ms']} ms"
        # every task of both executors went through a pod the simulated kubelet completed, and came back
        assert (r["tasks_terminal"], r["final_states"], r["capped"]) == (4, {"success": 4}, False), what
        assert r["pods_created"] == 4 and r["pods_per_s"] > 0, what
        assert r["report_lag_ms_p50"] is not None and r["kubelet_ms_p50"] is not None, what
        assert r["heartbeats"] >= 1 and r["heartbeat_ms_max"] >= r["heartbeat_ms_p99"] > 0, what
        assert r["scheduler_cpu_ms_per_task"] > 0 and r["total_cpu_ms_per_task"] > 0, what
        assert r["peak_rss_mb"]["scheduler"] and r["pss_mb"]["scheduler"], what
        helpers = set(r["helper_cpu_ms_per_task"])
        if r["executor"] == "kubestream":
            assert {"watcher", "redis-server", "launcher-0"} <= helpers and r["redis_used_memory_mb"], what
        else:
            assert "watcher-versus" in helpers and r["redis_used_memory_mb"] is None, what
    best = [r for r in doc["results"] if r["config"] == "KubernetesExecutor best"]
    assert all(r["settings"]["worker_pods_creation_batch_size"] == 4 for r in best)

    assert sorted(p.name for p in images.glob("*.png")) == \
        ["versus-heartbeat.png", "versus-scheduler-cpu.png", "versus-throughput.png"]
    assert "| 20 ms | kubestream 2 launchers |" in proc.stdout  # the Markdown tables
    assert "| 20 ms | proxy | 2 x 4 |" in proc.stdout and "| 0 ms | direct | 1 x 4 |" in proc.stdout
    assert "logs kept in" not in proc.stderr
