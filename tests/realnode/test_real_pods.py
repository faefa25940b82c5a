"""kubestream against a REAL kubelet: executor -> Redis -> launcher -> kube-apiserver -> kubelet v1.20 +
Docker (real containers) -> watcher -> Redis -> executor.sync().

Task pods come from the real node's pod template (``pod_template_file``); each task's
``pod_override`` gives its container a command on the node's Debian base image. The events the
executor reports carry the states and reasons the KubernetesExecutor would give for the same pods.
"""

from __future__ import annotations

from typing import Any

import pytest

from devkit.procs import wait_for
from devkit.realnode import NODE_NAME, RealNode
from devkit.record_statuses import CASES, MISSING_IMAGE, record_case
from devkit.workloads import pod_name, workload
from tests.unit.test_real_statuses import EXPECTED, classify_sequence, final_of

pytestmark = pytest.mark.realnode


def container(command: str, **extra: Any) -> dict[str, Any]:
    """An executor_config whose pod_override runs ``sh -c command`` in the task's container."""
    return {"pod_override": {"spec": {"containers": [{"name": "base", "command": ["sh", "-c", command], **extra}]}}}


def containers_of(node: RealNode, pod: str, *, running: bool = False) -> list[str]:
    """The ids of the pod's containers (sandbox included) in the node's dockerd; exited ones too unless ``running``."""
    out = node.docker("ps", "-q" if running else "-aq", "--filter", f"label=io.kubernetes.pod.name={pod}", timeout=60)
    return out.stdout.split()


# Docker marks a container OOMKilled only when it sees the kernel's OOM event before the exit: on a loaded
# machine it may not, and the kubelet then reports "Error (exit code 137)" (as it would to the
# KubernetesExecutor). Either is accepted for the OOM case; the recorded fixtures keep the OOMKilled sequence.
OOM_REASONS = ("OOMKilled (exit code 137)", "Error (exit code 137)")
OUTCOMES = [  # (task id, executor_config, Airflow state, reasons one of which the failure info contains)
    ("exit0", container("exit 0"), "success", ()),
    ("exit3", container("exit 3"), "failed", ("Error (exit code 3)",)),
    ("never-pull", container("exit 0", image=MISSING_IMAGE), "failed",
     (f'ErrImageNeverPull: Container image "{MISSING_IMAGE}" is not present with pull policy of Never',)),
    ("oom", container("tail /dev/zero", resources={"limits": {"memory": "32Mi", "cpu": "500m"}}), "failed",
     OOM_REASONS),
]


def test_real_pods_end_as_the_kubernetes_executor_reports_them(pipeline, streams, node) -> None:
    pipeline.start()
    work = {task: workload("realnode", task, executor_config=config) for task, config, _, _ in OUTCOMES}
    pipeline.submit(work.values())
    finals = pipeline.run_until([w.ti.key for w in work.values()], timeout=180)
    for task, _, expected, reasons in OUTCOMES:
        key = work[task].ti.key
        assert finals[key] == expected, (task, pipeline.driver.failures(key))
        if reasons:
            infos = pipeline.driver.failures(key)
            assert any(reason in info for info in infos for reason in reasons), (task, infos)
    assert set(pipeline.driver.final_counts().values()) == {1}  # exactly one final event per task
    assert not pipeline.executor.running
    # the pods really ran on the node: their containers are (or were) in its dockerd
    exited = [t for t in ("exit3", "oom") if containers_of(node, pod_name(work[t]))]
    assert exited == ["exit3", "oom"]  # failed pods are kept (delete_worker_pods_on_failure=False)


def test_a_pod_deleted_while_running_fails_its_task(pipeline, streams, core, node) -> None:
    pipeline.start()
    work = workload("realnode", "deleted", executor_config=container("trap 'exit 143' TERM; sleep 600 & wait"))
    pipeline.submit([work])
    pod = pod_name(work)
    wait_for(lambda: streams.pod_phase(pod) == "Running", timeout=120, what="the pod running on the real node")
    core.delete_namespaced_pod(pod, pipeline.settings.namespace)  # its own grace period: SIGTERM, exit 143
    finals = pipeline.run_until([work.ti.key], timeout=120)
    assert finals[work.ti.key] == "failed"
    (info,) = pipeline.driver.failures(work.ti.key)
    assert "pod deleted while Running" in info or "exit code 143" in info, info
    wait_for(lambda: not containers_of(node, pod, running=True), timeout=60, what="the pod's containers stopped")


def test_a_revoked_running_task_has_its_pod_deleted_and_containers_stopped(pipeline, streams, node) -> None:
    pipeline.start()
    work = workload("realnode", "revoked", executor_config=container("sleep 600"))
    pipeline.submit([work])
    pod = pod_name(work)
    wait_for(lambda: streams.pod_phase(pod) == "Running", timeout=120, what="the pod running on the real node")
    assert containers_of(node, pod, running=True)
    ti = type("TI", (), {"key": work.ti.key, "id": work.ti.id, "queue": "default",
                         "external_executor_id": work.ti.external_executor_id})()
    pipeline.executor.revoke_task(ti=ti)
    assert work.ti.key not in pipeline.executor.running
    wait_for(lambda: pod not in streams.pods(), timeout=120, what="the revoked pod deleted")
    wait_for(lambda: not containers_of(node, pod, running=True), timeout=60,
             what="the revoked pod's containers stopped")
    for _ in range(10):
        pipeline.step()
    assert work.ti.key not in pipeline.driver.finals()  # a revoked task gets no event from its pod


def test_pod_logs_come_from_the_real_kubelet(core, namespace, real_node) -> None:
    # pods/log is proxied by the apiserver to the kubelet with its client certificate
    from devkit.realnode import pod_template

    pod = pod_template(real_node.base_image)
    pod["metadata"] = {"name": "logs", "namespace": namespace}
    pod["spec"]["containers"][0]["command"] = ["sh", "-c", "echo hello from a real container"]
    core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: core.read_namespaced_pod("logs", namespace).status.phase == "Succeeded", timeout=120,
             what="the pod done")
    log = core.read_namespaced_pod_log("logs", namespace, _preload_content=False).data.decode()
    assert log == "hello from a real container\n"
    assert core.read_namespaced_pod("logs", namespace).spec.node_name == NODE_NAME


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_live_statuses_classify_as_the_recorded_fixtures(case, core, namespace, real_node) -> None:
    from devkit.realnode import pod_template

    fatal, expected, _, _ = EXPECTED[case]
    spec = next(c for c in CASES if c.name == case)
    events = record_case(core, spec, pod_template(real_node.base_image), real_node.base_image, namespace)
    assert final_of(classify_sequence(events, fatal)) == expected, events
