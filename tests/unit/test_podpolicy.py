"""Table tests for kubestream.workers.podpolicy: the final task pod is safe whatever the message says.

Pods are built with ``podspec.build_pod`` from a pod_override / pod_template, as a launch
message would carry them.
"""

from __future__ import annotations

import copy
import posixpath
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubestream.settings import Settings, SettingsError
from kubestream.taskkey import TaskKey
from kubestream.workers.podpolicy import (
    OFF,
    OverlayError,
    PodPolicy,
    PolicyViolation,
    apply_overlay,
    apply_policy,
    check,
    enforce,
    parse_overlay,
    template_path_allowed,
)
from kubestream.workers.podspec import build_pod
from kubestream.workers.policyload import load_pod_policy, template_file_allowed

NS = "airflow-tasks"
IMAGE = "apache/airflow:3.3.2"
KEY = TaskKey("etl", "load", "manual__2026-01-01T00:00:00+00:00", 1)
RESTRICTED_CTX: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
}
OVERLAY_YAML = """
apiVersion: v1
kind: Pod
metadata:
  labels: {team: data}
spec:
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 50000
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: base
      imagePullPolicy: IfNotPresent
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
"""
OVERLAY = parse_overlay(OVERLAY_YAML)
TEMPLATE: dict[str, Any] = {  # a realistic operator template
    "metadata": {"labels": {"team": "data"}},
    "spec": {
        "containers": [{"name": "base", "image": IMAGE, "resources": {"requests": {"cpu": "500m"}},
                        "volumeMounts": [{"name": "cfg", "mountPath": "/opt/airflow/config"}]}],
        "volumes": [{"name": "cfg", "configMap": {"name": "airflow-config"}},
                    {"name": "tmp", "emptyDir": {}}],
    },
}
# The pod of the review: what anyone able to XADD to the launch stream could ask for.
FORGED: dict[str, Any] = {
    "spec": {
        "nodeName": "control-plane-1",
        "serviceAccountName": "cluster-admin-sa",
        "hostNetwork": True, "hostPID": True, "hostIPC": True,
        "containers": [{
            "name": "base", "image": "evil/img",
            "command": ["nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "sh"],
            "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
            "volumeMounts": [{"name": "host", "mountPath": "/host"}],
        }],
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
    },
}

BASELINE = PodPolicy()
RESTRICTED = PodPolicy(level="restricted", overlay=OVERLAY)


def task_pod(override: dict[str, Any] | None = None, template: dict[str, Any] | None = None) -> dict[str, Any]:
    return build_pod(key=KEY, namespace=NS, image=IMAGE, workload_json='{"token": "t"}', scheduler_id="sched",
                     template=template, pod_override=override)


def rules(pod: dict[str, Any], policy: PodPolicy, namespace: str = NS) -> set[str]:
    return {v.rule for v in check(pod, policy, namespace=namespace)}


def sidecar(**ctx: Any) -> dict[str, Any]:
    """A pod_override adding a second container, restricted-compliant but for ``ctx``."""
    return {"spec": {"containers": [{"name": "base"},
                                    {"name": "side", "image": IMAGE, "securityContext": {**RESTRICTED_CTX, **ctx}}]}}


# --------------------------------------------------------------------------- the forged pod


def test_the_forged_pod_is_refused_at_baseline_with_each_rule_named() -> None:
    for pod in (task_pod(FORGED), task_pod(template=FORGED)):  # as pod_override or as pod_template
        with pytest.raises(PolicyViolation) as refused:
            enforce(pod, BASELINE, namespace=NS)
        message = str(refused.value)
        assert set(refused.value.rules) == {
            "always/node-name", "always/service-account", "baseline/host-namespaces", "baseline/privileged",
            "baseline/capabilities", "baseline/host-path",
        }
        for fragment in (
            "baseline/privileged: containers[0] (base) sets securityContext.privileged",
            "baseline/host-namespaces: spec.hostNetwork is set",
            "baseline/host-namespaces: spec.hostPID is set",
            "baseline/host-namespaces: spec.hostIPC is set",
            "baseline/capabilities: containers[0] (base) adds capabilities ['SYS_ADMIN']",
            "baseline/host-path: volumes[0] (host) is a hostPath volume ('/')",
            "always/node-name: spec.nodeName is set ('control-plane-1')",
            "always/service-account: spec.serviceAccountName 'cluster-admin-sa' matches none of",
        ):
            assert fragment in message
        assert refused.value.rule == refused.value.violations[0].rule


def test_the_forged_image_is_refused_once_the_operator_narrows_allowed_images() -> None:
    policy = PodPolicy(allowed_images=("apache/airflow:*", "registry.example.com/airflow/*"))
    with pytest.raises(PolicyViolation) as refused:
        enforce(task_pod(FORGED), policy, namespace=NS)
    assert "always/image: containers[0] (base) image 'evil/img' matches none of allowed_images" in str(refused.value)
    assert rules(task_pod(), policy) == set()


def test_the_forged_pod_is_refused_at_restricted_even_with_the_overlay() -> None:
    with pytest.raises(PolicyViolation) as refused:
        apply_policy(task_pod(FORGED), RESTRICTED, namespace=NS)
    assert {"always/node-name", "always/service-account", "baseline/host-namespaces", "baseline/host-path",
            "restricted/volume-types"} <= set(refused.value.rules)


def test_off_allows_everything() -> None:
    policy = PodPolicy(level=OFF, allowed_images=("nothing",), allowed_service_accounts=("nothing",))
    pod = task_pod(FORGED)
    assert check(pod, policy, namespace="elsewhere") == []
    assert apply_policy(pod, policy, namespace="elsewhere") == pod


# --------------------------------------------------------------------------- normal pods pass


@pytest.mark.parametrize("template", [None, TEMPLATE], ids=["no-template", "template"])
def test_a_normal_task_pod_passes_baseline(template: dict[str, Any] | None) -> None:
    pod = task_pod(template=template)
    assert check(pod, BASELINE, namespace=NS) == []
    assert apply_policy(pod, BASELINE, namespace=NS) == pod


@pytest.mark.parametrize("template", [None, TEMPLATE], ids=["no-template", "template"])
def test_a_normal_task_pod_passes_restricted_with_the_overlay_only(template: dict[str, Any] | None) -> None:
    pod = task_pod(template=template)
    assert rules(pod, PodPolicy(level="restricted")) == {
        "restricted/privilege-escalation", "restricted/run-as-non-root", "restricted/seccomp",
        "restricted/capabilities"}
    final = apply_policy(pod, RESTRICTED, namespace=NS)
    assert final["spec"]["automountServiceAccountToken"] is False
    assert final["spec"]["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert final["metadata"]["name"] == KEY.pod_name() and final["metadata"]["namespace"] == NS
    assert final["metadata"]["labels"]["team"] == "data"
    assert final["metadata"]["labels"]["kubestream.io/managed"] == "true"
    assert final["spec"]["containers"][0]["args"] == pod["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("override", [
    {"spec": {"containers": [{"name": "base", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE",
                                                                                             "CHOWN", "KILL"]}}}]}},
    {"spec": {"containers": [{"name": "base", "ports": [{"containerPort": 8080, "hostPort": 0}]}]}},
    {"spec": {"securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
                                  "appArmorProfile": {"type": "RuntimeDefault"},
                                  "seLinuxOptions": {"type": "container_t", "level": "s0:c1,c2"},
                                  "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}]}}},
    {"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/base": "localhost/k8s",
                                  "seccomp.security.alpha.kubernetes.io/pod": "runtime/default"}}},
    {"spec": {"containers": [{"name": "base", "securityContext": {"procMount": "Default", "privileged": False}}],
              "hostNetwork": False, "serviceAccountName": "default"}},
], ids=["allowed-capabilities", "host-port-0", "profiles-sysctls", "annotations", "explicit-defaults"])
def test_what_baseline_allows(override: dict[str, Any]) -> None:
    assert rules(task_pod(override), BASELINE) == set()


