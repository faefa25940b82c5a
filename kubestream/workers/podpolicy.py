"""The launcher's pod policy: what a task pod may be, whatever its launch message says.

A launch message comes from whoever can write to kubestream's Redis, and its
``pod_template`` / ``pod_override`` may set anything a pod can. This module
decides on the *final* pod (template -> generated pod -> pod_override, then the
operator's overlay), just before the launcher creates it. Pure: no I/O, imports
neither airflow nor kubernetes (``policyload`` reads the overlay file).

- :func:`apply_overlay`: the operator's overlay merged last, with
  ``podspec.merge_pods``; every field it sets wins, also ``false``, ``0``, ``""``
  and empty lists or maps (which that merge would treat as unset), except the
  lists it joins (containers by position, initContainers by name, volumes, env,
  envFrom, volumeMounts, ports, volumeDevices) and labels/annotations (added).
  An overlay may not set the pod's name or namespace nor the task's identity
  labels and annotations.
- :func:`enforce`: every rule of the policy's level, on containers,
  initContainers and ephemeralContainers; raises :class:`PolicyViolation`
  naming each rule broken, e.g. ``baseline/privileged: containers[0] (base)
  sets securityContext.privileged``.
- :func:`apply_policy`: both, in that order: the one call the launcher makes
  between ``build_pod`` and the create.
- :func:`template_path_allowed`: whether a task's ``pod_template_file`` lies in
  the operator's ``pod_template_dir``.

Levels: ``baseline`` and ``restricted`` follow the Kubernetes Pod Security
Standards of those names; ``off`` checks nothing. Unless ``off``, these hold
too (rules ``always/...``): no ``nodeName`` (it bypasses the scheduler), the
service account matches ``allowed_service_accounts``, every image matches
``allowed_images`` (patterns as written, ``fnmatch``, case-sensitive; the image
is matched as written, without registry defaulting), and the pod's namespace is
the one its queue maps to.
"""

from __future__ import annotations

import copy
import fnmatch
import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubestream.settings import Settings
from kubestream.taskkey import DISPATCH_ANNOTATION, MANAGED_LABEL, TaskKey, task_annotations
from kubestream.workers.podspec import PodSpecError, load_template_yaml, merge_pods, task_labels

__all__ = [
    "BASELINE",
    "LEVELS",
    "OFF",
    "RESTRICTED",
    "OverlayError",
    "PodPolicy",
    "PolicyViolation",
    "Violation",
    "apply_overlay",
    "apply_policy",
    "check",
    "check_overlay",
    "describe",
    "enforce",
    "parse_overlay",
    "template_path_allowed",
]

Pod = dict[str, Any]

BASELINE = "baseline"
RESTRICTED = "restricted"
OFF = "off"
LEVELS = (BASELINE, RESTRICTED, OFF)

CONTAINER_FIELDS = ("containers", "initContainers", "ephemeralContainers")

# Pod Security Standards, baseline level.
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
BASELINE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
BASELINE_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
PROFILE_TYPES = frozenset({"RuntimeDefault", "Localhost"})  # seccomp and AppArmor (unset also allowed at baseline)
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_POD_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_CONTAINER_ANNOTATION = "container.seccomp.security.alpha.kubernetes.io/"

# Pod Security Standards, restricted level.
RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
})
RESTRICTED_ADD_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})

# Fields apply_overlay joins rather than replaces (podspec.merge_pods).
_JOINED_SPEC = frozenset({"containers", "initContainers", "volumes"})
_JOINED_CONTAINER = frozenset({"volumeMounts", "env", "envFrom", "ports", "volumeDevices"})
_JOINED_META = frozenset({"labels", "annotations"})


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class PodPolicy:
    """A level (``baseline``, ``restricted`` or ``off``), the allow-lists and the operator's overlay."""

    level: str = BASELINE
    allowed_images: tuple[str, ...] = ("*",)
    allowed_service_accounts: tuple[str, ...] = ("default",)
    overlay: Pod | None = None

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"pod policy level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.overlay is not None:
            check_overlay(self.overlay)

    @classmethod
    def from_settings(cls, settings: Settings, overlay: Pod | None = None) -> PodPolicy:
        """The policy the settings describe; ``overlay`` is the parsed ``pod_policy_overlay_file``
        (``policyload.load_pod_policy`` reads it)."""
        return cls(level=settings.pod_policy, allowed_images=settings.allowed_images,
                   allowed_service_accounts=settings.allowed_service_accounts, overlay=overlay)


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str  # e.g. "baseline/privileged"
    detail: str  # e.g. "containers[0] (base) sets securityContext.privileged"

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


