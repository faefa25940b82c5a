"""bench.priority's phases at a tiny size (no timing is asserted: the figures are the benchmark's)."""

from __future__ import annotations

import uuid

import pytest

from bench.pipeline import Namespaces, bench_rig
from bench.priority import run_phase, table, weights

pytestmark = pytest.mark.cluster


def test_the_priority_benchmark_phases_return_their_figures(local_cluster, cluster, redis_server, tmp_path,
                                                            monkeypatch) -> None:
    tag = uuid.uuid4().hex[:6]
    namespaces = Namespaces(raw=f"prio-raw-{tag}", launched=f"prio-ks-{tag}", done=f"prio-done-{tag}")
    task_weights = weights(40)
    assert sorted(task_weights) == [1 + i * 1000 // 40 for i in range(40)]
    with bench_rig(local_cluster, cluster, redis_server.url, tmp_path, latency_ms=0, namespaces=namespaces,
                   setenv=monkeypatch.setenv) as rig:
        phases = [run_phase(rig, name, bands, task_weights, create_rate=40, launchers=1, concurrency=4, batch=10,
                            batch_interval=0.05) for name, bands in (("fifo", ""), ("bands", "900,500,100"))]
        assert not rig.admin.list_namespaced_pod(namespaces.launched).items  # each phase leaves nothing behind
    assert [(p.name, p.tasks) for p in phases] == [("fifo", 40), ("bands", 40)]
    assert all(p.bottom_over_top > 0 and p.seconds_to_all_created > 0 for p in phases)
    assert "| bands | 900,500,100 | 40 |" in table(phases)