# --------------------------------------------------------------------------- each rule alone


BASELINE_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, pod_override, rule, fragment of its detail)
    ("node-name", {"spec": {"nodeName": "n1"}}, "always/node-name", "spec.nodeName is set ('n1')"),
    ("service-account", {"spec": {"serviceAccountName": "admin"}}, "always/service-account",
     "spec.serviceAccountName 'admin'"),
    ("deprecated-service-account", {"spec": {"serviceAccount": "admin"}}, "always/service-account",
     "spec.serviceAccount 'admin'"),
    ("host-process-pod", {"spec": {"securityContext": {"windowsOptions": {"hostProcess": True}}}},
     "baseline/host-process", "spec.securityContext.windowsOptions.hostProcess"),
    ("host-process-container", {"spec": {"containers": [
        {"name": "base", "securityContext": {"windowsOptions": {"hostProcess": True}}}]}},
     "baseline/host-process", "containers[0] (base) sets securityContext.windowsOptions.hostProcess"),
    ("host-network", {"spec": {"hostNetwork": True}}, "baseline/host-namespaces", "spec.hostNetwork"),
    ("host-pid", {"spec": {"hostPID": True}}, "baseline/host-namespaces", "spec.hostPID"),
    ("host-ipc", {"spec": {"hostIPC": True}}, "baseline/host-namespaces", "spec.hostIPC"),
    ("privileged", {"spec": {"containers": [{"name": "base", "securityContext": {"privileged": True}}]}},
     "baseline/privileged", "containers[0] (base) sets securityContext.privileged"),
    ("privileged-init", {"spec": {"initContainers": [
        {"name": "init", "image": IMAGE, "securityContext": {"privileged": True}}]}},
     "baseline/privileged", "initContainers[0] (init) sets securityContext.privileged"),
    ("privileged-ephemeral", {"spec": {"ephemeralContainers": [
        {"name": "debug", "image": IMAGE, "securityContext": {"privileged": True}}]}},
     "baseline/privileged", "ephemeralContainers[0] (debug) sets securityContext.privileged"),
    ("capabilities", {"spec": {"containers": [
        {"name": "base", "securityContext": {"capabilities": {"add": ["CHOWN", "NET_ADMIN"]}}}]}},
     "baseline/capabilities", "adds capabilities ['NET_ADMIN']"),
    ("capabilities-prefixed", {"spec": {"containers": [
        {"name": "base", "securityContext": {"capabilities": {"add": ["CAP_SYS_ADMIN"]}}}]}},
     "baseline/capabilities", "['CAP_SYS_ADMIN']"),
    ("host-path", {"spec": {"volumes": [{"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}}]}},
     "baseline/host-path", "volumes[0] (docker) is a hostPath volume ('/var/run/docker.sock')"),
    ("host-port", {"spec": {"containers": [{"name": "base", "ports": [{"containerPort": 80, "hostPort": 80}]}]}},
     "baseline/host-ports", "containers[0] (base) ports[0] sets hostPort 80"),
    ("apparmor-field", {"spec": {"containers": [
        {"name": "base", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}}]}},
     "baseline/apparmor", "appArmorProfile.type 'Unconfined'"),
    ("apparmor-annotation", {"metadata": {"annotations": {
        "container.apparmor.security.beta.kubernetes.io/base": "unconfined"}}},
     "baseline/apparmor", "annotation container.apparmor.security.beta.kubernetes.io/base is 'unconfined'"),
    ("selinux-type", {"spec": {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}},
     "baseline/selinux", "seLinuxOptions.type 'spc_t'"),
    ("selinux-user", {"spec": {"containers": [
        {"name": "base", "securityContext": {"seLinuxOptions": {"user": "system_u"}}}]}},
     "baseline/selinux", "seLinuxOptions.user 'system_u'"),
    ("proc-mount", {"spec": {"containers": [{"name": "base", "securityContext": {"procMount": "Unmasked"}}]}},
     "baseline/proc-mount", "procMount 'Unmasked'"),
    ("seccomp-pod", {"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}},
     "baseline/seccomp", "spec.securityContext sets seccompProfile.type 'Unconfined'"),
    ("seccomp-container", {"spec": {"containers": [
        {"name": "base", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}]}},
     "baseline/seccomp", "containers[0] (base) sets seccompProfile.type 'Unconfined'"),
    ("seccomp-annotation", {"metadata": {"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}}},
     "baseline/seccomp", "annotation seccomp.security.alpha.kubernetes.io/pod"),
    ("sysctls", {"spec": {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]}}},
     "baseline/sysctls", "sysctls[0] sets 'kernel.msgmax'"),
]


@pytest.mark.parametrize("override, rule, fragment", [c[1:] for c in BASELINE_CASES],
                         ids=[c[0] for c in BASELINE_CASES])
def test_each_baseline_rule_alone(override: dict[str, Any], rule: str, fragment: str) -> None:
    pod = task_pod(override)
    with pytest.raises(PolicyViolation) as refused:
        enforce(pod, BASELINE, namespace=NS)
    assert set(refused.value.rules) == {rule}
    assert fragment in str(refused.value)
    assert check(pod, PodPolicy(level=OFF), namespace=NS) == []


def test_the_namespace_must_be_the_queues() -> None:
    with pytest.raises(PolicyViolation) as refused:
        enforce(task_pod(), BASELINE, namespace="gpu-pool")
    assert str(refused.value) == ("always/namespace: metadata.namespace is 'airflow-tasks', the task's queue maps "
                                  "to 'gpu-pool'")
    assert Settings(namespace=NS, queue_namespaces="gpu=gpu-pool").namespace_for_queue("gpu") == "gpu-pool"


@pytest.mark.parametrize("field", ["containers", "initContainers", "ephemeralContainers"])
def test_the_image_rule_covers_every_container_kind(field: str) -> None:
    policy = PodPolicy(allowed_images=("apache/airflow:*",))
    extra = {"name": "x", "image": "evil/img"}
    override = {"spec": {"containers": [{"name": "base"}, extra]}} if field == "containers" else \
        {"spec": {field: [extra]}}
    assert rules(task_pod(override), policy) == {"always/image"}


@pytest.mark.parametrize("accounts, name, allowed", [
    (("default",), None, True),
    (("default",), "default", True),
    (("default",), "airflow-worker", False),
    (("airflow-*",), "airflow-worker", True),
    (("airflow-*",), None, False),  # unset is "default"
    (("default", "team-?"), "team-a", True),
    (("default", "team-?"), "team-ab", False),
])
def test_service_account_patterns(accounts: tuple[str, ...], name: str | None, allowed: bool) -> None:
    override = {"spec": {"serviceAccountName": name}} if name else None
    assert (rules(task_pod(override), PodPolicy(allowed_service_accounts=accounts)) == set()) == allowed


RESTRICTED_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("volume-types", {"spec": {"volumes": [{"name": "share", "nfs": {"server": "nfs", "path": "/"}}]}},
     "restricted/volume-types", "volumes[0] (share) is of type nfs"),
    ("privilege-escalation", sidecar(allowPrivilegeEscalation=True), "restricted/privilege-escalation",
     "containers[1] (side) does not set securityContext.allowPrivilegeEscalation to false"),
    ("privilege-escalation-unset", {"spec": {"initContainers": [
        {"name": "init", "image": IMAGE, "securityContext": {k: v for k, v in RESTRICTED_CTX.items()
                                                              if k != "allowPrivilegeEscalation"}}]}},
     "restricted/privilege-escalation", "initContainers[0] (init)"),
    ("run-as-non-root", sidecar(runAsNonRoot=False), "restricted/run-as-non-root",
     "containers[1] (side) sets securityContext.runAsNonRoot false"),
    ("run-as-user", sidecar(runAsUser=0), "restricted/run-as-user", "containers[1] (side) sets runAsUser 0"),
    ("seccomp", sidecar(seccompProfile={"type": "Unconfined"}), "restricted/seccomp",
     "containers[1] (side) runs with seccompProfile.type 'Unconfined'"),
    ("capabilities-drop", sidecar(capabilities={"drop": ["NET_RAW"]}), "restricted/capabilities",
     "containers[1] (side) does not drop ALL capabilities"),
    ("capabilities-add", sidecar(capabilities={"drop": ["ALL"], "add": ["CHOWN"]}), "restricted/capabilities",
     "containers[1] (side) adds capabilities ['CHOWN']"),
]


@pytest.mark.parametrize("override, rule, fragment", [c[1:] for c in RESTRICTED_CASES],
                         ids=[c[0] for c in RESTRICTED_CASES])
def test_each_restricted_rule_alone(override: dict[str, Any], rule: str, fragment: str) -> None:
    pod = task_pod(override)
    if rule != "restricted/seccomp":  # Unconfined is refused at baseline already
        assert rules(apply_overlay(pod, OVERLAY), BASELINE) == set()
    with pytest.raises(PolicyViolation) as refused:
        apply_policy(pod, RESTRICTED, namespace=NS)
    assert rule in refused.value.rules
    assert set(refused.value.rules) <= {rule, "baseline/seccomp"}
    assert fragment in str(refused.value)


def test_restricted_allows_a_compliant_sidecar_and_restricted_volumes() -> None:
    override = sidecar(capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
    override["spec"]["volumes"] = [{"name": "s", "secret": {"secretName": "x"}}, {"name": "e", "emptyDir": {}},
                                   {"name": "p", "projected": {"sources": []}}]
    assert rules(apply_overlay(task_pod(override, TEMPLATE), OVERLAY), RESTRICTED) == set()


# --------------------------------------------------------------------------- overlay


def test_the_overlay_wins_over_pod_override() -> None:
    override = {"spec": {
        "automountServiceAccountToken": True, "hostNetwork": True, "tolerations": [{"operator": "Exists"}],
        "securityContext": {"runAsUser": 0},
        "containers": [{"name": "base", "imagePullPolicy": "Always", "stdin": True,
                        "securityContext": {"privileged": True, "allowPrivilegeEscalation": True},
                        "env": [{"name": "FROM_OVERRIDE", "value": "1"}]}],
    }}
    overlay = copy.deepcopy(OVERLAY)
    overlay["spec"].update(hostNetwork=False, tolerations=[])
    overlay["spec"]["containers"][0].update(stdin=False, env=[{"name": "FROM_OVERLAY", "value": "1"}])
    pod = task_pod(override)
    assert {"baseline/privileged", "baseline/host-namespaces"} <= rules(pod, BASELINE)
    final = apply_policy(pod, PodPolicy(level="restricted", overlay=overlay), namespace=NS)
    spec, base = final["spec"], final["spec"]["containers"][0]
    assert spec["automountServiceAccountToken"] is False and spec["hostNetwork"] is False
    assert spec["tolerations"] == []
    assert spec["securityContext"]["runAsUser"] == 50000
    assert base["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert base["imagePullPolicy"] == "IfNotPresent" and base["stdin"] is False
    assert [e["name"] for e in base["env"]] == ["AIRFLOW_IS_K8S_EXECUTOR_POD", "FROM_OVERRIDE", "FROM_OVERLAY"]
    assert pod["spec"]["hostNetwork"] is True  # the input is not mutated


def test_the_overlay_is_applied_by_init_container_name() -> None:
    override = {"spec": {"initContainers": [{"name": "fetch", "image": IMAGE, "tty": True}]}}
    overlay = {"spec": {"initContainers": [{"name": "fetch", "tty": False,
                                            "securityContext": {"privileged": False}}]}}
    final = apply_overlay(task_pod(override), overlay)
    assert final["spec"]["initContainers"] == [
        {"name": "fetch", "image": IMAGE, "tty": False, "securityContext": {"privileged": False}}]


@pytest.mark.parametrize("text, fragment", [
    ("metadata: {name: x}", "may not set metadata.name"),
    ("metadata: {namespace: kube-system}", "may not set metadata.namespace"),
    ("metadata: {generateName: x-}", "may not set metadata.generateName"),
    ("metadata: {labels: {kubestream.io/managed: 'false'}}", "metadata.labels ['kubestream.io/managed']"),
    ("metadata: {labels: {dag_id: other}}", "metadata.labels ['dag_id']"),
    ("metadata: {annotations: {kubestream.io/dispatch: x}}", "metadata.annotations ['kubestream.io/dispatch']"),
    ("kind: Deployment", "kind must be 'Pod'"),
    ("[1, 2]", "must be a YAML mapping"),
    ("spec: {containers: {}}", "containers must be a list"),
])
def test_bad_overlays_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(OverlayError) as bad:
        parse_overlay(text)
    assert fragment in str(bad.value)


def test_policy_refuses_an_unchecked_overlay_and_an_unknown_level() -> None:
    with pytest.raises(OverlayError):
        PodPolicy(overlay={"metadata": {"name": "x"}})
    with pytest.raises(ValueError, match="baseline, restricted, off"):
        PodPolicy(level="strict")


# --------------------------------------------------------------------------- settings and loading


def test_settings_defaults_and_parsing() -> None:
    default = PodPolicy.from_settings(Settings())
    assert (default.level, default.allowed_images, default.allowed_service_accounts, default.overlay) == \
        ("baseline", ("*",), ("default",), None)
    settings = Settings.from_env({"KUBESTREAM_POD_POLICY": "Restricted",
                                  "KUBESTREAM_ALLOWED_IMAGES": "apache/airflow:*, registry.example.com/*",
                                  "KUBESTREAM_ALLOWED_SERVICE_ACCOUNTS": "default,airflow-*"})
    policy = PodPolicy.from_settings(settings)
    assert policy.level == "restricted"
    assert policy.allowed_images == ("apache/airflow:*", "registry.example.com/*")
    assert policy.allowed_service_accounts == ("default", "airflow-*")
    with pytest.raises(SettingsError, match="KUBESTREAM_POD_POLICY='strict': expected one of baseline"):
        Settings.from_env({"KUBESTREAM_POD_POLICY": "strict"})
    with pytest.raises(SettingsError, match="KUBESTREAM_ALLOWED_IMAGES=' , ': expected .* at least one pattern"):
        Settings.from_env({"KUBESTREAM_ALLOWED_IMAGES": " , "})


def test_load_pod_policy_reads_the_overlay_file(tmp_path: Path) -> None:
    path = tmp_path / "overlay.yaml"
    path.write_text(OVERLAY_YAML)
    policy = load_pod_policy(Settings(pod_policy="restricted", pod_policy_overlay_file=str(path)))
    assert policy.overlay == OVERLAY
    assert apply_policy(task_pod(), policy, namespace=NS)["spec"]["automountServiceAccountToken"] is False
    path.write_text("metadata: {namespace: kube-system}")
    with pytest.raises(OverlayError, match="overlay.yaml.*may not set metadata.namespace"):
        load_pod_policy(Settings(pod_policy_overlay_file=str(path)))
    with pytest.raises(OverlayError, match="cannot read pod_policy_overlay_file"):
        load_pod_policy(Settings(pod_policy_overlay_file=str(tmp_path / "missing.yaml")))
    assert load_pod_policy(Settings()).overlay is None


# --------------------------------------------------------------------------- pod_template_file confinement

LINKS = {"/srv/templates/evil.yaml": "/etc/shadow", "/srv/link-to-templates": "/srv/templates",
         "/srv/templates/sub/up": "/srv"}


def fake_realpath(path: str) -> str:
    """``os.path.realpath`` over a table of symlinks (each component resolved, then ``..``)."""
    parts = posixpath.normpath(posixpath.join("/work", path)).split("/")[1:]
    resolved = "/"
    for part in parts:
        resolved = posixpath.join(resolved, part)
        for _ in range(10):
            if resolved not in LINKS:
                break
            resolved = LINKS[resolved]
    return posixpath.normpath(resolved)


@pytest.mark.parametrize("path, template_dir, allowed", [
    ("/anything/at/all.yaml", "", True),
    ("/srv/templates/task.yaml", "/srv/templates", True),
    ("/srv/templates/team/a/task.yaml", "/srv/templates/", True),
    ("/srv/templates/../secrets/x.yaml", "/srv/templates", False),
    ("/srv/templates/evil.yaml", "/srv/templates", False),  # a symlink out
    ("/srv/link-to-templates/task.yaml", "/srv/templates", True),  # a symlink in
    ("/srv/templates/task.yaml", "/srv/link-to-templates", True),  # the directory is a symlink
    ("/srv/templates/sub/up/secrets.yaml", "/srv/templates", False),  # a symlinked directory out
    ("/srv/templates", "/srv/templates", False),
    ("/srv/templates-other/task.yaml", "/srv/templates", False),  # a prefix is not a parent
    ("templates/task.yaml", "/work/templates", True),  # relative to the working directory
    ("", "/srv/templates", False),
    ("/srv/templates/a\x00.yaml", "/srv/templates", False),
])
def test_template_path_allowed(path: str, template_dir: str, allowed: bool) -> None:
    assert template_path_allowed(path, template_dir, realpath=fake_realpath) is allowed


def test_template_file_allowed_resolves_real_symlinks(tmp_path: Path) -> None:
    templates, outside = tmp_path / "templates", tmp_path / "outside"
    templates.mkdir()
    outside.mkdir()
    (templates / "ok.yaml").write_text("kind: Pod")
    (outside / "secret.yaml").write_text("kind: Pod")
    (templates / "escape.yaml").symlink_to(outside / "secret.yaml")
    (templates / "dir").symlink_to(outside)
    assert template_file_allowed(str(templates / "ok.yaml"), str(templates))
    assert not template_file_allowed(str(templates / "escape.yaml"), str(templates))
    assert not template_file_allowed(str(templates / "dir" / "secret.yaml"), str(templates))
    assert not template_file_allowed(str(templates / ".." / "outside" / "secret.yaml"), str(templates))
    assert template_file_allowed(str(outside / "secret.yaml"), "")


def test_podpolicy_imports_neither_kubernetes_nor_airflow() -> None:
    code = ("import kubestream.workers.podpolicy, kubestream.workers.policyload, sys; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'airflow')]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_apply_policy_never_mutates_its_input() -> None:
    pod = task_pod(FORGED)
    before = copy.deepcopy(pod)
    with pytest.raises(PolicyViolation):
        apply_policy(pod, RESTRICTED, namespace=NS)
    assert pod == before
