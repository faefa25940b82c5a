"""pod_mutation_hook: the scheduler's merge patch + the launcher's build give the KubernetesExecutor's pod.

The oracle is the provider's ``PodGenerator.construct_pod(..., with_mutation_hook=True)``: the same
template, pod_override and hook go through both, and the pods are compared field by field.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import airflow.settings
import msgpack
import pytest
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from kubestream import messages
from kubestream.executor.mutation import PodMutation, PodMutationHookError, airflow_hook, load_executor_template
from kubestream.kubeapi import ModelCodec
from kubestream.messages import REDACTED, DecodeError, LaunchTask, decode, encode, redact
from kubestream.settings import Settings
from kubestream.signing import SignatureError, Signer, new_key
from kubestream.taskkey import TaskKey
from kubestream.workers.podspec import WORKLOAD_PLACEHOLDER, PodSpecError, build_pod

sanitize = ApiClient().sanitize_for_serialization
KEY = TaskKey("etl", "load", "manual__2026-11-30T00:00:00", 2, 3)
WORKLOAD = json.dumps({"ti": {"id": "x", "dag_id": "etl"}, "token": "secret-jwt"})
SETTINGS = Settings(namespace="airflow", allowed_namespaces=("team-a", "team-b"), worker_image="worker:1")
ARGS = ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", WORKLOAD]

TEMPLATE = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"labels": {"team": "data"}, "annotations": {"from": "template"}},
    "spec": {
        "serviceAccountName": "airflow-worker", "restartPolicy": "Never",
        "containers": [{"name": "base", "image": "template:1", "env": [{"name": "T", "value": "1"}],
                        "volumeMounts": [{"name": "logs", "mountPath": "/logs"}]}],
        "volumes": [{"name": "logs", "emptyDir": {}}],
        "tolerations": [{"key": "pool", "operator": "Equal", "value": "airflow", "effect": "NoSchedule"}],
    },
}
OVERRIDES: dict[str, dict[str, Any] | None] = {
    "none": None,
    "namespace_resources_env": {
        "metadata": {"namespace": "team-a", "labels": {"cost": "x"}},
        "spec": {"containers": [{"name": "base", "resources": {"limits": {"cpu": "2"}},
                                 "env": [{"name": "O", "value": "2"}]}]}},
    "sidecar_and_selector": {
        "spec": {"containers": [{"name": "base"}, {"name": "proxy", "image": "proxy:3"}],
                 "nodeSelector": {"disk": "ssd"}}},
}


def add_label_and_toleration(pod: k8s.V1Pod) -> None:
    pod.metadata.labels["policy"] = "applied"
    pod.spec.tolerations = [*(pod.spec.tolerations or []),
                            k8s.V1Toleration(key="dedicated", operator="Exists", effect="NoSchedule")]


def edit_containers_and_volumes(pod: k8s.V1Pod) -> None:
    base = pod.spec.containers[0]
    base.env = [*(base.env or []), k8s.V1EnvVar(name="POLICY", value="on")]
    base.args = ["--wrapped", *base.args]  # a hook may rewrite the command: the workload still follows
    pod.spec.containers.append(k8s.V1Container(name="log-shipper", image="shipper:1"))
    pod.spec.volumes = [*(pod.spec.volumes or []), k8s.V1Volume(name="cache", empty_dir=k8s.V1EmptyDirVolumeSource())]
    pod.metadata.annotations["policy/checked"] = "yes"


def remove_and_replace(pod: k8s.V1Pod) -> None:
    pod.metadata.annotations.pop("from", None)
    pod.spec.service_account_name = None
    pod.spec.priority_class_name = "batch-low"
    pod.spec.security_context = k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=1000)


def move_namespace(pod: k8s.V1Pod) -> None:
    pod.metadata.namespace = "team-b"
    pod.metadata.labels["moved"] = "true"


def nothing(pod: k8s.V1Pod) -> None:
    pass


HOOKS: dict[str, Callable[[k8s.V1Pod], None]] = {
    "label_toleration": add_label_and_toleration, "containers_volumes": edit_containers_and_volumes,
    "remove_replace": remove_and_replace, "namespace": move_namespace, "noop": nothing,
}


@pytest.fixture
def hook(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Installs ``request.param`` as the deployment's pod_mutation_hook, as airflow_local_settings would."""
    monkeypatch.setattr(airflow.settings, "pod_mutation_hook", request.param)
    yield request.param


