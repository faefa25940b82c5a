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


class _Ledger:
    """What the apiserver saw, written down by hand."""

    def __init__(self, pods: dict[str, list[tuple[str, str | None]]]) -> None:
        self.pods = pods  # pod name -> [(dispatch, outcome)] per pod object

    def creations(self):
        from collections import Counter

        return Counter((name, d) for name, objs in self.pods.items() for d, _ in objs)

    def outcome(self, name):
        done = [o for _, o in self.pods.get(name, []) if o]
        return done[-1] if done else None

    def records(self, name):
        return []


class _Streams:
    def task(self, pod):
        return {"state": "running"}


def test_the_figures_count_what_they_say() -> None:
    """The tally can fail: each kind of broken promise lands in its own figure, with the task named."""
    from types import SimpleNamespace

    from bench.chaos import TaskRun, _tally

    def run(task: str, expected: str, finals: list[tuple[str, str]]) -> TaskRun:
        work = SimpleNamespace(ti=SimpleNamespace(external_executor_id=f"d-{task}"))
        return TaskRun(task, "rule", expected, work, f"pod-{task}", finals=finals)

    runs = [
        run("ok", "success", [("success", "")]),
        run("exit1", "failed", [("failed", "Error (exit code 1)")]),
        run("lost", "success", []),
        run("twice", "success", [("success", ""), ("success", "")]),
        run("faulted", "success", [("failed", "pod deleted while running")]),
        run("nopod", "success", [("success", "")]),  # success, yet no pod of it ever finished
        run("deadletter", "success", [("failed", "dead-lettered")]),  # failed without a pod
        run("dup", "success", [("success", "")]),
    ]
    ledger = _Ledger({
        "pod-ok": [("d-ok", "success")], "pod-exit1": [("d-exit1", "failed")], "pod-lost": [("d-lost", None)],
        "pod-twice": [("d-twice", "success")], "pod-faulted": [("d-faulted", "success")],
        "pod-dup": [("d-dup", "success"), ("d-dup", "success")], "pod-elsewhere": [("x", "success")],
    })
    figures = PhaseFigures(fault="synthetic")
    _tally(figures, runs, ledger, _Streams())
    assert (figures.tasks_submitted, figures.pods_created, figures.duplicate_pods) == (8, 7, 1)
    assert [r["task"] for r in figures.details["lost"]] == ["lost"]
    assert [r["task"] for r in figures.details["wrong_states"]] == ["faulted", "nopod"]
    assert [r["task"] for r in figures.details["failed_by_fault"]] == ["faulted", "deadletter"]
    assert [r["task"] for r in figures.details["duplicate_final_states"]] == ["twice"]
    assert figures.details["duplicate_pods"] == [{"pod": "pod-dup", "dispatch": "d-dup", "pod_objects": 2}]
    assert (figures.tasks_lost, figures.wrong_states, figures.failed_by_fault, figures.duplicate_final_states) == \
        (1, 2, 2, 1)
    assert figures.final_states == {"success": 4, "failed": 3} and figures.broken


def test_the_pod_ledger_sees_every_pod_object(admin_api, namespace) -> None:
    """Against the real apiserver: a pod deleted and created again under its name and dispatch is two pod
    objects (a duplicate); what the newest one did is its outcome; catch_up() returns with every change in."""
    from devkit.podwatch import PodLedger
    from kubestream.kubeapi import MERGE_PATCH, PodApi, pods_path, request
    from kubestream.taskkey import DISPATCH_ANNOTATION

    pods = PodApi(admin_api)

    def create(name: str, dispatch: str) -> str:
        pod = pods.create(namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "annotations": {DISPATCH_ANNOTATION: dispatch}},
            "spec": {"nodeName": "nowhere", "containers": [{"name": "c", "image": "x"}]}})
        return str(pod["metadata"]["uid"])

    def finish(name: str, phase: str) -> None:
        request(admin_api, "PATCH", pods_path(namespace, name) + "/status", {"status": {"phase": phase}},
                content_type=MERGE_PATCH)

    ledger = PodLedger(admin_api, namespace).start()
    try:
        create("twice", "d1")
        finish("twice", "Failed")
        assert ledger.catch_up() and ledger.outcome("twice") == "failed"
        pods.delete(namespace, "twice", grace_period_seconds=0)
        create("twice", "d1")
        create("once", "d2")
        finish("twice", "Succeeded")
        assert ledger.catch_up()
        assert ledger.creations() == {("twice", "d1"): 2, ("once", "d2"): 1}  # the sentinel is not counted
        assert ledger.outcome("twice") == "success" and ledger.outcome("once") is None
        assert ledger.started("twice", "d1") and not ledger.started("once", "d2")
    finally:
        ledger.stop()
