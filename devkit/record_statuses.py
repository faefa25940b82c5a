"""Record the pod status sequences a real kubelet produces, as fixtures for the classifier's tests.

``python -m devkit.record_statuses [--out tests/fixtures/realnode] [--case NAME ...]`` brings up a
local control plane with a real node (``devkit.realnode``), runs one pod per case of ``CASES`` on
it, records every watch event of that pod (the raw API JSON the watcher classifies), trims the
volatile fields (``trim_event``) and writes ``<out>/<case>.json``. Then it stops everything.

``tests/unit/test_real_statuses.py`` runs kubestream's classifier over every recorded sequence and
compares it with what the simulated kubelet's rules (``devkit.kubelet_rules``) produce for the same
case; ``tests/realnode/`` records the cases live again (``record_case``) and checks them the same way.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "realnode"
RECORD_NAMESPACE = "realnode-record"
MISSING_IMAGE = "kubestream/not-on-this-node:none"

_TIME_KEYS = {"startedAt", "finishedAt", "lastTransitionTime", "lastProbeTime", "startTime", "creationTimestamp",
              "deletionTimestamp", "lastHeartbeatTime"}
_DROP_META = {"uid", "resourceVersion", "managedFields", "selfLink", "generateName", "generation"}
_ID = re.compile(r"^([a-z-]+://)?(.*?)(@?sha256:)?[0-9a-f]{64}$")


@dataclass(frozen=True)
class Case:
    """One pod shape and what to do with it. ``stop`` says when the recording has seen enough:
    ``final`` (phase Succeeded/Failed), ``waiting:<reason>``, ``restarted`` (restartCount >= 1, then
    deleted), ``running-then-delete`` (delete with the pod's grace period once its container runs)."""

    name: str
    description: str
    command: tuple[str, ...] = ()
    image: str = ""  # empty: the node's base image
    memory_limit: str = ""
    restart_policy: str = "Never"
    grace_seconds: int = 2
    stop: str = "final"
    extra: dict[str, Any] = field(default_factory=dict)


CASES: tuple[Case, ...] = (
    Case("exit0", "the container exits 0", ("sh", "-c", "exit 0")),
    Case("exit3", "the container exits 3", ("sh", "-c", "exit 3")),
    Case("err-image-never-pull", "the image is not on the node and imagePullPolicy is Never",
         ("sh", "-c", "exit 0"), image=MISSING_IMAGE, stop="waiting:ErrImageNeverPull"),
    Case("oomkilled", "the container allocates past its 32Mi memory limit (tail buffers /dev/zero)",
         ("sh", "-c", "tail /dev/zero"), memory_limit="32Mi"),
    Case("deleted-while-running", "the pod is deleted while its container runs (grace period 2 s; the "
         "container exits 143 on SIGTERM)", ("sh", "-c", "trap 'exit 143' TERM; sleep 600 & wait"),
         stop="running-then-delete"),
    Case("restart-on-failure", "restartPolicy OnFailure, the container exits 3 and is restarted (deleted "
         "after the first restart)", ("sh", "-c", "sleep 1; exit 3"), restart_policy="OnFailure",
         stop="restarted"),
)


def pod_for(case: Case, template: dict[str, Any], image: str, namespace: str) -> dict[str, Any]:
    """The pod of ``case`` from the real node's pod template."""
    pod = copy.deepcopy(template)
    pod["metadata"] = {**pod.get("metadata", {}), "name": f"rec-{case.name}", "namespace": namespace}
    spec = pod["spec"]
    spec["restartPolicy"] = case.restart_policy
    spec["terminationGracePeriodSeconds"] = case.grace_seconds
    container = spec["containers"][0]
    container["image"] = case.image or image
    container["command"] = list(case.command)
    if case.memory_limit:
        container["resources"] = {"limits": {"memory": case.memory_limit, "cpu": "500m"}}
    return pod


def _trim(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in _DROP_META or k == "annotations" and not v:
                continue
            out[k] = _trim(v, k)
        return out
    if isinstance(value, list):
        return [_trim(v) for v in value]
    if key in _TIME_KEYS and value:
        return "<time>"
    if key in ("containerID", "imageID") and isinstance(value, str) and value:
        match = _ID.match(value)
        return f"{match.group(1) or ''}{match.group(2) or ''}{'@sha256:' if match.group(3) else ''}<id>" \
            if match else value
    return value


def trim_event(event: dict[str, Any]) -> dict[str, Any]:
    """A watch event without what changes from run to run (uids, versions, times, container ids)."""
    obj = _trim(event["object"])
    spec = obj.get("spec") or {}
    keep = {k: spec[k] for k in ("nodeName", "hostNetwork", "restartPolicy", "terminationGracePeriodSeconds")
            if k in spec}
    keep["containers"] = [{k: c[k] for k in ("name", "image", "imagePullPolicy", "command", "resources") if k in c}
                          for c in spec.get("containers") or ()]
    obj["spec"] = keep
    return {"type": event["type"], "object": obj}


def _watch(core: Any, namespace: str, name: str, resource_version: str, timeout: float) -> Iterator[dict[str, Any]]:
    from kubernetes import watch

    stream = watch.Watch().stream(core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}",
                                  resource_version=resource_version, timeout_seconds=int(timeout),
                                  allow_watch_bookmarks=False)
    for event in stream:
        yield {"type": event["type"], "object": event["raw_object"]}


def _done(case: Case, event: dict[str, Any]) -> bool:
    status = event["object"].get("status") or {}
    if event["type"] == "DELETED":
        return True
    if case.stop == "final":
        return status.get("phase") in ("Succeeded", "Failed")
    if case.stop.startswith("waiting:"):
        reason = case.stop.split(":", 1)[1]
        return any(((cs.get("state") or {}).get("waiting") or {}).get("reason") == reason
                   for cs in status.get("containerStatuses") or ())
    return False


def record_case(core: Any, case: Case, template: dict[str, Any], image: str, namespace: str, *,
                timeout: float = 120) -> list[dict[str, Any]]:
    """Run ``case``'s pod on the real node; return its watch events, trimmed, consecutive repeats dropped."""
    from kubernetes.client.exceptions import ApiException

    pod = pod_for(case, template, image, namespace)
    name = pod["metadata"]["name"]
    try:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        _wait_gone(core, namespace, name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    created = core.create_namespaced_pod(namespace, pod)
    events: list[dict[str, Any]] = []
    deleted = False
    deadline = time.monotonic() + timeout
    # the ADDED event of a watch from the create's resourceVersion is not sent: record the created pod as it
    events.append({"type": "ADDED", "object": core.api_client.sanitize_for_serialization(created)})
    while time.monotonic() < deadline and not (events and _done(case, events[-1])):
        rv = events[-1]["object"]["metadata"]["resourceVersion"]
        for event in _watch(core, namespace, name, rv, max(1.0, deadline - time.monotonic())):
            events.append(event)
            status = event["object"].get("status") or {}
            statuses = status.get("containerStatuses") or []
            if not deleted and case.stop == "running-then-delete" and any(
                    "running" in (cs.get("state") or {}) for cs in statuses):
                core.delete_namespaced_pod(name, namespace)  # the pod's own grace period
                deleted = True
            if not deleted and case.stop == "restarted" and any(
                    int(cs.get("restartCount") or 0) >= 1 for cs in statuses):
                core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
                deleted = True
            if _done(case, event):
                break
    if not events or not _done(case, events[-1]):
        raise TimeoutError(f"case {case.name}: no end after {timeout:.0f}s; last event: {events[-1:]}")
    if events[-1]["type"] != "DELETED":
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    trimmed: list[dict[str, Any]] = []
    for event in events:
        slim = trim_event(event)
        if not trimmed or slim != trimmed[-1]:
            trimmed.append(slim)
    return trimmed


def _wait_gone(core: Any, namespace: str, name: str, timeout: float = 60) -> None:
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(0.2)
    raise TimeoutError(f"pod {namespace}/{name} still there after {timeout:.0f}s")


def fixture_document(case: Case, events: list[dict[str, Any]], versions: dict[str, str]) -> dict[str, Any]:
    return {"case": case.name, "description": case.description, "recorded_with": versions, "events": events}


def node_versions(core: Any, node_name: str) -> dict[str, str]:
    info = core.read_node(node_name).status.node_info
    return {"kubelet": info.kubelet_version, "container_runtime": info.container_runtime_version}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.record_statuses", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIXTURES, help=f"where to write <case>.json (default {FIXTURES})")
    parser.add_argument("--case", action="append", choices=[c.name for c in CASES], help="only these (repeatable)")
    args = parser.parse_args(argv)

    from kubernetes import client

    from devkit.cluster import LocalCluster
    from devkit.realnode import NODE_NAME, RealNode, pod_template
    from kubestream.kubeapi import api_client

    work = Path(tempfile.mkdtemp(prefix="ks-rec-"))
    local = LocalCluster(work / "cluster", real_node=True)
    state = local.up((RECORD_NAMESPACE,))
    node = RealNode(state, work / "node")
    try:
        node_state = node.up()
        core = client.CoreV1Api(api_client(state.kubeconfig("admin")))
        versions = node_versions(core, NODE_NAME)
        template = pod_template(node_state.base_image)
        args.out.mkdir(parents=True, exist_ok=True)
        for case in CASES:
            if args.case and case.name not in args.case:
                continue
            started = time.monotonic()
            events = record_case(core, case, template, node_state.base_image, RECORD_NAMESPACE)
            path = args.out / f"{case.name}.json"
            path.write_text(json.dumps(fixture_document(case, events, versions), indent=1, sort_keys=True) + "\n")
            print(f"{case.name}: {len(events)} events in {time.monotonic() - started:.1f}s -> {path}")
    finally:
        try:
            node.down()
        finally:
            local.down()
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