def kubestream_pod(template: dict | None, override: dict | None, *, launcher_template: dict | None = None,
                   executor_template: dict | None = None) -> dict:
    """The pod as kubestream makes it: the scheduler's patch, the signed message's round trip, the launcher's
    build (template from the message, else the launcher's own)."""
    mutation = PodMutation(airflow_hook(), SETTINGS, executor_template, ModelCodec())
    msg = LaunchTask(KEY, "default", "42", WORKLOAD, "d1", override, template)
    namespace = SETTINGS.namespace_for_launch(msg.queue, msg.requested_namespace)
    msg = decode(encode(LaunchTask(KEY, "default", "42", WORKLOAD, "d1", override, template,
                                   mutation.patch(msg, namespace))))
    assert isinstance(msg, LaunchTask)
    return build_pod(key=KEY, namespace=SETTINGS.namespace_for_launch(msg.queue, msg.requested_namespace),
                     image=SETTINGS.worker_image, workload_json=WORKLOAD, scheduler_id="42",
                     template=msg.pod_template or launcher_template, pod_override=msg.pod_override,
                     pod_mutation=msg.pod_mutation)


def provider_pod(template: dict, override: dict | None) -> dict:
    pod = PodGenerator.construct_pod(
        dag_id=KEY.dag_id, task_id=KEY.task_id, pod_id=KEY.pod_name(), try_number=KEY.try_number,
        kube_image=None, date=None, args=ARGS,
        pod_override_object=override and PodGenerator.deserialize_model_dict(copy.deepcopy(override)),
        base_worker_pod=PodGenerator.deserialize_model_dict(copy.deepcopy(template)), namespace="airflow",
        scheduler_job_id="42", run_id=KEY.run_id, map_index=KEY.map_index, with_mutation_hook=True)
    out = sanitize(pod)
    out["metadata"]["labels"]["kubestream.io/managed"] = "true"
    return out


def comparable(pod: dict) -> dict:
    """A pod as JSON, minus the provider's ``airflow_version`` label (launchers run without Airflow)."""
    out = json.loads(json.dumps(pod, sort_keys=True))
    out["metadata"]["labels"].pop("airflow_version", None)
    return out


@pytest.mark.parametrize("hook", HOOKS.values(), ids=HOOKS.keys(), indirect=True)
@pytest.mark.parametrize("override", OVERRIDES.values(), ids=OVERRIDES.keys())
@pytest.mark.parametrize("where", ["task_template", "launcher_template"])
def test_the_pod_is_the_kubernetes_executors(hook: Callable[..., None], override: dict | None, where: str) -> None:
    """Template from the task's pod_template_file (in the message), or the deployment's own template
    (the launchers' and the executor's ``pod_template_file`` setting: the same file)."""
    if where == "task_template":
        ours = kubestream_pod(TEMPLATE, override)
    else:
        ours = kubestream_pod(None, override, launcher_template=TEMPLATE, executor_template=TEMPLATE)
    theirs = provider_pod(TEMPLATE, override)
    assert comparable(ours) == comparable(theirs)


