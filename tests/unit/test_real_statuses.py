"""The classifier over pod status sequences a REAL kubelet produced, and the simulated kubelet beside it.

``tests/fixtures/realnode/<case>.json`` are watch events recorded on a real node (kubelet v1.20 +
Docker, ``python -m devkit.record_statuses``). For every case:

- the watcher's classification (``classify_pod``, event by event, as the watcher sees them) ends in
  the state and reason the KubernetesExecutor would give, and never contradicts a final state;
- the simulated kubelet's rules (``devkit.kubelet_rules``, driven purely here) for the same case
  end in the same state and reason, and pass through every state the real kubelet showed, so the
  simulation the rest of the tests rely on cannot drift from a real kubelet unnoticed.

No servers: the sequences are files.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from devkit import kubelet_rules as kr
from devkit.record_statuses import CASES, MISSING_IMAGE, trim_event
from kubestream.messages import TaskState
from kubestream.settings import DEFAULT_FATAL_REASONS
from kubestream.watcher.classify import classify_pod

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "realnode"
NODE = "127.0.0.1"
NOW = "2026-01-01T00:00:00Z"
# the real node's operators add ErrImageNeverPull (never a transient state with imagePullPolicy Never)
NEVER_PULL_FATAL = (*DEFAULT_FATAL_REASONS, "ErrImageNeverPull")
NEVER_PULL_MESSAGE = f'ErrImageNeverPull: Container image "{MISSING_IMAGE}" is not present with pull policy of Never'

# case -> (fatal reasons, expected final (state, reason), simulated kubelet rule,
#          None or (when the recording deleted the pod, with which grace period))
Delete = tuple[Callable[[dict[str, Any]], bool], int]
Expect = tuple[Collection[str], tuple[TaskState, str], str, Delete | None]


def _running(pod: dict[str, Any]) -> bool:
    return any("running" in (cs.get("state") or {}) for cs in pod["status"].get("containerStatuses") or ())


def _restarted(pod: dict[str, Any]) -> bool:
    return any(int(cs.get("restartCount") or 0) >= 1 for cs in pod["status"].get("containerStatuses") or ())


EXPECTED: dict[str, Expect] = {
    "exit0": (DEFAULT_FATAL_REASONS, (TaskState.SUCCEEDED, ""), "succeed", None),
    "exit3": (DEFAULT_FATAL_REASONS, (TaskState.FAILED, "Error (exit code 3)"), "exit:3", None),
    "oomkilled": (DEFAULT_FATAL_REASONS, (TaskState.FAILED, "OOMKilled (exit code 137)"), "oomkilled", None),
    "err-image-never-pull": (NEVER_PULL_FATAL, (TaskState.FAILED, NEVER_PULL_MESSAGE), "errimagepull", None),
    # a graceful delete: the kubelet stops the container (SIGTERM, exit 143) and reports phase Failed before
    # the DELETED event; the KubernetesExecutor fails the task on that Failed phase with the container's exit
    "deleted-while-running": (DEFAULT_FATAL_REASONS, (TaskState.FAILED, "Error (exit code 143)"), "run",
                              (_running, 2)),
    "restart-on-failure": (DEFAULT_FATAL_REASONS, (TaskState.FAILED, "pod deleted while Running"),
                           "crashloop:code=3", (_restarted, 0)),
}


def load(case: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / f"{case}.json").read_text())
    return doc


def classify_sequence(events: list[dict[str, Any]], fatal: Collection[str]) -> list[tuple[TaskState, str]]:
    """What the watcher would publish, in order: each classification that differs from the previous one."""
    out: list[tuple[TaskState, str]] = []
    for event in events:
        result = classify_pod(event["object"], event["type"], fatal)
        if result is not None and (not out or out[-1] != result):
            out.append(result)
    return out


def final_of(states: list[tuple[TaskState, str]]) -> tuple[TaskState, str]:
    """The first final state (what the executor acts on), else the last state seen."""
    return next((s for s in states if s[0].final), states[-1])


def simulate(first: dict[str, Any], rule_text: str, delete: Delete | None) -> list[dict[str, Any]]:
    """The watch events the simulated kubelet's rules give for the pod of ``first`` (its ADDED event)."""
    rule = kr.parse_rule(rule_text)
    pod = copy.deepcopy(first["object"])
    pod["status"] = {"phase": "Pending"}
    events = [{"type": "ADDED", "object": copy.deepcopy(pod)}]
    for _ in range(20):
        step = kr.plan(pod, NODE, rule)
        if step is None:
            break
        if step.action == "delete":
            events.append({"type": "DELETED", "object": copy.deepcopy(pod)})
            break
        pod["status"] = {**pod["status"], **kr.status_for(step, pod, NOW, host_ip=NODE, pod_ip=NODE)}
        events.append({"type": "MODIFIED", "object": copy.deepcopy(pod)})
        if delete and delete[0](pod) and not pod["metadata"].get("deletionTimestamp"):
            pod["metadata"] |= {"deletionTimestamp": NOW, "deletionGracePeriodSeconds": delete[1]}
            events.append({"type": "MODIFIED", "object": copy.deepcopy(pod)})
    return events


