"""``python -m bench.chaos`` at CI size: a few cheap faults, one phase each, against the session's cluster and
Redis (shared with other tests: the faults that restart Redis or the apiserver are left to the full run, see
docs/chaos.md). Every promise is asserted: nothing lost, no duplicate pod, no wrong final state, nothing
failed by the fault. The phases wait for conditions (every final state, within generous limits); no timing
is asserted."""

from __future__ import annotations

import json

import pytest

from bench.chaos import ChaosConfig, PhaseFigures, Servers, run_phase, table

pytestmark = pytest.mark.cluster

CI_FAULTS = ("launcher-kill", "watcher-kill", "api-errors")
CONFIG = ChaosConfig(tasks=80, submit_seconds=12.0, launchers=2, concurrency=4, drain_timeout=240.0)


@pytest.mark.parametrize("fault", CI_FAULTS)
def test_nothing_lost_or_duplicated_under(fault, local_cluster, cluster, redis_server, tmp_path, monkeypatch) -> None:
    servers = Servers(local_cluster, cluster, redis_server.url, None, tmp_path, monkeypatch.setenv)
    figures: PhaseFigures = run_phase(servers, fault, CONFIG, log=print)
    print(table([figures]))
    detail = json.dumps({"errors": figures.errors, "details": figures.details, "strikes": figures.strike_log,
                         "logs": figures.logs}, indent=1, default=str)[:6000]
    assert not figures.errors, detail
    assert figures.strikes >= CONFIG.min_strikes, detail
    assert figures.tasks_submitted == CONFIG.tasks
    assert figures.tasks_lost == 0, detail
    assert figures.duplicate_pods == 0, detail
    assert figures.wrong_states == 0, detail
    assert figures.failed_by_fault == 0, detail
    assert figures.duplicate_final_states == 0, detail
    assert figures.pods_created == CONFIG.tasks, detail  # one pod per task, none missing
    # every 3rd task's pod exits 1: the executor says so, and nothing else
    assert figures.final_states == {"success": CONFIG.tasks - CONFIG.tasks // 3, "failed": CONFIG.tasks // 3}, detail