@pytest.mark.parametrize("hook", [add_label_and_toleration], indirect=True)
def test_the_pod_has_what_the_hook_added(hook: Callable[..., None]) -> None:
    pod = kubestream_pod(TEMPLATE, OVERRIDES["namespace_resources_env"])
    assert pod["metadata"]["labels"]["policy"] == "applied" and pod["metadata"]["namespace"] == "team-a"
    assert {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert pod["spec"]["containers"][0]["args"] == ARGS


@pytest.mark.parametrize("hook", [edit_containers_and_volumes], indirect=True)
def test_the_patch_carries_no_workload_token(hook: Callable[..., None]) -> None:
    mutation = PodMutation(airflow_hook(), SETTINGS, None, ModelCodec())
    patch = mutation.patch(LaunchTask(KEY, "default", "42", WORKLOAD), "airflow")
    assert patch is not None and "secret-jwt" not in json.dumps(patch)
    assert patch["spec"]["containers"][0]["args"] == ["--wrapped", *ARGS[:-1], WORKLOAD_PLACEHOLDER]


def claim_identity(pod: k8s.V1Pod) -> None:
    pod.metadata.name = "renamed"
    pod.metadata.labels["dag_id"] = "other"
    pod.metadata.labels["kubestream.io/managed"] = "false"
    pod.metadata.annotations["task_id"] = "other"
    pod.metadata.annotations.pop("try_number")
    pod.metadata.labels["extra"] = "kept"


@pytest.mark.parametrize("hook", [claim_identity], indirect=True)
def test_a_hook_cannot_rename_or_disown_the_pod(hook: Callable[..., None]) -> None:
    """Deviation from the provider, as for pod_override: the launcher re-asserts the pod's identity."""
    pod = kubestream_pod(TEMPLATE, None)
    plain = build_pod(key=KEY, namespace="airflow", image="worker:1", workload_json=WORKLOAD, scheduler_id="42",
                      template=TEMPLATE, pod_override=None)
    assert pod["metadata"]["name"] == KEY.pod_name()
    assert pod["metadata"]["labels"] == {**plain["metadata"]["labels"], "extra": "kept"}
    assert pod["metadata"]["annotations"] == plain["metadata"]["annotations"]


def no_image(pod: k8s.V1Pod) -> None:
    pod.spec.containers[0].env = [k8s.V1EnvVar(name="X", value="1")]


@pytest.mark.parametrize("hook", [no_image], indirect=True)
def test_the_launchers_image_fills_a_base_container_the_patch_left_without_one(hook: Callable[..., None]) -> None:
    """The scheduler has no worker_image: the patch's containers carry none; the launcher's goes in."""
    mutation = PodMutation(airflow_hook(), Settings(worker_image=""), None, ModelCodec())
    patch = mutation.patch(LaunchTask(KEY, "default", "42", WORKLOAD), "airflow")
    assert patch is not None and "image" not in patch["spec"]["containers"][0]
    pod = build_pod(key=KEY, namespace="airflow", image="launcher:9", workload_json=WORKLOAD, scheduler_id="42",
                    template=None, pod_override=None, pod_mutation=patch)
    assert pod["spec"]["containers"][0]["image"] == "launcher:9"
    assert pod["spec"]["containers"][0]["env"] == [{"name": "X", "value": "1"}]


def raising(pod: k8s.V1Pod) -> None:
    raise RuntimeError("no tolerations for team x")


@pytest.mark.parametrize("hook", [raising], indirect=True)
def test_a_hook_that_raises_fails_with_its_error(hook: Callable[..., None]) -> None:
    mutation = PodMutation(airflow_hook(), SETTINGS, None, ModelCodec())
    with pytest.raises(PodMutationHookError, match=r"^pod_mutation_hook failed: RuntimeError: no tolerations"):
        mutation.patch(LaunchTask(KEY, "default", "42", WORKLOAD), "airflow")


def test_no_hook_is_found_in_a_deployment_without_one() -> None:
    assert airflow_hook() is None
    assert PodMutation.for_airflow(SETTINGS) is None


def test_a_hook_registered_as_a_policy_plugin_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """airflow_local_settings functions become pluggy hook implementations (Airflow's import_local_settings)."""
    from airflow.policies import hookimpl

    class Policy:
        @staticmethod
        @hookimpl
        def pod_mutation_hook(pod: k8s.V1Pod) -> None:
            pod.metadata.labels["plugin"] = "yes"

    manager = airflow.settings.get_policy_plugin_manager()
    manager.register(Policy)
    try:
        found = airflow_hook()
        assert found is not None
        mutation = PodMutation.for_airflow(SETTINGS)
        assert mutation is not None
        patch = mutation.patch(LaunchTask(KEY, "default", "42", WORKLOAD), "airflow")
        assert patch == {"metadata": {"labels": {"plugin": "yes"}}}
    finally:
        manager.unregister(Policy)
    assert airflow_hook() is None


@pytest.mark.parametrize("hook", [nothing], indirect=True)
def test_a_hook_that_changes_nothing_ships_no_patch(hook: Callable[..., None]) -> None:
    mutation = PodMutation(airflow_hook(), SETTINGS, TEMPLATE, ModelCodec())
    assert mutation.patch(LaunchTask(KEY, "default", "42", WORKLOAD, pod_override=OVERRIDES["sidecar_and_selector"]),
                          "airflow") is None


def test_the_executor_template_is_read_once_and_an_unreadable_one_is_logged(tmp_path, caplog) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text(json.dumps(TEMPLATE))
    assert load_executor_template(str(path)) == TEMPLATE
    assert load_executor_template("") is None
    assert load_executor_template(str(tmp_path / "missing.yaml")) is None
    assert "cannot read pod_template_file" in caplog.text


# ------------------------------------------------------------------------------------- launcher side


@pytest.mark.parametrize("patch, fragment", [
    ({"spec": {"containers": "sidecar"}}, "pod_mutation.spec.containers must be a list"),
    ({"spec": "x"}, "pod_mutation.spec must be a mapping"),
    ({"metadata": {"labels": ["a"]}}, "pod_mutation.metadata.labels must be a mapping"),
    ({"kind": "Deployment"}, "pod_mutation.kind must be 'Pod'"),
    ({"spec": {"containers": [{"name": "base", "env": {"A": "1"}}]}}, "pod_mutation.spec.containers[0].env"),
])
def test_a_malformed_patch_is_a_pod_spec_error(patch: dict, fragment: str) -> None:
    with pytest.raises(PodSpecError) as err:
        build_pod(key=KEY, namespace="airflow", image="i", workload_json=WORKLOAD, scheduler_id="42",
                  template=None, pod_override=None, pod_mutation=patch)
    assert fragment in str(err.value)


def test_a_patch_can_remove_what_the_template_set() -> None:
    pod = build_pod(key=KEY, namespace="airflow", image="i", workload_json=WORKLOAD, scheduler_id="42",
                    template=TEMPLATE, pod_override=None,
                    pod_mutation={"spec": {"tolerations": None, "serviceAccountName": None},
                                  "metadata": {"namespace": None, "name": None}})
    assert "tolerations" not in pod["spec"] and "serviceAccountName" not in pod["spec"]
    assert pod["metadata"]["namespace"] == "airflow" and pod["metadata"]["name"] == KEY.pod_name()


# ------------------------------------------------------------------------------------- messages


@pytest.mark.parametrize("mutation, override, expected", [
    (None, None, None),
    (None, {"metadata": {"namespace": "team-a"}}, "team-a"),
    ({"metadata": {"namespace": "team-b"}}, {"metadata": {"namespace": "team-a"}}, "team-b"),
    ({"metadata": {"labels": {"a": "b"}}}, {"metadata": {"namespace": "team-a"}}, "team-a"),
    ({"metadata": {"namespace": None}}, {"metadata": {"namespace": "team-a"}}, "team-a"),
    ({"metadata": "junk"}, None, None),
])
def test_the_requested_namespace_is_the_hooks_then_the_overrides(mutation, override, expected) -> None:
    assert LaunchTask(KEY, "q", "s", "{}", pod_override=override, pod_mutation=mutation).requested_namespace == expected


def test_a_launch_with_a_patch_round_trips_and_rejects_a_patch_that_is_no_map() -> None:
    msg = LaunchTask(KEY, "q", "s", "{}", "d", None, None, {"spec": {"tolerations": [{"key": "k"}]}})
    assert decode(encode(msg)) == msg
    raw = msgpack.packb({**msgpack.unpackb(encode(msg)), "pod_mutation": ["x"]})
    with pytest.raises(DecodeError, match="pod_mutation must be a map") as err:
        decode(raw)
    assert err.value.key() == KEY  # the launcher can still fail the task when it dead-letters the entry


def test_launches_are_written_at_version_2_and_version_1_launches_still_read() -> None:
    assert messages.SCHEMA_VERSION == 2 and messages.READABLE_VERSIONS == (1, 2) and messages.EVENT_VERSION == 1
    msg = LaunchTask(KEY, "q", "s", "{}", "d", {"metadata": {}}, None, {"metadata": {"labels": {"a": "b"}}})
    assert msgpack.unpackb(encode(msg))["v"] == 2
    # what a scheduler still on version 1 writes: no pod_mutation field
    old = {k: v for k, v in msgpack.unpackb(encode(msg)).items() if k != "pod_mutation"}
    assert decode(msgpack.packb({**old, "v": 1})) == LaunchTask(KEY, "q", "s", "{}", "d", {"metadata": {}}, None)


def test_a_launcher_still_on_version_1_refuses_a_version_2_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Launchers first: a launcher still on 1 dead-letters (loudly, with the task failed) what it cannot read,
    rather than creating a pod without the hook's changes."""
    raw = encode(LaunchTask(KEY, "q", "s", "{}", pod_mutation={"metadata": {"labels": {"a": "b"}}}))
    monkeypatch.setattr(messages, "SCHEMA_VERSION", 1)
    monkeypatch.setattr(messages, "_UPGRADES", {1: messages._as_is})
    monkeypatch.setattr(messages, "READABLE_VERSIONS", (1,))
    with pytest.raises(DecodeError, match=r"unknown schema version 2 \(this build reads 1\)") as err:
        decode(raw)
    assert err.value.key() == KEY


def test_the_patch_is_covered_by_the_signature() -> None:
    signer = Signer.parse(f"k1={new_key()}")
    raw = encode(LaunchTask(KEY, "q", "s", "{}", pod_mutation={"metadata": {"labels": {"a": "b"}}}))
    fields = signer.sign("launch:q", raw)
    tampered = msgpack.packb({**msgpack.unpackb(raw), "pod_mutation": {"spec": {"hostNetwork": True}}})
    as_read = {k if isinstance(k, bytes) else k.encode(): v if isinstance(v, bytes) else str(v).encode()
               for k, v in fields.items()}
    assert signer.verify("launch:q", as_read) == raw
    with pytest.raises(SignatureError):
        signer.verify("launch:q", {**as_read, messages.FIELD: tampered})


def test_dead_letters_redact_the_patchs_env_values() -> None:
    raw = encode(LaunchTask(KEY, "q", "s", "{}", pod_mutation={
        "spec": {"containers": [{"name": "base", "env": [{"name": "PASSWORD", "value": "hunter2"}]}]}}))
    kept = msgpack.unpackb(redact(raw))
    assert kept["pod_mutation"]["spec"]["containers"][0]["env"] == [{"name": "PASSWORD", "value": REDACTED}]


def test_only_the_base_container_gets_the_workload_back() -> None:
    """A sidecar whose args carry the placeholder (from a pod_override or a hook) does not get the token."""
    patch = {"spec": {"containers": [
        {"name": "base", "image": "i", "args": ["run", WORKLOAD_PLACEHOLDER]},
        {"name": "spy", "image": "s", "args": [WORKLOAD_PLACEHOLDER]}]}}
    pod = build_pod(key=KEY, namespace="airflow", image="i", workload_json=WORKLOAD, scheduler_id="42",
                    template=None, pod_override=None, pod_mutation=patch)
    assert [c["args"] for c in pod["spec"]["containers"]] == [["run", WORKLOAD], [WORKLOAD_PLACEHOLDER]]