class PolicyViolation(Exception):
    """The pod breaks the policy. ``rule``/``detail``: the first rule broken; ``violations``: all of
    them; the message names every one."""

    def __init__(self, rule: str, detail: str, more: Sequence[Violation] = ()) -> None:
        self.rule = rule
        self.detail = detail
        self.violations: tuple[Violation, ...] = (Violation(rule, detail), *more)
        super().__init__("; ".join(str(v) for v in self.violations))

    @property
    def rules(self) -> tuple[str, ...]:
        """Every rule broken, in order, each once."""
        return tuple(dict.fromkeys(v.rule for v in self.violations))


class OverlayError(ValueError):
    """The operator's overlay is not a pod or touches what it may not (name, namespace, task identity)."""


# --------------------------------------------------------------------------- the launcher's call


def apply_policy(pod: Pod, policy: PodPolicy, *, namespace: str) -> Pod:
    """The pod to create: ``pod`` with the policy's overlay applied, checked with :func:`enforce`.

    ``namespace``: the namespace the task's queue maps to (``Settings.namespace_for_queue``).
    Raises :class:`PolicyViolation`; ``pod`` is never mutated.
    """
    final = apply_overlay(pod, policy.overlay) if policy.overlay else copy.deepcopy(pod)
    enforce(final, policy, namespace=namespace)
    return final


def enforce(pod: Pod, policy: PodPolicy, *, namespace: str) -> None:
    """Raise :class:`PolicyViolation` (naming every rule broken) unless ``pod`` passes ``policy``."""
    found = check(pod, policy, namespace=namespace)
    if found:
        raise PolicyViolation(found[0].rule, found[0].detail, found[1:])


def check(pod: Pod, policy: PodPolicy, *, namespace: str) -> list[Violation]:
    """Every violation of ``policy`` in ``pod`` (empty: the pod passes)."""
    if policy.level == OFF:
        return []
    out: list[Violation] = []
    _check_always(pod, policy, namespace, out)
    _check_baseline(pod, out)
    if policy.level == RESTRICTED:
        _check_restricted(pod, out)
    return out