def test_every_fixture_has_an_expectation_and_a_recording_case() -> None:
    recorded = {p.stem for p in FIXTURES.glob("*.json")}
    assert recorded == set(EXPECTED) == {c.name for c in CASES}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_fixture_is_a_real_trimmed_recording(case: str) -> None:
    doc = load(case)
    assert doc["case"] == case
    assert doc["recorded_with"]["kubelet"].startswith("v1.20")
    assert doc["recorded_with"]["container_runtime"].startswith("docker://")
    events = doc["events"]
    assert events[0]["type"] == "ADDED" and len(events) >= 2
    assert all(trim_event(e) == e for e in events)  # nothing volatile left to trim
    assert all(e["object"]["spec"]["nodeName"] == NODE for e in events)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_real_sequence_classifies_like_the_kubernetes_executor(case: str) -> None:
    fatal, expected, _, _ = EXPECTED[case]
    states = classify_sequence(load(case)["events"], fatal)
    assert final_of(states) == expected, states
    first_final = next((i for i, s in enumerate(states) if s[0].final), len(states))
    assert all(s == states[first_final] for s in states[first_final:]), f"a final state contradicted: {states}"


def test_never_pull_is_pending_with_the_default_fatal_reasons() -> None:
    # as the KubernetesExecutor's default worker_pod_pending_fatal_container_state_reasons: it stays
    # Pending (until a pending timeout); the real node's settings add ErrImageNeverPull
    states = classify_sequence(load("err-image-never-pull")["events"], DEFAULT_FATAL_REASONS)
    assert {s for s, _ in states} == {TaskState.PENDING}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_simulated_kubelet_agrees_with_the_real_one(case: str) -> None:
    fatal, expected, rule, delete = EXPECTED[case]
    real_events = load(case)["events"]
    real = classify_sequence(real_events, fatal)
    sim = classify_sequence(simulate(real_events[0], rule, delete), fatal)
    if case == "err-image-never-pull":
        # no rule simulates a missing image under Never: its nearest, errimagepull, fails the same way
        assert final_of(sim)[0] == final_of(real)[0] == TaskState.FAILED
        assert final_of(sim)[1].startswith("ErrImagePull: ")
    else:
        assert final_of(sim) == final_of(real) == expected
    missing = {s for s, _ in real} - {s for s, _ in sim}
    assert not missing, f"the real kubelet went through {missing}, the simulated one never does: {real} / {sim}"


@pytest.mark.parametrize("case", ["exit3", "oomkilled"])
def test_real_terminated_status_matches_the_simulated_fields(case: str) -> None:
    # the fields the classifier reads are where the simulated kubelet puts them
    _, _, rule, _ = EXPECTED[case]
    real_events = load(case)["events"]
    last_real = real_events[-1]["object"]["status"]
    last_sim = simulate(real_events[0], rule, None)[-1]["object"]["status"]
    for status in (last_real, last_sim):
        assert status["phase"] == "Failed"
    term_real = last_real["containerStatuses"][0]["state"]["terminated"]
    term_sim = last_sim["containerStatuses"][0]["state"]["terminated"]
    assert (term_real["exitCode"], term_real["reason"]) == (term_sim["exitCode"], term_sim["reason"])
