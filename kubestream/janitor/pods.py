"""Failed task pods are kept ``failed_pod_retention_seconds`` after they finished, then deleted.

With ``delete_worker_pods_on_failure`` off (the default), the watcher leaves a failed
pod in place so its logs stay readable; the janitor deletes it once the retention has
passed, so failed pods neither vanish at once nor pile up for ever. Only pods with
kubestream's managed label, made by this deployment (its key-prefix annotation), are
considered; the delete names the pod's uid, so a pod created again under the same name
in between is never touched.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from kubestream.kubeapi import Pod, PodApi
from kubestream.taskkey import MANAGED_LABEL, made_by

log = logging.getLogger("kubestream.janitor")

SELECTOR = f"{MANAGED_LABEL}=true"


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def finished_at(pod: Pod) -> float | None:
    """When the pod finished: its containers' latest ``finishedAt``, else its creation time."""
    status = pod.get("status") or {}
    times = [_timestamp(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
             for c in (status.get("containerStatuses") or [])]
    known = [t for t in times if t is not None]
    if known:
        return max(known)
    return _timestamp((pod.get("metadata") or {}).get("creationTimestamp"))


def pods_in(pods: PodApi, namespace: str, key_prefix: str, selector: str = SELECTOR) -> list[Pod]:
    """Every pod of ``namespace`` made by the kubestream of ``key_prefix``, page by page."""
    found: list[Pod] = []
    token = ""
    while True:
        page = pods.list(namespace, label_selector=selector, continue_token=token)
        found.extend(p for p in page.items if made_by(p, key_prefix))
        token = page.continue_token
        if not token:
            return found


def delete_failed_pods(pods: PodApi, namespaces: tuple[str, ...], retention_s: float, now: float, *,
                       key_prefix: str) -> list[str]:
    """Delete the failed kubestream pods that finished more than ``retention_s`` before ``now``;
    returns ``namespace/name`` of each pod deleted."""
    deleted = []
    for namespace in namespaces:
        for pod in pods_in(pods, namespace, key_prefix):
            if (pod.get("status") or {}).get("phase") != "Failed":
                continue
            done = finished_at(pod)
            if done is None or now - done < retention_s:
                continue
            meta = pod.get("metadata") or {}
            name = str(meta.get("name"))
            if pods.delete(namespace, name, uid=str(meta.get("uid") or "")):
                deleted.append(f"{namespace}/{name}")
                log.info("deleted a failed pod past its retention", extra={"namespace": namespace, "pod": name})
    return deleted


FINISHED = ("Succeeded", "Failed")


def cleanup_pods(pods: PodApi, namespaces: tuple[str, ...], *, key_prefix: str, dry_run: bool = False) -> list[str]:
    """``cleanup-pods``: delete every finished (Succeeded or Failed) kubestream pod of ``namespaces``
    now, whatever its retention; returns ``namespace/name (phase)`` of each one (not deleted on a dry run)."""
    found = []
    for namespace in namespaces:
        for pod in pods_in(pods, namespace, key_prefix):
            phase = (pod.get("status") or {}).get("phase")
            if phase not in FINISHED:
                continue
            meta = pod.get("metadata") or {}
            name = str(meta.get("name"))
            if dry_run or pods.delete(namespace, name, uid=str(meta.get("uid") or "")):
                found.append(f"{namespace}/{name} ({phase})")
    return found
