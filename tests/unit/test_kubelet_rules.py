"""The simulated kubelet's pure half: rule grammar, level-triggered plan, status payloads."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from devkit.kubelet_rules import (
    BACKOFF,
    CREATE_DELAY,
    PULL_RETRY,
    RUN_DELAY,
    SLOWSTART_DELAY,
    Proc,
    Rule,
    Step,
    container_argv,
    container_env,
    node_object,
    parse_rule,
    plan,
    status_crashloop,
    status_for,
    status_running,
    status_terminated,
    status_waiting,
)

NOW = "2024-05-01T12:00:00Z"
LATER = "2024-05-01T12:00:07Z"
NODE = "n1"


@pytest.mark.parametrize(("text", "expected"), [
    ("succeed", Rule("succeed")),
    ("  Succeed ", Rule("succeed")),
    ("succeed:delay=2.5", Rule("succeed", run_delay=2.5)),
    ("succeed:delay=1,jitter=0.5", Rule("succeed", run_delay=1.0, jitter=0.5)),
    ("succeed: delay = 1 , jitter = 0", Rule("succeed", run_delay=1.0)),
    ("run", Rule("run", run_delay=None)),
    ("run:delay=4", Rule("run", run_delay=4.0)),
    ("exit:3", Rule("exit", exit_code=3)),
    ("exit:code=3,delay=0", Rule("exit", exit_code=3, run_delay=0.0)),
    ("exit:0", Rule("exit", exit_code=0)),
    ("exit:255", Rule("exit", exit_code=255)),
    ("oomkilled", Rule("oomkilled", exit_code=137)),
    ("oomkilled:delay=0.3", Rule("oomkilled", exit_code=137, run_delay=0.3)),
    ("crashloop", Rule("crashloop", exit_code=1)),
    ("crashloop:code=2,backoff=1,delay=0.5", Rule("crashloop", exit_code=2, backoff=1.0, run_delay=0.5)),
    ("slowstart", Rule("slowstart", create_delay=SLOWSTART_DELAY)),
    ("slowstart:delay=10", Rule("slowstart", create_delay=10.0)),
    ("errimagepull", Rule("errimagepull")),
    ("errimagepull:delay=0.5,backoff=3", Rule("errimagepull", create_delay=0.5, backoff=3.0)),
    ("createcontainerconfigerror", Rule("createcontainerconfigerror")),
    ("createcontainerconfigerror:delay=1", Rule("createcontainerconfigerror", create_delay=1.0)),
])
def test_parse_rule(text: str, expected: Rule) -> None:
    assert parse_rule(text) == expected


@pytest.mark.parametrize(("text", "match"), [
    ("", "unknown rule"),
    ("explode", "unknown rule"),
    ("succeed:", "bad parameter"),
    ("succeed:delay", "bad parameter"),
    ("succeed:delay=", "not a number"),
    ("succeed:delay=abc", "not a number"),
    ("succeed:delay=-1", ">= 0"),
    ("succeed:delay=nan", ">= 0"),
    ("succeed:delay=inf", ">= 0"),
    ("succeed:delay=1,delay=2", "twice"),
    ("succeed:code=3", "takes no 'code'"),
    ("succeed:backoff=1", "takes no 'backoff'"),
    ("succeed:delay=1,,jitter=1", "bad parameter"),
    ("exit", "needs a code"),
    ("exit:delay=1", "needs a code"),
    ("exit:x", "not an integer"),
    ("exit:3.5", "not an integer"),
    ("exit:256", "outside 0..255"),
    ("exit:-1", "outside 0..255"),
    ("exit:3,code=4", "twice"),
    ("exit:delay=1,3", "bad parameter"),
    ("run:7", "bad parameter"),
    ("oomkilled:code=1", "takes no 'code'"),
])
def test_parse_rule_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_rule(text)


def test_rule_is_frozen_and_defaults_are_fast() -> None:
    rule = parse_rule("succeed")
    with pytest.raises(AttributeError):
        rule.kind = "exit"  # type: ignore[misc]
    assert max(CREATE_DELAY, RUN_DELAY, BACKOFF) <= 0.2


# -- plan ----------------------------------------------------------------------------------------


def pod(*, node: str = NODE, restart_policy: str = "Never", deleting: bool = False, **status: Any) -> dict:
    meta: dict[str, Any] = {"name": "p", "namespace": "ns", "uid": "u1"}
    if deleting:
        meta |= {"deletionTimestamp": NOW, "deletionGracePeriodSeconds": 30}
    return {"metadata": meta,
            "spec": {"nodeName": node, "restartPolicy": restart_policy,
                     "containers": [{"name": "base", "image": "busybox:1"}, {"name": "side", "image": "nginx"}]},
            "status": {"phase": "Pending"} | status}


def with_state(p: dict, state: dict, restarts: int = 0, phase: str = "Pending") -> dict:
    p = copy.deepcopy(p)
    p["status"] = {"phase": phase, "containerStatuses": [
        {"name": "side", "state": {"running": {}}}, {"name": "base", "state": state, "restartCount": restarts}]}
    return p


CREATING = {"waiting": {"reason": "ContainerCreating"}}
RUNNING = {"running": {"startedAt": NOW}}


@pytest.mark.parametrize(("p", "rule", "token", "action", "extra"), [
    (pod(node=""), "succeed", "bind", "bind", {}),
    (pod(node="other"), "succeed", None, None, {}),
    (pod(node="", deleting=True), "succeed", None, None, {}),
    (pod(deleting=True), "succeed", "delete", "delete", {}),
    (with_state(pod(deleting=True), RUNNING, phase="Running"), "run", "delete:stopped", "finish",
     {"exit_code": 143, "reason": "Error"}),
    (pod(), "succeed", "create", "create", {}),
    (pod(phase="Succeeded"), "succeed", None, None, {}),
    (with_state(pod(), CREATING), "succeed", "start", "start", {"delay": CREATE_DELAY}),
    (with_state(pod(), CREATING), "slowstart:delay=10", "start", "start", {"delay": 10.0}),
    (with_state(pod(), CREATING), "errimagepull", "pull", "waiting", {"reason": "ErrImagePull"}),
    (with_state(pod(), {"waiting": {"reason": "ErrImagePull"}}), "errimagepull:backoff=3", "pullbackoff", "waiting",
     {"reason": "ImagePullBackOff", "delay": 3.0}),
    (with_state(pod(), {"waiting": {"reason": "ImagePullBackOff"}}), "errimagepull", "repull", "waiting",
     {"reason": "ErrImagePull", "delay": PULL_RETRY}),
    (with_state(pod(), CREATING), "createcontainerconfigerror", "config", "waiting",
     {"reason": "CreateContainerConfigError"}),
    (with_state(pod(), {"waiting": {"reason": "CreateContainerConfigError"}}), "createcontainerconfigerror",
     None, None, {}),
    (with_state(pod(), RUNNING, phase="Running"), "succeed:delay=2,jitter=1", "finish#0", "finish",
     {"delay": 2.0, "jitter": 1.0, "exit_code": 0, "reason": "Completed"}),
    (with_state(pod(), RUNNING, phase="Running"), "run", None, None, {}),
    (with_state(pod(), RUNNING, phase="Running"), "exit:3", "finish#0", "finish", {"exit_code": 3, "reason": "Error"}),
    (with_state(pod(), RUNNING, phase="Running"), "exit:0", "finish#0", "finish",
     {"exit_code": 0, "reason": "Completed"}),
    (with_state(pod(), RUNNING, phase="Running"), "oomkilled", "finish#0", "finish",
     {"exit_code": 137, "reason": "OOMKilled"}),
    (with_state(pod(), RUNNING, phase="Running"), "crashloop", "finish#0", "finish", {"exit_code": 1}),
    (with_state(pod(restart_policy="Always"), RUNNING, 2, "Running"), "crashloop", "finish#2", "crash",
     {"exit_code": 1}),
    (with_state(pod(restart_policy="OnFailure"), RUNNING, 0, "Running"), "crashloop", "finish#0", "crash", {}),
    (with_state(pod(restart_policy="OnFailure"), RUNNING, 0, "Running"), "crashloop:code=0", "finish#0", "finish",
     {"exit_code": 0}),
    (with_state(pod(restart_policy="Always"), {"waiting": {"reason": "CrashLoopBackOff"}}, 3, "Running"),
     "crashloop:backoff=0.5", "restart#3", "restart", {"delay": 0.5}),
])
def test_plan_rules(p: dict, rule: str, token: str | None, action: str | None, extra: dict) -> None:
    step = plan(p, NODE, parse_rule(rule))
    if token is None:
        assert step is None
        return
    assert step is not None
    assert (step.token, step.action) == (token, action)
    for key, value in extra.items():
        assert getattr(step, key) == value, key


@pytest.mark.parametrize(("p", "proc", "token", "action", "code"), [
    (pod(node=""), None, "bind", "bind", 0),
    (pod(), None, "create", "create", 0),
    (with_state(pod(), CREATING), None, "spawn", "spawn", 0),
    (with_state(pod(), RUNNING, phase="Running"), Proc(True), None, None, 0),
    (with_state(pod(), RUNNING, phase="Running"), Proc(True, 4), "exited", "finish", 4),
    (with_state(pod(), RUNNING, phase="Running"), Proc(True, 0), "exited", "finish", 0),
    (with_state(pod(), RUNNING, phase="Running"), None, "lost", "finish", 137),  # another kubelet's process
    (with_state(pod(deleting=True), RUNNING, phase="Running"), Proc(True), "delete:kill", "kill", 0),
    # a graceful delete: the stopped container's exit is reported before the pod goes, as a real kubelet does
    (with_state(pod(deleting=True), RUNNING, phase="Running"), Proc(True, 143), "delete:stopped", "finish", 143),
    (with_state(pod(deleting=True), {"terminated": {"exitCode": 143}}, phase="Failed"), Proc(True, 143), "delete",
     "delete", 0),
])
def test_plan_process_mode(p: dict, proc: Proc | None, token: str | None, action: str | None, code: int) -> None:
    step = plan(p, NODE, None, proc)
    if token is None:
        assert step is None
        return
    assert step is not None
    assert (step.token, step.action, step.exit_code) == (token, action, code)


def test_plan_is_level_triggered_the_token_names_the_state_left() -> None:
    rule = parse_rule("crashloop")
    a = with_state(pod(restart_policy="Always"), RUNNING, 1, "Running")
    b = copy.deepcopy(a)
    b["metadata"]["resourceVersion"] = "999"  # re-seen after a relist: same state, same token
    assert plan(a, NODE, rule) == plan(b, NODE, rule)
    c = with_state(pod(restart_policy="Always"), RUNNING, 2, "Running")
    assert plan(c, NODE, rule).token != plan(a, NODE, rule).token  # type: ignore[union-attr]


# -- status payloads -------------------------------------------------------------------------------

REQUIRED = {"name", "image", "imageID", "ready", "restartCount", "started", "state"}


def conditions(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_status_lifecycle_payloads() -> None:
    p = pod()
    creating = status_waiting(p, NOW, "ContainerCreating", host_ip="127.0.0.1")
    assert creating["phase"] == "Pending" and creating["startTime"] == NOW
    assert conditions(creating) == {"Initialized": "True", "Ready": "False", "ContainersReady": "False",
                                    "PodScheduled": "True"}
    assert [cs["name"] for cs in creating["containerStatuses"]] == ["base", "side"]
    assert all(REQUIRED <= cs.keys() for cs in creating["containerStatuses"])
    assert creating["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}

    p["status"] = creating
    running = status_running(p, NOW, host_ip="127.0.0.1", pod_ip="10.244.0.2")
    assert running["phase"] == "Running" and running["podIP"] == "10.244.0.2" and running["hostIP"] == "127.0.0.1"
    assert conditions(running)["Ready"] == "True"
    base = running["containerStatuses"][0]
    assert REQUIRED <= base.keys() and base["ready"] and base["started"]
    assert base["state"] == {"running": {"startedAt": NOW}} and base["imageID"].startswith("docker-pullable://")

    p["status"] = running
    done = status_terminated(p, LATER, 3, "Error", host_ip="127.0.0.1")
    assert done["phase"] == "Failed"
    term = done["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert (term["startedAt"], term["finishedAt"]) == (NOW, LATER)
    assert conditions(done)["Ready"] == "False"
    assert status_terminated(p, LATER, 0, "Completed", host_ip="x")["phase"] == "Succeeded"


def test_status_crashloop_counts_restarts_and_keeps_running_phase() -> None:
    p = with_state(pod(restart_policy="Always"), RUNNING, 1, "Running")
    crashed = status_crashloop(p, LATER, 2, host_ip="127.0.0.1")
    assert crashed["phase"] == "Running"
    base = crashed["containerStatuses"][0]
    assert base["restartCount"] == 2 and base["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert base["lastState"]["terminated"]["exitCode"] == 2 and not base["ready"]
    p["status"] = crashed
    again = status_running(p, LATER, host_ip="127.0.0.1", pod_ip="10.244.0.9")
    assert again["containerStatuses"][0]["restartCount"] == 2
    assert again["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 2


def test_status_waiting_errors_carry_messages() -> None:
    pulled = status_waiting(pod(), NOW, "ErrImagePull", host_ip="h")
    assert 'busybox:1' in pulled["containerStatuses"][0]["state"]["waiting"]["message"]
    config = status_waiting(pod(), NOW, "CreateContainerConfigError", host_ip="h", message="bad rule")
    assert config["containerStatuses"][0]["state"]["waiting"] == {"reason": "CreateContainerConfigError",
                                                                 "message": "bad rule"}


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    p = pod()
    p["status"] = status_waiting(p, NOW, "ContainerCreating", host_ip="h")
    later = status_waiting(p, LATER, "ErrImagePull", host_ip="h")
    assert {c["lastTransitionTime"] for c in later["conditions"]} == {NOW}


# -- process mode argv/env -------------------------------------------------------------------------


@pytest.mark.parametrize(("container", "argv"), [
    ({"command": ["python3", "-c", "x"]}, ["python3", "-c", "x"]),
    ({"command": ["sh", "-c"], "args": ["echo hi"]}, ["sh", "-c", "echo hi"]),
    ({"args": ["python3", "-V"]}, ["python3", "-V"]),
    ({}, []),
    ({"command": ["echo", "$(X)", "$$(X)", "$(MISSING)"], "env": [{"name": "X", "value": "1"}]},
     ["echo", "1", "$(X)", "$(MISSING)"]),
])
def test_container_argv(container: dict, argv: list[str]) -> None:
    assert container_argv(container) == argv


def test_container_env_takes_literal_values_only() -> None:
    env = [{"name": "A", "value": "1"}, {"name": "B"}, {"name": "C", "valueFrom": {"fieldRef": {}}}]
    assert container_env({"env": env}) == {"A": "1", "B": ""}


@pytest.mark.parametrize(("action", "phase"), [
    ("create", "Pending"), ("waiting", "Pending"), ("start", "Running"), ("restart", "Running"),
    ("crash", "Running"), ("finish", "Failed"),
])
def test_status_for_each_status_step(action: str, phase: str) -> None:
    step = Step("t", action, exit_code=3, reason="ErrImagePull" if action == "waiting" else "Error")
    assert status_for(step, pod(), NOW, host_ip="h", pod_ip="10.244.0.2")["phase"] == phase


@pytest.mark.parametrize("action", ["bind", "spawn", "kill", "delete"])
def test_status_for_rejects_api_steps(action: str) -> None:
    with pytest.raises(ValueError):
        status_for(Step("t", action), pod(), NOW, host_ip="h", pod_ip="ip")


def test_node_object_is_ready() -> None:
    node = node_object("n1", LATER, NOW, host_ip="127.0.0.1", runtime="x")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastHeartbeatTime"], ready["lastTransitionTime"]) == ("True", LATER, NOW)
    assert node["status"]["capacity"]["pods"] == "10000"
