"""The pure half of the simulated kubelet: rule grammar, level-triggered plan, status payloads.

No I/O and no clock (callers pass ``now`` as an RFC 3339 string), so all of it is unit-tested.

Rule grammar (pod annotation ``kubestream.io/sim``, else the kubelet's default rule)::

    rule  := kind [":" param ("," param)*]
    param := key "=" number | integer        # a bare integer is the exit code (``exit`` only)

=========================== ===================================================================
kind                        lifecycle (``delay`` is the time spent in the *marked* stage)
=========================== ===================================================================
succeed                     ContainerCreating -> *Running* -> Succeeded (exit 0)
run                         *Running* until deleted; with ``delay=N``: then Succeeded
exit:N  (or ``code=N``)     *Running* -> Failed, exit N, reason Error (exit:0 -> Succeeded)
oomkilled                   *Running* -> Failed, exit 137, reason OOMKilled
crashloop [code=N]          *Running* -> exit N (default 1); restartPolicy Never: Failed; else
                            waiting CrashLoopBackOff, restartCount+1, ``backoff`` s -> Running...
                            (phase stays Running, forever)
slowstart                   *ContainerCreating* (default 2 s) -> Running -> Succeeded
errimagepull                *ContainerCreating* -> waiting ErrImagePull -> ``backoff`` s ->
                            waiting ImagePullBackOff -> ``PULL_RETRY`` s -> ErrImagePull again (a
                            kubelet retries the pull) ...; Pending forever
errimagepull:times=N        the first N pods of the name (in the order this kubelet sees them) as
                            ``errimagepull``; later ones as if the annotation were absent (the
                            default rule, or the real command in process mode): a pull that
                            fails, then works once the pod is launched again
createcontainerconfigerror  *ContainerCreating* -> waiting CreateContainerConfigError, forever
=========================== ===================================================================

Common keys: ``delay`` (seconds), ``jitter`` (each timed stage lasts ``uniform(0, jitter)``
longer). Only ``crashloop`` honours the pod's restartPolicy: the rule decides a pod's fate,
so a ``succeed`` pod finishes even with the API's default restartPolicy Always.
"""

from __future__ import annotations

import hashlib
import math
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

SIM_ANNOTATION = "kubestream.io/sim"

CREATE_DELAY = 0.05  # ContainerCreating
RUN_DELAY = 0.1  # Running
BACKOFF = 0.2  # CrashLoopBackOff / ErrImagePull -> ImagePullBackOff
PULL_RETRY = 10.0  # ImagePullBackOff -> ErrImagePull: a kubelet's first image pull back-off (it doubles to 300 s)
SLOWSTART_DELAY = 2.0

_COMMON = frozenset({"delay", "jitter"})
_KEYS: dict[str, frozenset[str]] = {
    "succeed": _COMMON,
    "run": _COMMON,
    "exit": _COMMON | {"code"},
    "oomkilled": _COMMON,
    "crashloop": _COMMON | {"code", "backoff"},
    "slowstart": _COMMON,
    "errimagepull": _COMMON | {"backoff", "times"},
    "createcontainerconfigerror": _COMMON,
}
# kinds whose ``delay`` is the ContainerCreating stage rather than the Running one
_CREATE_STAGE = frozenset({"slowstart", "errimagepull", "createcontainerconfigerror"})


@dataclass(frozen=True)
class Rule:
    kind: str
    exit_code: int = 0
    create_delay: float = CREATE_DELAY
    run_delay: float | None = RUN_DELAY  # None: Running until deleted
    backoff: float = BACKOFF
    jitter: float = 0.0
    message: str = ""  # not part of the grammar: the kubelet's note for an unparsable annotation
    times: int | None = None  # errimagepull only: the first ``times`` pods of a name fail, None: every one