# --------------------------------------------------------------------------- helpers


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _at(obj: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def _spec(pod: Pod) -> dict[str, Any]:
    return _dict(pod.get("spec"))


def _set(value: Any) -> bool:
    """A boolean field that is on (anything but unset or false: a non-boolean the API would refuse
    counts as on, so a malformed value never slips through)."""
    return value is not None and value is not False


def _containers(pod: Pod) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, container)`` for containers, initContainers and ephemeralContainers."""
    spec = _spec(pod)
    for field in CONTAINER_FIELDS:
        for i, item in enumerate(_list(spec.get(field))):
            container = _dict(item)
            yield f"{field}[{i}] ({container.get('name', '?')})", container


def _ctx(container: dict[str, Any]) -> dict[str, Any]:
    return _dict(container.get("securityContext"))


def _annotations(pod: Pod) -> dict[str, Any]:
    return _dict(_at(pod, "metadata", "annotations"))


def _matches(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


# --------------------------------------------------------------------------- always (unless off)


def _check_always(pod: Pod, policy: PodPolicy, namespace: str, out: list[Violation]) -> None:
    spec = _spec(pod)
    node = spec.get("nodeName")
    if node:
        out.append(Violation("always/node-name", f"spec.nodeName is set ({node!r})"))
    names = [("spec.serviceAccountName", spec.get("serviceAccountName")),
             ("spec.serviceAccount", spec.get("serviceAccount"))]
    if not any(value for _, value in names):
        names = [("spec.serviceAccountName (unset: default)", "default")]
    for field, value in names:
        if value is not None and value != "" and not _matches(str(value), policy.allowed_service_accounts):
            allowed = list(policy.allowed_service_accounts)
            out.append(Violation("always/service-account",
                                 f"{field} {value!r} matches none of allowed_service_accounts {allowed}"))
    for where, container in _containers(pod):
        image = container.get("image")
        text = image if isinstance(image, str) else ""
        if not _matches(text, policy.allowed_images):
            out.append(Violation("always/image", f"{where} image {text!r} matches none of "
                                                 f"allowed_images {list(policy.allowed_images)}"))
    actual = _at(pod, "metadata", "namespace")
    if actual != namespace:
        out.append(Violation("always/namespace", f"metadata.namespace is {actual!r}, the task's queue maps to "
                                                 f"{namespace!r}"))


# --------------------------------------------------------------------------- baseline


def _check_baseline(pod: Pod, out: list[Violation]) -> None:
    spec = _spec(pod)
    pod_ctx = _dict(spec.get("securityContext"))
    containers = list(_containers(pod))

    # HostProcess (Windows)
    if _set(_at(pod_ctx, "windowsOptions", "hostProcess")):
        out.append(Violation("baseline/host-process", "spec.securityContext.windowsOptions.hostProcess is set"))
    for where, c in containers:
        if _set(_at(_ctx(c), "windowsOptions", "hostProcess")):
            out.append(Violation("baseline/host-process", f"{where} sets securityContext.windowsOptions.hostProcess"))

    # Host namespaces
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if _set(spec.get(field)):
            out.append(Violation("baseline/host-namespaces", f"spec.{field} is set"))

    # Privileged containers
    for where, c in containers:
        if _set(_ctx(c).get("privileged")):
            out.append(Violation("baseline/privileged", f"{where} sets securityContext.privileged"))

    # Capabilities
    for where, c in containers:
        added = [str(x) for x in _list(_at(_ctx(c), "capabilities", "add"))]
        extra = [x for x in added if x not in BASELINE_CAPABILITIES]
        if extra:
            out.append(Violation("baseline/capabilities", f"{where} adds capabilities {extra}"))

    # HostPath volumes
    for i, volume in enumerate(_list(spec.get("volumes"))):
        v = _dict(volume)
        if v.get("hostPath") is not None:
            path = _at(v, "hostPath", "path")
            out.append(Violation("baseline/host-path", f"volumes[{i}] ({v.get('name', '?')}) is a hostPath "
                                                       f"volume ({path!r})"))

    # Host ports
    for where, c in containers:
        for j, port in enumerate(_list(c.get("ports"))):
            host_port = _dict(port).get("hostPort")
            if host_port not in (None, 0):
                out.append(Violation("baseline/host-ports", f"{where} ports[{j}] sets hostPort {host_port}"))

    # AppArmor
    contexts = [("spec.securityContext", pod_ctx)] + [(where, _ctx(c)) for where, c in containers]
    for where, ctx in contexts:
        kind = _at(ctx, "appArmorProfile", "type")
        if kind is not None and kind not in PROFILE_TYPES:
            out.append(Violation("baseline/apparmor", f"{where} sets appArmorProfile.type {kind!r}"))
    for name, value in _annotations(pod).items():
        if str(name).startswith(APPARMOR_ANNOTATION):
            text = str(value)
            if text != "runtime/default" and not text.startswith("localhost/"):
                out.append(Violation("baseline/apparmor", f"annotation {name} is {text!r}"))

    # SELinux
    for where, ctx in contexts:
        options = ctx.get("seLinuxOptions")
        if options is None:
            continue
        opts = _dict(options)
        if (opts.get("type") or "") not in BASELINE_SELINUX_TYPES:
            out.append(Violation("baseline/selinux", f"{where} sets seLinuxOptions.type {opts.get('type')!r}"))
        for field in ("user", "role"):
            if opts.get(field):
                out.append(Violation("baseline/selinux", f"{where} sets seLinuxOptions.{field} {opts[field]!r}"))

    # /proc mount type
    for where, c in containers:
        proc_mount = _ctx(c).get("procMount")
        if proc_mount not in (None, "Default"):
            out.append(Violation("baseline/proc-mount", f"{where} sets securityContext.procMount {proc_mount!r}"))

    # Seccomp
    for where, ctx in contexts:
        kind = _at(ctx, "seccompProfile", "type")
        if kind is not None and kind not in PROFILE_TYPES:
            out.append(Violation("baseline/seccomp", f"{where} sets seccompProfile.type {kind!r}"))
    for name, value in _annotations(pod).items():
        if (name == SECCOMP_POD_ANNOTATION or str(name).startswith(SECCOMP_CONTAINER_ANNOTATION)) \
                and str(value) == "unconfined":
            out.append(Violation("baseline/seccomp", f"annotation {name} is 'unconfined'"))

    # Sysctls
    for i, sysctl in enumerate(_list(pod_ctx.get("sysctls"))):
        sysctl_name = _dict(sysctl).get("name")
        if sysctl_name not in BASELINE_SYSCTLS:
            out.append(Violation("baseline/sysctls", f"spec.securityContext.sysctls[{i}] sets {sysctl_name!r}"))


# --------------------------------------------------------------------------- restricted


def _check_restricted(pod: Pod, out: list[Violation]) -> None:
    spec = _spec(pod)
    pod_ctx = _dict(spec.get("securityContext"))
    containers = list(_containers(pod))

    # Volume types
    for i, volume in enumerate(_list(spec.get("volumes"))):
        v = _dict(volume)
        kinds = sorted(k for k, value in v.items() if k != "name" and value is not None)
        refused = [k for k in kinds if k not in RESTRICTED_VOLUME_TYPES]
        if refused:
            out.append(Violation("restricted/volume-types", f"volumes[{i}] ({v.get('name', '?')}) is of type "
                                                            f"{', '.join(refused)}"))

    # Privilege escalation: must be set to false
    for where, c in containers:
        if _ctx(c).get("allowPrivilegeEscalation") is not False:
            out.append(Violation("restricted/privilege-escalation",
                                 f"{where} does not set securityContext.allowPrivilegeEscalation to false"))

    # Running as non-root: true on the pod or on every container, false nowhere
    pod_non_root = pod_ctx.get("runAsNonRoot")
    if pod_non_root is not None and pod_non_root is not True:
        out.append(Violation("restricted/run-as-non-root", "spec.securityContext.runAsNonRoot is not true"))
    for where, c in containers:
        mine = _ctx(c).get("runAsNonRoot")
        if mine is not None and mine is not True:
            out.append(Violation("restricted/run-as-non-root", f"{where} sets securityContext.runAsNonRoot false"))
        elif mine is None and pod_non_root is not True:
            out.append(Violation("restricted/run-as-non-root", f"{where} runs with runAsNonRoot unset "
                                                               "(set it on the pod or the container)"))

    # Running as a non-root user
    for where, ctx in [("spec.securityContext", pod_ctx)] + [(w, _ctx(c)) for w, c in containers]:
        if ctx.get("runAsUser") == 0:
            out.append(Violation("restricted/run-as-user", f"{where} sets runAsUser 0"))

    # Seccomp: RuntimeDefault or Localhost on the pod or on every container
    pod_seccomp = _at(pod_ctx, "seccompProfile", "type")
    for where, c in containers:
        mine = _at(_ctx(c), "seccompProfile", "type")
        effective = mine if mine is not None else pod_seccomp
        if effective not in PROFILE_TYPES:
            out.append(Violation("restricted/seccomp", f"{where} runs with seccompProfile.type {effective!r} "
                                                       "(RuntimeDefault or Localhost required)"))

    # Capabilities: drop ALL, add at most NET_BIND_SERVICE
    for where, c in containers:
        caps = _dict(_ctx(c).get("capabilities"))
        if "ALL" not in [str(x) for x in _list(caps.get("drop"))]:
            out.append(Violation("restricted/capabilities", f"{where} does not drop ALL capabilities"))
        extra = [str(x) for x in _list(caps.get("add")) if str(x) not in RESTRICTED_ADD_CAPABILITIES]
        if extra:
            out.append(Violation("restricted/capabilities", f"{where} adds capabilities {extra}"))


# --------------------------------------------------------------------------- overlay


def _identity_keys() -> tuple[frozenset[str], frozenset[str]]:
    """The label and annotation names that identify a task pod (set by ``build_pod``)."""
    sample = TaskKey("dag", "task", "run", 1, 0)
    labels = set(task_labels(sample, "scheduler", airflow_version="3")) | {MANAGED_LABEL}
    annotations = set(task_annotations(sample)) | {DISPATCH_ANNOTATION}
    return frozenset(labels), frozenset(annotations)


def check_overlay(overlay: Pod) -> None:
    """Raise :class:`OverlayError` if the overlay sets the pod's name or namespace, or a label or
    annotation that identifies the task (the launcher's idempotency and the watcher rely on them)."""
    if not isinstance(overlay, dict):
        raise OverlayError(f"the pod policy overlay must be a mapping (a Pod), got {type(overlay).__name__}")
    meta = _dict(overlay.get("metadata"))
    for field in ("name", "generateName", "namespace"):
        if meta.get(field) is not None:
            raise OverlayError(f"the pod policy overlay may not set metadata.{field}")
    labels, annotations = _identity_keys()
    for field, taken in (("labels", labels), ("annotations", annotations)):
        touched = sorted(set(_dict(meta.get(field))) & taken)
        if touched:
            raise OverlayError(f"the pod policy overlay may not set the task's metadata.{field} {touched}")


def parse_overlay(text: str) -> Pod:
    """The overlay from the text of ``pod_policy_overlay_file`` (a YAML Pod); :class:`OverlayError`."""
    try:
        overlay = load_template_yaml(text)
    except PodSpecError as exc:
        raise OverlayError(f"the pod policy overlay is not a valid pod: {exc}") from None
    check_overlay(overlay)
    return overlay


def _force(target: dict[str, Any], source: Mapping[str, Any], joined: frozenset[str]) -> None:
    """Every field ``source`` sets replaces ``target``'s, except the joined ones."""
    for field, value in source.items():
        if field not in joined and value is not None:
            target[field] = copy.deepcopy(value)


def apply_overlay(pod: Pod, overlay: Pod | None) -> Pod:
    """``pod`` with the operator's ``overlay`` merged last (a new dict; ``pod`` is not mutated).

    ``podspec.merge_pods(pod, overlay)``, then every field the overlay sets wins even where that
    merge keeps the pod's value (``false``, ``0``, ``""``, empty lists and maps count as unset
    there): on the pod, its metadata and spec, containers by position, initContainers by name.
    Joined as by the merge: containers, initContainers, volumes, env, envFrom, volumeMounts,
    ports, volumeDevices (the pod's first, then the overlay's) and labels/annotations (added,
    the overlay's value winning). :class:`OverlayError` if the overlay may not be applied
    (:func:`check_overlay`).
    """
    if not overlay:
        return copy.deepcopy(pod)
    check_overlay(overlay)
    merged = merge_pods(pod, overlay, base_name="pod", client_name="overlay")
    _force(merged, overlay, frozenset({"metadata", "spec"}))
    if isinstance(overlay.get("metadata"), dict):
        _force(merged.setdefault("metadata", {}), overlay["metadata"], _JOINED_META)
    over_spec = overlay.get("spec")
    if isinstance(over_spec, dict):
        spec = merged.setdefault("spec", {})
        _force(spec, over_spec, _JOINED_SPEC)
        containers = _list(spec.get("containers"))
        for i, item in enumerate(_list(over_spec.get("containers"))):
            if i < len(containers) and isinstance(item, dict):
                _force(containers[i], item, _JOINED_CONTAINER)
        inits = {c.get("name"): c for c in _list(spec.get("initContainers")) if isinstance(c, dict)}
        for item in _list(over_spec.get("initContainers")):
            if isinstance(item, dict) and item.get("name") in inits:
                _force(inits[item["name"]], item, _JOINED_CONTAINER)
    return merged


# --------------------------------------------------------------------------- pod_template_file confinement


def template_path_allowed(path: str, template_dir: str, *, realpath: Callable[[str], str]) -> bool:
    """Whether a task's ``pod_template_file`` may be read: it must resolve (symlinks and ``..``
    resolved by ``realpath``, ``os.path.realpath`` in production) to a file strictly inside
    ``template_dir`` (resolved the same way). An empty ``template_dir`` allows any path.

    Pure apart from ``realpath``, which the caller passes (tests pass a table of links).
    """
    if not template_dir:
        return True
    if not path or "\x00" in path or "\x00" in template_dir:
        return False
    root = posixpath.normpath(realpath(template_dir))
    target = posixpath.normpath(realpath(path))
    if not posixpath.isabs(root) or not posixpath.isabs(target) or target == root:
        return False
    return posixpath.commonpath([root, target]) == root


def describe(policy: PodPolicy) -> str:
    """One line for the launcher's start-up log."""
    overlay = "with an overlay" if policy.overlay else "no overlay"
    return (f"pod policy {policy.level}, images {','.join(policy.allowed_images)}, service accounts "
            f"{','.join(policy.allowed_service_accounts)}, {overlay}")

