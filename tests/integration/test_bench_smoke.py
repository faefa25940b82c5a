"""The benchmark's phases at a tiny size (a few pods and tasks, no added latency), so that it cannot rot:
each phase runs against the session's cluster and Redis and returns sane figures. No timing is checked."""

from __future__ import annotations

import uuid

import pytest

from bench.pipeline import Namespaces, bench_rig, completions_phase, executor_batch_phase, throughput_phase

pytestmark = pytest.mark.cluster


def test_benchmark_phases_return_sane_figures(local_cluster, cluster, redis_server, tmp_path, monkeypatch) -> None:
    tag = uuid.uuid4().hex[:6]
    namespaces = Namespaces(raw=f"bench-raw-{tag}", launched=f"bench-ks-{tag}", done=f"bench-done-{tag}")
    with bench_rig(local_cluster, cluster, redis_server.url, tmp_path, latency_ms=0, namespaces=namespaces,
                   setenv=monkeypatch.setenv) as rig:
        for proxied in (True, False):
            tp = throughput_phase(rig, proxied=proxied, pods=5, rounds=2, launchers=2, concurrency=2)
            assert tp.pods_created == {"raw": 10, "kubestream": 10}  # every round's pods counted in the namespace
            assert {side: len(rates) for side, rates in tp.rounds_pods_per_s.items()} == {"raw": 2, "kubestream": 2}
            assert all(rate > 0 for rates in tp.rounds_pods_per_s.values() for rate in rates)
            assert tp.raw_client_pods_per_s > 0 and tp.kubestream_pods_per_s > 0 and tp.ratio_kubestream_to_raw > 0
        assert not rig.admin.list_namespaced_pod(namespaces.launched).items  # rounds leave nothing behind

        batch = executor_batch_phase(rig, tasks=20)
        assert batch.batch_tasks == 20 and batch.sync_calls >= 1
        assert batch.cpu_us_per_task_dispatch > 0 and batch.cpu_us_per_task_sync > 0

        done = completions_phase(rig, tasks=4, launchers=1, concurrency=2, timeout=120)
        assert done.tasks == 4 and done.final_states == {"success": 4}
        assert done.seconds_dispatch_to_all_final_in_sync > 0 and done.seconds_dispatch_to_all_pods_created is not None
        assert 0 < done.seconds_dispatch_to_first_final <= done.seconds_dispatch_to_all_final_in_sync
        assert done.sync_calls >= 1 and done.scheduler_cpu_us_per_task > 0

        # the phases stopped what they started: only the latency proxy is left
        assert rig.children.names() == ["proxy"]
