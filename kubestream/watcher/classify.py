"""Turn a pod watch event into a task state (pure: imports neither kubernetes nor airflow).

Semantics follow the KubernetesExecutor's ``KubernetesJobWatcher.process_status``,
on the raw API JSON (camelCase) of the watch:

- revoked pods (label ``airflow_pod_revoked=True`` or annotation
  ``kubestream.io/revoked=true``) are ignored;
- Pending: FAILED when a container or init container waits with a fatal
  reason (``ErrImagePull`` whose message says "pull QPS exceeded" is never
  fatal: the kubelet retries it), else PENDING;
- Running / Succeeded / Failed map to RUNNING / SUCCEEDED / FAILED
  (``status.reason == "ProviderFailed"``, set by virtual kubelets, is FAILED);
- a pod being gracefully deleted (``deletionTimestamp``) while Pending/Running
  says nothing until its DELETED event, which is FAILED "pod deleted while <phase>".
  (Airflow treats a DELETED without deletionTimestamp as "adopted"; kubestream has no
  adoption by another executor, so any unfinished deleted pod failed.)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from kubestream.messages import TaskState

REVOKED_LABEL = "airflow_pod_revoked"
REVOKED_ANNOTATION = "kubestream.io/revoked"
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")
MAX_REASON = 500


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _join(reason: Any, message: Any) -> str:
    reason, message = str(reason or "").strip(), str(message or "").strip()
    text = f"{reason}: {message}" if reason and message else reason or message
    return text[:MAX_REASON]


def is_revoked(pod: Mapping[str, Any]) -> bool:
    """The pod was revoked by the executor (its events must be ignored)."""
    meta = _map(pod.get("metadata"))
    label = _map(meta.get("labels")).get(REVOKED_LABEL)
    annotation = _map(meta.get("annotations")).get(REVOKED_ANNOTATION)
    return str(label).lower() == "true" or str(annotation).lower() == "true"


def _container_statuses(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Init containers first (they run first), then the main containers."""
    return [_map(cs) for cs in _list(status.get("initContainerStatuses")) + _list(status.get("containerStatuses"))]


def fatal_waiting_reason(pod: Mapping[str, Any], fatal_reasons: Collection[str]) -> str | None:
    """``"<reason>: <message>"`` of the first container waiting with a fatal reason, else None."""
    if not fatal_reasons:
        return None
    for cs in _container_statuses(_map(pod.get("status"))):
        waiting = _map(_map(cs.get("state")).get("waiting"))
        reason = waiting.get("reason")
        if not reason or reason not in fatal_reasons:
            continue
        message = str(waiting.get("message") or "")
        if reason == "ErrImagePull" and "pull QPS exceeded" in message:
            continue  # kubelet-side throttling: it retries the pull
        return _join(reason, message)
    return None


def failure_reason(pod: Mapping[str, Any]) -> str:
    """Why a Failed pod failed, for humans.

    Pod-level reason first (Evicted, DeadlineExceeded...), then the first container
    that terminated badly (init containers first), then a waiting container.
    """
    status = _map(pod.get("status"))
    if status.get("reason"):
        return _join(status.get("reason"), status.get("message"))
    waiting_text = ""
    init_names = {_map(cs).get("name") for cs in _list(status.get("initContainerStatuses"))}
    for cs in _container_statuses(status):
        state = _map(cs.get("state"))
        terminated = _map(state.get("terminated"))
        if terminated:
            code = terminated.get("exitCode", 0)
            reason = terminated.get("reason") or "Terminated"
            if code != 0 and reason != "Completed":
                text = f"{reason} (exit code {code})"
                if cs.get("name") in init_names:
                    text = f"init container {cs.get('name')}: {text}"
                return _join(text, terminated.get("message"))
        elif state.get("waiting") and not waiting_text:
            waiting = _map(state.get("waiting"))
            waiting_text = _join(waiting.get("reason"), waiting.get("message"))
    return waiting_text or _join("", status.get("message")) or "pod failed"


def classify_pod(
    pod: Mapping[str, Any], event_type: str, fatal_reasons: Collection[str]
) -> tuple[TaskState, str] | None:
    """The task state and a human reason this event shows, or None when it shows nothing new."""
    if event_type not in EVENT_TYPES or not isinstance(pod, Mapping) or is_revoked(pod):
        return None
    status = _map(pod.get("status"))
    phase = status.get("phase") or ""
    deleted = event_type == "DELETED"
    if phase == "Succeeded":
        return TaskState.SUCCEEDED, ""
    if phase == "Failed":
        return TaskState.FAILED, failure_reason(pod)
    if status.get("reason") == "ProviderFailed":
        return TaskState.FAILED, _join("ProviderFailed", status.get("message"))
    if deleted:
        text = f"pod deleted while {phase or 'Unknown'}"
        fatal = fatal_waiting_reason(pod, fatal_reasons) if phase == "Pending" else None
        return TaskState.FAILED, f"{text} ({fatal})" if fatal else text
    if phase not in ("Pending", "Running"):
        return None
    if _map(pod.get("metadata")).get("deletionTimestamp"):
        return None  # graceful deletion in progress: the DELETED event decides
    if phase == "Running":
        return TaskState.RUNNING, ""
    fatal = fatal_waiting_reason(pod, fatal_reasons)
    if fatal:
        return TaskState.FAILED, fatal
    return TaskState.PENDING, ""
