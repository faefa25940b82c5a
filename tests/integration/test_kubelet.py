"""The simulated kubelet against the real local API server: pods bound, run and finished as rules say."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from devkit.kubelet import SimKubelet
from devkit.procs import pid_alive, wait_for
from kubestream.kubeapi import api_client

pytestmark = pytest.mark.cluster

SIM = "kubestream.io/sim"
PYTHON_EXIT_4 = ["python3", "-c", "import sys, os; print(os.environ['X']); sys.exit(4)"]


def make_pod(name: str, rule: str | None = None, *, restart_policy: str = "Never", command: list[str] | None = None,
             args: list[str] | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "base", "image": "busybox:1.36"}
    if command:
        container["command"] = command
    if args:
        container["args"] = args
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {SIM: rule} if rule else {}},
            "spec": {"restartPolicy": restart_policy, "containers": [container]}}


@pytest.fixture
def core(admin_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(admin_api)


@pytest.fixture
def start_kubelet(cluster: Any, namespace: str) -> Iterator[Callable[..., SimKubelet]]:
    """Start extra kubelets (process mode, restarts); all stopped after the test."""
    started: list[tuple[SimKubelet, Any]] = []

    def start(**kwargs: Any) -> SimKubelet:
        api = api_client(cluster.kubeconfig("kubelet"), pool_size=16)
        kwargs.setdefault("namespaces", [namespace])
        kwargs.setdefault("node_name", f"node-{namespace}")
        sim = SimKubelet(api, **kwargs)
        started.append((sim, api))
        return sim.start()

    yield start
    for sim, api in reversed(started):
        sim.stop()
        api.close()


def wait_pod(core: client.CoreV1Api, namespace: str, name: str, check: Callable[[client.V1Pod], bool], *,
             what: str, timeout: float = 30) -> client.V1Pod:
    def probe() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if check(pod) else None

    return wait_for(probe, timeout=timeout, what=f"pod {name}: {what}")  # type: ignore[return-value]


def finished(pod: client.V1Pod) -> bool:
    return pod.status.phase in ("Succeeded", "Failed")


def waiting_reason(pod: client.V1Pod) -> str | None:
    statuses = pod.status.container_statuses or []
    return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None


def terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated:
    return pod.status.container_statuses[0].state.terminated


def gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as exc:
        return exc.status == 404
    return False


# -- node and outcomes -----------------------------------------------------------------------------


def test_node_is_registered_ready(kubelet: SimKubelet, core: client.CoreV1Api) -> None:
    node = core.read_node(kubelet.node_name)
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True"
    assert node.status.capacity["pods"] == "10k"
    assert not [t for t in node.spec.taints or [] if t.key.startswith("node.kubernetes.io/not-ready")]


def test_succeeded_pod_has_a_kubelet_like_status(kubelet: SimKubelet, core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, make_pod("ok"))  # no annotation: the default rule, succeed
    pod = wait_pod(core, namespace, "ok", finished, what="finished")
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name == kubelet.node_name
    assert pod.status.pod_ip and pod.status.host_ip == "127.0.0.1" and pod.status.start_time
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["PodScheduled"] == "True" and conditions["Ready"] == "False"
    cs = pod.status.container_statuses[0]
    assert (cs.name, cs.image, cs.ready, cs.restart_count, cs.started) == ("base", "busybox:1.36", False, 0, False)
    assert cs.image_id and cs.container_id
    term = cs.state.terminated
    assert (term.exit_code, term.reason) == (0, "Completed")
    assert term.started_at and term.finished_at and term.finished_at >= term.started_at


@pytest.mark.parametrize(("rule", "phase", "exit_code", "reason"), [
    ("exit:3", "Failed", 3, "Error"),
    ("exit:0", "Succeeded", 0, "Completed"),
    ("oomkilled", "Failed", 137, "OOMKilled"),
    ("run:delay=0.3", "Succeeded", 0, "Completed"),
    ("crashloop", "Failed", 1, "Error"),  # restartPolicy Never: no restart
])
def test_rule_decides_how_the_pod_ends(kubelet: SimKubelet, core: client.CoreV1Api, namespace: str, rule: str,
                                       phase: str, exit_code: int, reason: str) -> None:
    core.create_namespaced_pod(namespace, make_pod("p", rule))
    pod = wait_pod(core, namespace, "p", finished, what="finished")
    assert (pod.status.phase, terminated(pod).exit_code, terminated(pod).reason) == (phase, exit_code, reason)


@pytest.mark.parametrize(("rule", "final", "seen"), [
    ("errimagepull", "ImagePullBackOff", {"ErrImagePull", "ImagePullBackOff"}),
    ("createcontainerconfigerror", "CreateContainerConfigError", {"CreateContainerConfigError"}),
    ("no-such-rule:x", "CreateContainerConfigError", {"CreateContainerConfigError"}),
])
def test_pending_forever_rules(kubelet: SimKubelet, core: client.CoreV1Api, namespace: str, rule: str, final: str,
                               seen: set[str]) -> None:
    core.create_namespaced_pod(namespace, make_pod("p", rule))
    pod = wait_pod(core, namespace, "p", lambda p: waiting_reason(p) == final, what=final)
    assert pod.status.phase == "Pending" and waiting_reason(pod) in seen
    if rule.startswith("no-such-rule"):
        assert "invalid kubestream.io/sim" in pod.status.container_statuses[0].state.waiting.message


def test_crashloop_restarts_with_restart_policy_always(kubelet: SimKubelet, core: client.CoreV1Api,
                                                       namespace: str) -> None:
    core.create_namespaced_pod(namespace, make_pod("loop", "crashloop:code=2,backoff=0.1", restart_policy="Always"))
    pod = wait_pod(core, namespace, "loop", lambda p: (p.status.container_statuses or [None])[0] is not None
                   and p.status.container_statuses[0].restart_count >= 3, what="restartCount >= 3")
    assert pod.status.phase == "Running"
    cs = pod.status.container_statuses[0]
    assert cs.last_state.terminated.exit_code == 2
    assert cs.state.running or cs.state.waiting.reason == "CrashLoopBackOff"


# -- watch order -------------------------------------------------------------------------------------


def watch_pod(core: client.CoreV1Api, namespace: str, pod: dict[str, Any]) -> list[tuple[float, str, str]]:
    """Create ``pod`` and watch it to the end: [(time, phase, container state)] as events arrive."""
    rv = core.list_namespaced_pod(namespace).metadata.resource_version
    core.create_namespaced_pod(namespace, pod)
    seen: list[tuple[float, str, str]] = []
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_pod, namespace, resource_version=rv, timeout_seconds=30,
                          field_selector=f"metadata.name={pod['metadata']['name']}"):
        obj = event["object"]
        statuses = obj.status.container_statuses or []
        state = ""
        if statuses:
            s = statuses[0].state
            state = "running" if s.running else "terminated" if s.terminated else s.waiting.reason
        seen.append((time.monotonic(), obj.status.phase, state))
        if finished(obj):
            w.stop()
    return seen


def dedup(values: list[str]) -> list[str]:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def test_watch_sees_pending_running_succeeded_in_order(kubelet: SimKubelet, core: client.CoreV1Api,
                                                       namespace: str) -> None:
    seen = watch_pod(core, namespace, make_pod("w"))
    assert dedup([phase for _, phase, _ in seen]) == ["Pending", "Running", "Succeeded"]
    assert dedup([state for _, _, state in seen]) == ["", "ContainerCreating", "running", "terminated"]


def test_slowstart_stays_container_creating_for_its_delay(kubelet: SimKubelet, core: client.CoreV1Api,
                                                          namespace: str) -> None:
    seen = watch_pod(core, namespace, make_pod("slow", "slowstart:delay=1"))
    assert dedup([state for _, _, state in seen]) == ["", "ContainerCreating", "running", "terminated"]
    creating = min(t for t, _, state in seen if state == "ContainerCreating")
    running = min(t for t, _, state in seen if state == "running")
    assert running - creating >= 0.9
    assert seen[-1][1] == "Succeeded"


# -- deletes, process mode ------------------------------------------------------------------------------


def test_delete_of_a_running_pod_completes(kubelet: SimKubelet, core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, make_pod("forever", "run"))
    wait_pod(core, namespace, "forever", lambda p: p.status.phase == "Running", what="Running")
    core.delete_namespaced_pod("forever", namespace)  # graceful (30 s): the kubelet finishes it
    wait_for(lambda: gone(core, namespace, "forever"), timeout=15, what="pod deleted")


def test_process_mode_runs_the_container_command(start_kubelet: Callable[..., SimKubelet], core: client.CoreV1Api,
                                                 namespace: str, tmp_path: Path) -> None:
    start_kubelet(mode="process", work_dir=tmp_path, extra_env={"Y": "from-extra-env"})
    core.create_namespaced_pod(namespace, make_pod("exit4", command=PYTHON_EXIT_4, env={"X": "value-of-x"}))
    script = "import os; print(os.environ['Y'], os.getcwd())"
    core.create_namespaced_pod(namespace, make_pod("argsonly", args=["python3", "-c", script]))
    core.create_namespaced_pod(namespace, make_pod("simulated", "errimagepull", command=["false"]))

    pod = wait_pod(core, namespace, "exit4", finished, what="finished")
    assert (pod.status.phase, terminated(pod).exit_code, terminated(pod).reason) == ("Failed", 4, "Error")
    assert "value-of-x" in (tmp_path / namespace / "exit4.log").read_text()

    pod = wait_pod(core, namespace, "argsonly", finished, what="finished")
    assert (pod.status.phase, terminated(pod).exit_code) == ("Succeeded", 0)
    out = (tmp_path / namespace / "argsonly.log").read_text()
    assert "from-extra-env" in out and str(tmp_path / namespace / "argsonly") in out

    # the annotation wins over process mode
    wait_pod(core, namespace, "simulated", lambda p: waiting_reason(p) == "ImagePullBackOff", what="ImagePullBackOff")


def test_process_mode_delete_kills_the_process(start_kubelet: Callable[..., SimKubelet], core: client.CoreV1Api,
                                               namespace: str, tmp_path: Path) -> None:
    start_kubelet(mode="process", work_dir=tmp_path)
    script = "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(600)"
    core.create_namespaced_pod(namespace, make_pod("sleeper", command=["python3", "-c", script]))
    wait_pod(core, namespace, "sleeper", lambda p: p.status.phase == "Running", what="Running")
    pid_file = tmp_path / namespace / "sleeper" / "pid"
    pid = int(str(wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=10, what="pid file")))
    core.delete_namespaced_pod("sleeper", namespace)
    wait_for(lambda: gone(core, namespace, "sleeper"), timeout=15, what="pod deleted")
    wait_for(lambda: not pid_alive(pid), timeout=10, what="process killed")


def test_process_mode_command_not_found_is_a_start_error(start_kubelet: Callable[..., SimKubelet],
                                                         core: client.CoreV1Api, namespace: str,
                                                         tmp_path: Path) -> None:
    start_kubelet(mode="process", work_dir=tmp_path)
    core.create_namespaced_pod(namespace, make_pod("nope", command=["/no/such/binary"]))
    pod = wait_pod(core, namespace, "nope", finished, what="finished")
    assert (pod.status.phase, terminated(pod).exit_code, terminated(pod).reason) == ("Failed", 128, "StartError")


# -- level-triggered, scale, restarts ----------------------------------------------------------------------


def test_restarted_kubelet_does_not_restart_lifecycles(start_kubelet: Callable[..., SimKubelet],
                                                       core: client.CoreV1Api, namespace: str) -> None:
    first = start_kubelet()
    core.create_namespaced_pod(namespace, make_pod("done"))
    core.create_namespaced_pod(namespace, make_pod("long", "run"))
    wait_pod(core, namespace, "done", finished, what="finished")
    wait_pod(core, namespace, "long", lambda p: p.status.phase == "Running", what="Running")
    before = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
    first.stop()

    start_kubelet()  # same node: relists and finds both pods already past their early stages
    core.create_namespaced_pod(namespace, make_pod("fresh"))
    wait_pod(core, namespace, "fresh", finished, what="finished")  # the new kubelet works...
    after = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
    for name in ("done", "long"):  # ...and left the others alone
        assert after[name].metadata.resource_version == before[name].metadata.resource_version, name


def test_a_hundred_pods_all_succeed(kubelet: SimKubelet, core: client.CoreV1Api, namespace: str) -> None:
    names = [f"bulk-{i:03d}" for i in range(100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: core.create_namespaced_pod(namespace, make_pod(n)), names))

    def all_succeeded() -> bool:
        pods = core.list_namespaced_pod(namespace).items
        return len(pods) == 100 and all(p.status.phase == "Succeeded" for p in pods)

    wait_for(all_succeeded, timeout=90, interval=0.25, what="100 pods Succeeded")


def watch_status_from(core: client.CoreV1Api, namespace: str, rv: str) -> int | None:
    """HTTP status of a watch from ``rv``: an ApiException's, an ERROR event's code, 200 for an event."""
    try:
        resp = core.list_namespaced_pod(namespace, watch=True, resource_version=rv, timeout_seconds=5,
                                        _preload_content=False)
    except ApiException as exc:
        return exc.status
    try:
        for line in iter_resp_lines(resp):
            event = json.loads(line) if line else {}
            if event.get("type") == "ERROR":
                return int(event["object"]["code"])
            if event:
                return 200
    finally:
        resp.release_conn()
    return None


def test_apiserver_restart_expires_old_watches_and_the_kubelet_recovers(
        kubelet: SimKubelet, core: client.CoreV1Api, cluster: Any, local_cluster: Any, namespace: str) -> None:
    created = core.create_namespaced_pod(namespace, make_pod("before"))
    old_rv = created.metadata.resource_version
    wait_pod(core, namespace, "before", finished, what="finished")  # the kubelet's writes move the RV on
    assert watch_status_from(core, namespace, old_rv) == 200  # still within the watch cache's window

    # The session's ClusterState must learn the new PID: a later ``namespace`` fixture saves that
    # object to state.json, and down() stops the PID it finds there.
    cluster.apiserver_pid = local_cluster.restart_apiserver().apiserver_pid

    def create_after() -> bool:
        try:
            core.create_namespaced_pod(namespace, make_pod("after"))
        except ApiException as exc:
            if exc.status != 409:  # a retried create that had gone through
                raise
        return True

    wait_for(create_after, timeout=30, what="create after the restart")
    wait_pod(core, namespace, "after", finished, what="finished after the restart")  # the kubelet reconnected
    assert watch_status_from(core, namespace, old_rv) == 410


def test_quota_exceeded_is_a_real_403(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_resource_quota(namespace, {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "2"}}})

    def prime(used: str) -> None:  # no controller-manager: the test plays the quota controller
        core.patch_namespaced_resource_quota_status("pods", namespace, {"status": {
            "hard": {"pods": "2"}, "used": {"pods": used}}})

    def rejected(name: str, *, dry_run: bool = False) -> str:
        try:
            core.create_namespaced_pod(namespace, make_pod(name), dry_run="All" if dry_run else None)
        except ApiException as exc:
            if exc.status == 403 and "exceeded quota" in exc.body:
                return exc.body
            raise
        return ""

    # The quota admission plugin reads quotas from an informer. Prime a full quota first and wait
    # (dry run: nothing is created) until admission sees it, then empty it: a first pod that is
    # admitted from then on was counted, so the next ones are checked against a live count.
    prime("2")
    wait_for(lambda: rejected("probe", dry_run=True), timeout=10, what="admission to see the primed quota")
    prime("0")
    wait_for(lambda: not rejected("q1"), timeout=10, what="first pod admitted")
    assert not rejected("q2")
    body = rejected("q3")
    assert "exceeded quota: pods" in body and "limited: pods=2" in body