def _number(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{key}={value!r} must be a finite number >= 0")
    return number


def _exit_code(value: str) -> int:
    try:
        code = int(value)
    except ValueError:
        raise ValueError(f"exit code {value!r} is not an integer") from None
    if not 0 <= code <= 255:
        raise ValueError(f"exit code {code} is outside 0..255")
    return code


def parse_rule(text: str) -> Rule:
    """Parse a rule (see the module docstring); ValueError says what is wrong."""
    kind, sep, rest = str(text).strip().partition(":")
    kind = kind.strip().lower()
    if kind not in _KEYS:
        raise ValueError(f"unknown rule {kind!r} in {text!r}; known: {', '.join(_KEYS)}")
    params: dict[str, str] = {}
    for piece in rest.split(",") if sep else ():
        key, eq, value = (part.strip() for part in piece.partition("="))
        if not eq:
            if kind != "exit" or params or not key:
                raise ValueError(f"bad parameter {piece.strip()!r} in {text!r} (expected key=value)")
            key, value = "code", key
        key = key.lower()
        if key not in _KEYS[kind]:
            raise ValueError(f"{kind!r} takes no {key!r} (allowed: {', '.join(sorted(_KEYS[kind]))})")
        if key in params:
            raise ValueError(f"{key!r} given twice in {text!r}")
        params[key] = value
    rule = Rule(kind, exit_code={"oomkilled": 137, "crashloop": 1}.get(kind, 0),
                run_delay=None if kind == "run" else RUN_DELAY,
                create_delay=SLOWSTART_DELAY if kind == "slowstart" else CREATE_DELAY)
    if kind == "exit" and "code" not in params:
        raise ValueError(f"{text!r}: exit needs a code, e.g. exit:3")
    if "code" in params:
        rule = replace(rule, exit_code=_exit_code(params["code"]))
    if "delay" in params:
        delay = _number("delay", params["delay"])
        rule = replace(rule, **{"create_delay" if kind in _CREATE_STAGE else "run_delay": delay})
    if "backoff" in params:
        rule = replace(rule, backoff=_number("backoff", params["backoff"]))
    if "jitter" in params:
        rule = replace(rule, jitter=_number("jitter", params["jitter"]))
    if "times" in params:
        rule = replace(rule, times=_count("times", params["times"]))
    return rule


def _count(key: str, value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} is not an integer") from None
    if count < 0:
        raise ValueError(f"{key}={value!r} must be >= 0")
    return count


class PodOrdinals:
    """Which pod of its name a pod is (0 for the first uid seen with that name, 1 for the next...), for
    rules that depend on the launch attempt (``errimagepull:times=N``). Pure bookkeeping, no I/O."""

    def __init__(self) -> None:
        self._uids: dict[tuple[str, str], list[str]] = {}

    def of(self, namespace: str, name: str, uid: str) -> int:
        uids = self._uids.setdefault((namespace, name), [])
        if uid not in uids:
            uids.append(uid)
        return uids.index(uid)

    def count(self, namespace: str, name: str) -> int:
        """How many pods of this name were seen."""
        return len(self._uids.get((namespace, name), ()))


def rule_for_attempt(rule: Rule, ordinal: int, fallback: Rule | None) -> Rule | None:
    """``rule`` for the ``ordinal``-th pod of its name (0 first); past a ``times`` limit, ``fallback`` (what
    the pod would follow without the annotation: the default rule, None in process mode)."""
    if rule.times is not None and ordinal >= rule.times:
        return fallback
    return rule


# -- plan: what a kubelet does next, from the pod as it is now (level-triggered) -----------------


@dataclass(frozen=True)
class Proc:
    """Process mode: the local subprocess of a pod as this kubelet knows it."""

    started: bool = False
    exit_code: int | None = None  # None while running (or not started)

    @property
    def alive(self) -> bool:
        return self.started and self.exit_code is None


@dataclass(frozen=True)
class Step:
    """The next transition. ``token`` names the state it leaves (dedupes re-seen pods)."""

    token: str
    action: str  # bind create waiting start spawn restart finish crash lost kill delete
    delay: float = 0.0
    jitter: float = 0.0
    exit_code: int = 0
    reason: str = ""
    message: str = ""


def first_container_status(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    name = containers[0].get("name")
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        if cs.get("name") == name:
            return dict(cs)
    return None


def _finish(token: str, code: int, reason: str = "", message: str = "", delay: float = 0.0,
            jitter: float = 0.0) -> Step:
    return Step(token, "finish", delay, jitter, code, reason or ("Completed" if code == 0 else "Error"), message)


def _stopped_by_deletion(pod: Mapping[str, Any], proc: Proc | None) -> Step | None:
    """A graceful delete of a pod whose container runs: as a real kubelet (v1.20 + Docker, see
    tests/fixtures/realnode/deleted-while-running.json), report the container stopped (SIGTERM: exit
    143, or the process's own exit) and the pod's final phase before the pod goes."""
    status = pod.get("status") or {}
    grace = (pod.get("metadata") or {}).get("deletionGracePeriodSeconds")
    cs = first_container_status(pod)
    running = bool(cs) and "running" in ((cs or {}).get("state") or {})
    if not grace or not running or status.get("phase") in ("Succeeded", "Failed"):
        return None
    code = proc.exit_code if proc is not None and proc.exit_code is not None else 143
    return _finish("delete:stopped", code)


def plan(pod: Mapping[str, Any], node: str, rule: Rule | None, proc: Proc | None = None) -> Step | None:
    """The next step for ``pod`` on ``node``; ``rule`` None means process mode (``proc`` given)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    bound = spec.get("nodeName") or ""
    if bound and bound != node:
        return None
    if meta.get("deletionTimestamp"):
        if not bound:
            return None  # the API server deletes unscheduled pods at once
        if proc and proc.alive:
            return Step("delete:kill", "kill")
        stopped = _stopped_by_deletion(pod, proc)
        return stopped or Step("delete", "delete")
    if not bound:
        return Step("bind", "bind")
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    cs = first_container_status(pod)
    if cs is None:
        return Step("create", "create")
    state = cs.get("state") or {}
    waiting = (state.get("waiting") or {}).get("reason") if "waiting" in state else None
    restarts = int(cs.get("restartCount") or 0)
    if rule is None:  # process mode
        proc = proc or Proc()
        if waiting == "ContainerCreating":
            return Step("spawn", "spawn")
        if "running" in state:
            if not proc.started:  # started by another kubelet instance: gone with it
                return _finish("lost", 137, "ContainerStatusUnknown",
                               "The container could not be located when the pod was terminated")
            if proc.exit_code is not None:
                return _finish("exited", proc.exit_code)
        return None
    if waiting == "ContainerCreating":
        if rule.kind == "errimagepull":
            return Step("pull", "waiting", rule.create_delay, rule.jitter, reason="ErrImagePull")
        if rule.kind == "createcontainerconfigerror":
            return Step("config", "waiting", rule.create_delay, rule.jitter, reason="CreateContainerConfigError",
                        message=rule.message)
        return Step("start", "start", rule.create_delay, rule.jitter)
    if waiting == "ErrImagePull":
        return Step("pullbackoff", "waiting", rule.backoff, rule.jitter, reason="ImagePullBackOff")
    if waiting == "ImagePullBackOff" and rule.kind == "errimagepull":
        # the pull is tried again and fails again: a watcher that started (or relisted) while the pod was
        # backing off sees ErrImagePull then, as with a real kubelet
        return Step("repull", "waiting", PULL_RETRY, rule.jitter, reason="ErrImagePull")
    if waiting == "CrashLoopBackOff":
        return Step(f"restart#{restarts}", "restart", rule.backoff, rule.jitter)
    if "running" not in state or rule.run_delay is None:
        return None
    token = f"finish#{restarts}"
    if rule.kind == "crashloop":
        policy = spec.get("restartPolicy") or "Always"
        if policy == "Always" or (policy == "OnFailure" and rule.exit_code != 0):
            return Step(token, "crash", rule.run_delay, rule.jitter, rule.exit_code, "Error")
    reason = "OOMKilled" if rule.kind == "oomkilled" else ""
    return _finish(token, rule.exit_code, reason, delay=rule.run_delay, jitter=rule.jitter)


# -- status payloads (the ``status`` of a merge patch on pods/status) ----------------------------

_WAITING_MESSAGES = {
    "ErrImagePull": 'Failed to pull image "{image}": rpc error: code = NotFound desc = '
                    'failed to pull and unpack image "{image}": not found (simulated)',
    "ImagePullBackOff": 'Back-off pulling image "{image}"',
    "CreateContainerConfigError": 'secret "kubestream-sim" not found (simulated)',
}


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _containers(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((pod.get("spec") or {}).get("containers") or [])


def _conditions(pod: Mapping[str, Any], now: str, ready: bool, reason: str = "", message: str = "") -> list[dict]:
    old = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or ()}

    def cond(kind: str, value: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        text = "True" if value else "False"
        prev = old.get(kind) or {}
        since = prev.get("lastTransitionTime") if prev.get("status") == text else None
        out = {"type": kind, "status": text, "lastProbeTime": None, "lastTransitionTime": since or now}
        return out | ({"reason": reason} if reason else {}) | ({"message": message} if message else {})

    return [cond("Initialized", True), cond("Ready", ready, reason, message),
            cond("ContainersReady", ready, reason, message), cond("PodScheduled", True)]


def _not_ready(pod: Mapping[str, Any], now: str, reason: str = "ContainersNotReady") -> list[dict]:
    names = ",".join(c.get("name", "") for c in _containers(pod))
    return _conditions(pod, now, False, reason, f"containers with unready status: [{names}]")


def _container_status(pod: Mapping[str, Any], container: Mapping[str, Any], state: dict, *, created: bool,
                      ready: bool = False, restarts: int = 0, last_state: dict | None = None) -> dict[str, Any]:
    image, name = container.get("image", ""), container.get("name", "")
    out: dict[str, Any] = {
        "name": name, "image": image, "imageID": "", "ready": ready, "restartCount": restarts,
        "started": ready, "state": state, "lastState": last_state or {},
    }
    if created:
        out["imageID"] = f"docker-pullable://{image}@sha256:{_digest(image)}"
        uid = (pod.get("metadata") or {}).get("uid", "")
        out["containerID"] = f"containerd://{_digest(uid, name, str(restarts))}"
    return out


def _base(pod: Mapping[str, Any], now: str, phase: str, host_ip: str) -> dict[str, Any]:
    status = pod.get("status") or {}
    return {"phase": phase, "hostIP": status.get("hostIP") or host_ip, "startTime": status.get("startTime") or now}


def status_waiting(pod: Mapping[str, Any], now: str, reason: str, *, host_ip: str, message: str = "") -> dict:
    """Pending, every container waiting (ContainerCreating, ErrImagePull, ...)."""
    cs = first_container_status(pod) or {}
    statuses = []
    for c in _containers(pod):
        text = message or _WAITING_MESSAGES.get(reason, "").format(image=c.get("image", ""))
        waiting = {"reason": reason} | ({"message": text} if text else {})
        statuses.append(_container_status(pod, c, {"waiting": waiting}, created=False,
                                          restarts=int(cs.get("restartCount") or 0)))
    return _base(pod, now, "Pending", host_ip) | {"conditions": _not_ready(pod, now), "containerStatuses": statuses}


def status_running(pod: Mapping[str, Any], now: str, *, host_ip: str, pod_ip: str) -> dict:
    """Running and ready; keeps restartCount and lastState (a restart after CrashLoopBackOff)."""
    cs = first_container_status(pod) or {}
    restarts, last = int(cs.get("restartCount") or 0), cs.get("lastState") or {}
    ip = (pod.get("status") or {}).get("podIP") or pod_ip
    statuses = [_container_status(pod, c, {"running": {"startedAt": now}}, created=True, ready=True,
                                  restarts=restarts, last_state=last) for c in _containers(pod)]
    return _base(pod, now, "Running", host_ip) | {
        "podIP": ip, "podIPs": [{"ip": ip}], "conditions": _conditions(pod, now, True),
        "containerStatuses": statuses}


def _terminated(pod: Mapping[str, Any], now: str, code: int, reason: str, message: str, restarts: int) -> dict:
    cs = first_container_status(pod) or {}
    started = ((cs.get("state") or {}).get("running") or {}).get("startedAt") or now
    uid = (pod.get("metadata") or {}).get("uid", "")
    out = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now,
           "containerID": f"containerd://{_digest(uid, (_containers(pod) or [{}])[0].get('name', ''), str(restarts))}"}
    return out | ({"message": message} if message else {})


def status_terminated(pod: Mapping[str, Any], now: str, code: int, reason: str, *, host_ip: str,
                      message: str = "") -> dict:
    """Succeeded (exit 0) or Failed; every container terminated with ``code``."""
    cs = first_container_status(pod) or {}
    restarts = int(cs.get("restartCount") or 0)
    term = {"terminated": _terminated(pod, now, code, reason, message, restarts)}
    statuses = [_container_status(pod, c, term, created=True, restarts=restarts, last_state=cs.get("lastState"))
                for c in _containers(pod)]
    phase = "Succeeded" if code == 0 else "Failed"
    return _base(pod, now, phase, host_ip) | {"conditions": _not_ready(pod, now, "PodCompleted"),
                                               "containerStatuses": statuses}


def status_crashloop(pod: Mapping[str, Any], now: str, code: int, *, host_ip: str) -> dict:
    """The container exited and will be restarted: Running phase, waiting CrashLoopBackOff."""
    cs = first_container_status(pod) or {}
    restarts = int(cs.get("restartCount") or 0)
    last = {"terminated": _terminated(pod, now, code, "Error", "", restarts)}
    statuses = []
    for c in _containers(pod):
        name = c.get("name", "")
        waiting = {"reason": "CrashLoopBackOff",
                   "message": f"back-off restarting failed container {name} in pod {pod['metadata']['name']}"}
        statuses.append(_container_status(pod, c, {"waiting": waiting}, created=True, restarts=restarts + 1,
                                          last_state=last))
    return _base(pod, now, "Running", host_ip) | {"conditions": _not_ready(pod, now), "containerStatuses": statuses}


def status_for(step: Step, pod: Mapping[str, Any], now: str, *, host_ip: str, pod_ip: str) -> dict[str, Any]:
    """The status a kubelet writes for a status-only step (create waiting start restart crash finish)."""
    if step.action == "create":
        return status_waiting(pod, now, "ContainerCreating", host_ip=host_ip)
    if step.action == "waiting":
        return status_waiting(pod, now, step.reason, host_ip=host_ip, message=step.message)
    if step.action in ("start", "restart"):
        return status_running(pod, now, host_ip=host_ip, pod_ip=pod_ip)
    if step.action == "crash":
        return status_crashloop(pod, now, step.exit_code, host_ip=host_ip)
    if step.action == "finish":
        return status_terminated(pod, now, step.exit_code, step.reason, host_ip=host_ip, message=step.message)
    raise ValueError(f"step {step.action!r} writes no pod status")


# -- the node ---------------------------------------------------------------------------------------


def node_conditions(now: str, since: str) -> list[dict[str, str]]:
    """A healthy node's conditions, heartbeat ``now``."""
    rows = (("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"), ("Ready", "True", "KubeletReady"))
    return [{"type": kind, "status": value, "reason": reason, "message": f"{reason} (simulated)",
             "lastHeartbeatTime": now, "lastTransitionTime": since} for kind, value, reason in rows]


def node_object(name: str, now: str, since: str, *, host_ip: str, runtime: str) -> dict[str, Any]:
    """A Ready Node with room for any test load (capacity: 1000 cpu, 4Ti memory, 10k pods)."""
    capacity = {"cpu": "1000", "memory": "4Ti", "pods": "10000", "ephemeral-storage": "10Ti"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubestream.io/simulated": "true"}},
        "status": {"capacity": capacity, "allocatable": capacity, "conditions": node_conditions(now, since),
                   "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": name}],
                   "nodeInfo": {"kubeletVersion": "v1.20.2-kubestream-sim", "operatingSystem": "linux",
                                "architecture": platform.machine(), "kernelVersion": platform.release(),
                                "osImage": "kubestream simulated kubelet", "containerRuntimeVersion": runtime}}}

# -- process mode: what a container would run -----------------------------------------------------

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion from the container's env; ``$$`` escapes, unknown refs stay."""
    return _REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's literal env entries (``valueFrom`` ones cannot be resolved here)."""
    return {e["name"]: str(e.get("value") or "") for e in container.get("env") or () if "valueFrom" not in e}


def container_argv(container: Mapping[str, Any]) -> list[str]:
    """``command + args`` (command replaces the entrypoint; with args only, args run), expanded."""
    env = container_env(container)
    argv = list(container.get("command") or ()) + list(container.get("args") or ())
    return [_expand(str(part), env) for part in argv]
