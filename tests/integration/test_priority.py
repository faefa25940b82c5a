"""Priority-aware launch: when launches back up, pods are created in Airflow's priority_weight order
across the whole backlog of a queue (priority bands, read highest first), not first in, first out."""

from __future__ import annotations

import pytest

from devkit.podwatch import PodLedger
from devkit.procs import wait_for
from devkit.workloads import pod_name, workload
from kubestream.settings import Settings

pytestmark = pytest.mark.cluster


def test_a_backlog_is_launched_in_priority_order_across_the_whole_queue(pipeline, admin_api, namespace,
                                                                          settings: Settings) -> None:
    assert settings.priority_bands == (100, 10)  # the suite's settings: three bands
    weights = [(i * 37) % 150 for i in range(60)]  # 0..149, interleaved in dispatch order
    work = [workload("priority", f"t{i:02d}", priority_weight=w) for i, w in enumerate(weights)]
    band = {pod_name(w): settings.band_for(w.ti.priority_weight) for w in work}
    ledger = PodLedger(admin_api, namespace).start()
    try:
        pipeline.submit(work)  # the whole backlog is queued before a launcher serves it
        pipeline.launcher(launch_concurrency="2", create_rate="20", create_burst="1")
        wait_for(lambda: {r.name for r in ledger.records()} >= set(band), timeout=120, what="every pod created")
        order = [r.name for r in sorted(ledger.records(), key=lambda r: r.seen_at) if r.name in band]
    finally:
        ledger.stop()
    ranks = {b: [i for i, name in enumerate(order) if band[name] == b] for b in (0, 1, None)}
    assert all(ranks.values()), ranks  # every band had tasks
    # every pod of a higher band was created before any pod of a lower one (FIFO would interleave them),
    # but for the batch in hand where one band runs out and the next begins (up to 2 x launch_concurrency)
    in_hand = 2 * 2
    assert max(ranks[0]) < min(ranks[1]) + in_hand and max(ranks[1]) < min(ranks[None]) + in_hand, order
    assert sum(ranks[0]) / len(ranks[0]) < sum(ranks[1]) / len(ranks[1]) < sum(ranks[None]) / len(ranks[None])
