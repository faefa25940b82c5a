import copy

import pytest

from kubestream.messages import TaskState
from kubestream.settings import DEFAULT_FATAL_REASONS
from kubestream.watcher.classify import classify_pod, failure_reason, fatal_waiting_reason

FATAL = DEFAULT_FATAL_REASONS


def pod(phase, *, containers=None, init=None, labels=None, annotations=None, deleting=False, reason=None,
        message=None):
    status = {"phase": phase} if phase is not None else {}
    if containers is not None:
        status["containerStatuses"] = containers
    if init is not None:
        status["initContainerStatuses"] = init
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    meta = {"name": "p", "namespace": "default", "labels": labels or {"kubestream.io/task": "x"},
            "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {}, "status": status}


def waiting(reason, message=None, name="base"):
    w = {"reason": reason}
    if message is not None:
        w["message"] = message
    return {"name": name, "ready": False, "restartCount": 0, "state": {"waiting": w}}


def terminated(exit_code, reason, name="base", message=None):
    t = {"exitCode": exit_code, "reason": reason}
    if message:
        t["message"] = message
    return {"name": name, "ready": False, "restartCount": 0, "state": {"terminated": t}}


RUNNING_CS = {"name": "base", "ready": True, "restartCount": 0, "state": {"running": {"startedAt": "x"}}}
PULL_MSG = 'failed to pull and unpack image "nope:1": not found'

CASES = [
    # (id, pod, event, expected)
    ("pending-plain", pod("Pending"), "ADDED", (TaskState.PENDING, "")),
    ("pending-creating", pod("Pending", containers=[waiting("ContainerCreating")]), "MODIFIED",
     (TaskState.PENDING, "")),
    ("pending-errimagepull", pod("Pending", containers=[waiting("ErrImagePull", PULL_MSG)]), "MODIFIED",
     (TaskState.FAILED, f"ErrImagePull: {PULL_MSG}")),
    ("pending-pull-qps-exceeded", pod("Pending", containers=[waiting("ErrImagePull", "pull QPS exceeded")]),
     "MODIFIED", (TaskState.PENDING, "")),
    ("pending-pull-qps-exceeded-substring",
     pod("Pending", containers=[waiting("ErrImagePull", "failed to pull: pull QPS exceeded.")]), "MODIFIED",
     (TaskState.PENDING, "")),
    ("pending-imagepullbackoff-not-in-list", pod("Pending", containers=[waiting("ImagePullBackOff", "back-off")]),
     "MODIFIED", (TaskState.PENDING, "")),
    ("pending-config-error", pod("Pending", containers=[waiting("CreateContainerConfigError",
                                                                'secret "s" not found')]),
     "MODIFIED", (TaskState.FAILED, 'CreateContainerConfigError: secret "s" not found')),
    ("pending-invalid-image-no-message", pod("Pending", containers=[waiting("InvalidImageName")]), "MODIFIED",
     (TaskState.FAILED, "InvalidImageName")),
    ("pending-init-container-fatal", pod("Pending", init=[waiting("ErrImagePull", PULL_MSG, name="init")],
                                         containers=[waiting("PodInitializing")]),
     "MODIFIED", (TaskState.FAILED, f"ErrImagePull: {PULL_MSG}")),
    ("pending-sidecar-fatal", pod("Pending", containers=[waiting("ContainerCreating"),
                                                         waiting("CreateContainerError", "boom", name="side")]),
     "MODIFIED", (TaskState.FAILED, "CreateContainerError: boom")),
    ("pending-qps-then-fatal", pod("Pending", init=[waiting("ErrImagePull", "pull QPS exceeded", name="i")],
                                   containers=[waiting("ImageInspectError", "bad")]),
     "MODIFIED", (TaskState.FAILED, "ImageInspectError: bad")),
    ("running", pod("Running", containers=[RUNNING_CS]), "MODIFIED", (TaskState.RUNNING, "")),
    ("running-added", pod("Running"), "ADDED", (TaskState.RUNNING, "")),
    ("succeeded", pod("Succeeded", containers=[terminated(0, "Completed")]), "MODIFIED",
     (TaskState.SUCCEEDED, "")),
    ("failed-oom", pod("Failed", containers=[terminated(137, "OOMKilled")]), "MODIFIED",
     (TaskState.FAILED, "OOMKilled (exit code 137)")),
    ("failed-error", pod("Failed", containers=[terminated(3, "Error")]), "MODIFIED",
     (TaskState.FAILED, "Error (exit code 3)")),
    ("failed-error-with-message", pod("Failed", containers=[terminated(1, "Error", message="Traceback")]),
     "MODIFIED", (TaskState.FAILED, "Error (exit code 1): Traceback")),
    ("failed-init", pod("Failed", init=[terminated(2, "Error", name="setup")], containers=[waiting("PodInitializing")]),
     "MODIFIED", (TaskState.FAILED, "init container setup: Error (exit code 2)")),
    ("failed-sidecar-ok-main-bad", pod("Failed", containers=[terminated(0, "Completed", name="side"),
                                                             terminated(1, "Error")]),
     "MODIFIED", (TaskState.FAILED, "Error (exit code 1)")),
    ("failed-evicted", pod("Failed", reason="Evicted", message="The node was low on resource: memory.",
                           containers=[terminated(137, "ContainerStatusUnknown")]),
     "MODIFIED", (TaskState.FAILED, "Evicted: The node was low on resource: memory.")),
    ("failed-deadline", pod("Failed", reason="DeadlineExceeded", message="Pod was active too long"), "MODIFIED",
     (TaskState.FAILED, "DeadlineExceeded: Pod was active too long")),
    ("failed-no-details", pod("Failed"), "MODIFIED", (TaskState.FAILED, "pod failed")),
    ("failed-waiting-only", pod("Failed", containers=[waiting("ImagePullBackOff", "back-off")]), "MODIFIED",
     (TaskState.FAILED, "ImagePullBackOff: back-off")),
    ("provider-failed", pod("Pending", reason="ProviderFailed", message="vk"), "MODIFIED",
     (TaskState.FAILED, "ProviderFailed: vk")),
    ("deleted-pending", pod("Pending", deleting=True), "DELETED", (TaskState.FAILED, "pod deleted while Pending")),
    ("deleted-pending-fatal", pod("Pending", deleting=True, containers=[waiting("ErrImagePull", "x")]), "DELETED",
     (TaskState.FAILED, "pod deleted while Pending (ErrImagePull: x)")),
    ("deleted-running", pod("Running", deleting=True), "DELETED", (TaskState.FAILED, "pod deleted while Running")),
    ("deleted-running-no-timestamp", pod("Running"), "DELETED", (TaskState.FAILED, "pod deleted while Running")),
    ("deleted-unknown-phase", pod("Unknown"), "DELETED", (TaskState.FAILED, "pod deleted while Unknown")),
    ("deleted-no-phase", pod(None), "DELETED", (TaskState.FAILED, "pod deleted while Unknown")),
    ("deleted-after-success", pod("Succeeded", deleting=True), "DELETED", (TaskState.SUCCEEDED, "")),
    ("deleted-after-failure", pod("Failed", deleting=True, containers=[terminated(137, "OOMKilled")]), "DELETED",
     (TaskState.FAILED, "OOMKilled (exit code 137)")),
    ("terminating-running", pod("Running", deleting=True), "MODIFIED", None),
    ("terminating-pending", pod("Pending", deleting=True, containers=[waiting("ErrImagePull", "x")]), "MODIFIED",
     None),
    ("terminating-succeeded", pod("Succeeded", deleting=True), "MODIFIED", (TaskState.SUCCEEDED, "")),
    ("unknown-phase", pod("Unknown"), "MODIFIED", None),
    ("no-status", {"metadata": {"name": "p"}}, "ADDED", None),
    ("bookmark", {"kind": "Pod", "metadata": {"resourceVersion": "12"}}, "BOOKMARK", None),
    ("error-event", {"kind": "Status", "code": 410}, "ERROR", None),
    ("revoked-label", pod("Running", labels={"airflow_pod_revoked": "True"}), "MODIFIED", None),
    ("revoked-label-failed", pod("Failed", labels={"airflow_pod_revoked": "True"}), "MODIFIED", None),
    ("revoked-annotation-deleted", pod("Running", annotations={"kubestream.io/revoked": "true"}), "DELETED", None),
    ("revoked-label-false", pod("Running", labels={"airflow_pod_revoked": "False"}), "MODIFIED",
     (TaskState.RUNNING, "")),
]


@pytest.mark.parametrize(("pod_json", "event", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify_pod(pod_json, event, expected):
    before = copy.deepcopy(pod_json)
    assert classify_pod(pod_json, event, FATAL) == expected
    assert pod_json == before  # pure


def test_empty_fatal_reasons_never_fail_pending():
    p = pod("Pending", containers=[waiting("ErrImagePull", PULL_MSG)])
    assert classify_pod(p, "MODIFIED", ()) == (TaskState.PENDING, "")
    assert fatal_waiting_reason(p, ()) is None


def test_custom_fatal_reasons():
    p = pod("Pending", containers=[waiting("ImagePullBackOff", "back-off")])
    assert classify_pod(p, "MODIFIED", {"ImagePullBackOff"}) == (TaskState.FAILED, "ImagePullBackOff: back-off")
    assert fatal_waiting_reason(p, FATAL) is None


def test_long_reasons_are_truncated():
    p = pod("Failed", containers=[terminated(1, "Error", message="x" * 10000)])
    assert len(failure_reason(p)) <= 500


def test_malformed_pod_does_not_raise():
    bad = {"metadata": None, "status": {"phase": "Pending", "containerStatuses": [None, {"state": None}]}}
    assert classify_pod(bad, "MODIFIED", FATAL) == (TaskState.PENDING, "")
    assert classify_pod("not a pod", "MODIFIED", FATAL) is None  # type: ignore[arg-type]
