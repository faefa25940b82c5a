"""Table tests for kubestream.workers.podspec, with the cncf.kubernetes provider as oracle."""

from __future__ import annotations

import copy
import json
import random
import re

import pytest
from airflow import __version__ as airflow_version
from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import annotations_to_key
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator, make_safe_label_value
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from kubestream.taskkey import TaskKey, task_annotations
from kubestream.workers.podspec import (
    PodSpecError,
    build_pod,
    load_template_yaml,
    merge_pods,
    safe_label_value,
    task_labels,
)

sanitize = ApiClient().sanitize_for_serialization
LABEL_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS1123_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def pod(meta: dict | None = None, **spec) -> k8s.V1Pod:
    """A V1Pod; spec kwargs are V1PodSpec kwargs (containers defaults to [])."""
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(**meta) if meta is not None else None,
        spec=k8s.V1PodSpec(**{"containers": [], **spec}) if spec else None,
    )


def c(name: str, **kw) -> k8s.V1Container:
    return k8s.V1Container(name=name, **kw)


def env(**kv: str) -> list[k8s.V1EnvVar]:
    return [k8s.V1EnvVar(name=k, value=v) for k, v in kv.items()]


def res(limits=None, requests=None) -> k8s.V1ResourceRequirements:
    return k8s.V1ResourceRequirements(limits=limits, requests=requests)


AFFINITY = k8s.V1Affinity(
    node_affinity=k8s.V1NodeAffinity(
        required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
            node_selector_terms=[
                k8s.V1NodeSelectorTerm(
                    match_expressions=[
                        k8s.V1NodeSelectorRequirement(key="pool", operator="In", values=["airflow"])
                    ]
                )
            ]
        )
    )
)
TOLERATION = k8s.V1Toleration(key="dedicated", operator="Equal", value="airflow", effect="NoSchedule")

# (id, base, client); None base is compared with the provider on an empty V1Pod (it would crash on None).
MERGE_CASES = [
    ("containers_same_name",
     pod(containers=[c("base", image="tmpl:1", command=["bash"], image_pull_policy="Always")]),
     pod(containers=[c("base", args=["run"], image_pull_policy="IfNotPresent")])),
    ("containers_positional_not_by_name",
     pod(containers=[c("a", image="a:1"), c("b", image="b:1")]),
     pod(containers=[c("x", args=["go"])])),
    ("extra_client_containers",
     pod(containers=[c("base", image="img")]),
     pod(containers=[c("base", args=["1"]), c("sidecar", image="side")])),
    ("extra_base_containers",
     pod(containers=[c("base", image="img"), c("sidecar", image="side")]),
     pod(containers=[c("base", args=["1"])])),
    ("env_appended",
     pod(containers=[c("base", env=env(A="1", B="2"),
                       env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="cm"))])]),
     pod(containers=[c("base", env=env(B="3", C="4"),
                       env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name="s"))])])),
    ("env_only_base_or_empty_client",
     pod(containers=[c("base", env=env(A="1"))]),
     pod(containers=[c("base", env=[], ports=[k8s.V1ContainerPort(container_port=80)])])),
    ("volumes_and_mounts",
     pod(containers=[c("base", volume_mounts=[k8s.V1VolumeMount(name="logs", mount_path="/logs")])],
         volumes=[k8s.V1Volume(name="logs", empty_dir=k8s.V1EmptyDirVolumeSource())]),
     pod(containers=[c("base", volume_mounts=[k8s.V1VolumeMount(name="data", mount_path="/data")],
                       volume_devices=[k8s.V1VolumeDevice(name="blk", device_path="/dev/x")])],
         volumes=[k8s.V1Volume(name="data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
             claim_name="pvc"))])),
    ("resources_replaced_whole",
     pod(containers=[c("base", resources=res({"cpu": "2", "memory": "1Gi"}, {"cpu": "1"}))]),
     pod(containers=[c("base", resources=res({"memory": "4Gi"}))])),
    ("resources_empty_object_still_wins",
     pod(containers=[c("base", resources=res({"cpu": "2"}))]),
     pod(containers=[c("base", resources=res())])),
    ("resources_only_in_base",
     pod(containers=[c("base", resources=res({"cpu": "2"}, {"cpu": "1"}))]),
     pod(containers=[c("base", image="x")])),
    ("metadata_labels_annotations",
     pod({"labels": {"a": "1", "b": "2"}, "annotations": {"x": "1"}, "finalizers": ["f1"],
          "owner_references": [k8s.V1OwnerReference(api_version="v1", kind="Pod", name="o", uid="u1")]}),
     pod({"labels": {"b": "3", "c": "4"}, "annotations": {"y": "2"}, "finalizers": ["f2"]})),
    ("metadata_empty_maps",
     pod({"labels": {}, "annotations": {"keep": "me"}, "namespace": "ns1"}),
     pod({"labels": {"a": "1"}, "annotations": {}})),
    ("name_override",
     pod({"name": "tmpl", "namespace": "ns1", "generate_name": "g-"}),
     pod({"name": "override", "namespace": "ns2"})),
    ("security_context",
     pod(containers=[c("base", security_context=k8s.V1SecurityContext(run_as_user=1000, privileged=False))],
         security_context=k8s.V1PodSecurityContext(run_as_user=50000, fs_group=0, run_as_non_root=True)),
     pod(containers=[c("base", security_context=k8s.V1SecurityContext(read_only_root_filesystem=True))],
         security_context=k8s.V1PodSecurityContext(fs_group=100))),
    ("scheduling_fields",
     pod(node_selector={"pool": "a", "zone": "z"}, tolerations=[TOLERATION], priority_class_name="low"),
     pod(node_selector={"pool": "b"}, affinity=AFFINITY, tolerations=[])),
    ("empty_node_selector_is_unset",
     pod(node_selector={"pool": "a"}, host_network=True),
     pod(node_selector={}, host_network=False)),
    ("init_containers_by_name",
     pod(init_containers=[c("init-a", image="a", env=env(A="1")), c("init-b", image="b")]),
     pod(init_containers=[c("init-c", image="c"), c("init-a", args=["x"], env=env(A2="2"))])),
    ("init_containers_one_side",
     pod(init_containers=[c("init", image="i")], containers=[c("base")]),
     pod(containers=[c("base", image="x")])),
    ("init_containers_client_only",
     pod(containers=[c("base")]),
     pod(init_containers=[c("init", image="i")], containers=[c("base", image="x")])),
    ("none_client", pod({"name": "b"}, containers=[c("base", image="x")]), None),
    ("none_base", None, pod({"name": "c"}, containers=[c("base", image="x")])),
    ("image_template_vs_override",
     pod(containers=[c("base", image="template:1")]),
     pod(containers=[c("base", image="override:2")])),
    ("image_template_kept",
     pod(containers=[c("base", image="template:1")]),
     pod(containers=[c("base", image="")])),
    ("service_account",
     pod(service_account_name="tmpl-sa", automount_service_account_token=True, termination_grace_period_seconds=30),
     pod(service_account_name="override-sa", automount_service_account_token=False,
         termination_grace_period_seconds=0)),
    ("metadata_only_client",
     pod({"name": "b"}, restart_policy="Never", containers=[c("base", image="x")]),
     pod({"labels": {"team": "t"}})),
    ("spec_only_client",
     pod({"name": "b", "labels": {"a": "1"}}),
     pod(containers=[c("base", image="x")], restart_policy="OnFailure")),
    ("top_level_fields",
     k8s.V1Pod(api_version="v1", kind="Pod"),
     k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="x"))),
    ("empty_client", pod({"name": "b"}, containers=[c("base", image="x")]), k8s.V1Pod()),
]


def oracle(base: k8s.V1Pod | None, client: k8s.V1Pod | None) -> dict:
    base = k8s.V1Pod() if base is None else base
    return sanitize(PodGenerator.reconcile_pods(copy.deepcopy(base), copy.deepcopy(client)))


@pytest.mark.parametrize(("base", "client"), [case[1:] for case in MERGE_CASES], ids=[c[0] for c in MERGE_CASES])
def test_merge_pods_matches_provider(base, client):
    b, cl = sanitize(base), sanitize(client)
    b0, c0 = copy.deepcopy(b), copy.deepcopy(cl)
    assert merge_pods(b, cl) == oracle(base, client)
    assert (b, cl) == (b0, c0), "inputs mutated"


def _rand_container(rng: random.Random, names: list[str]) -> k8s.V1Container:
    def maybe(value):
        return value if rng.random() < 0.5 else None

    return c(
        rng.choice(names),
        image=maybe(rng.choice(["", "img:1", "img:2"])),
        args=maybe(rng.choice([[], ["a"], ["b", "c"]])),
        env=maybe(env(**{k: str(rng.randint(0, 9)) for k in rng.sample("ABC", rng.randint(0, 2))})),
        ports=maybe([k8s.V1ContainerPort(container_port=p) for p in rng.sample([80, 443], rng.randint(0, 1))]),
        resources=maybe(res(maybe({"cpu": rng.choice(["1", "2"])}), maybe({"memory": "1Gi"}))),
        stdin=maybe(rng.choice([True, False])),
    )


def _rand_pod(rng: random.Random) -> k8s.V1Pod | None:
    if rng.random() < 0.1:
        return None
    maybe = lambda v: v if rng.random() < 0.5 else None  # noqa: E731
    meta = maybe(dict(
        name=maybe(rng.choice(["", "n1", "n2"])),
        labels=maybe({k: "v" + k for k in rng.sample("abc", rng.randint(0, 2))}),
        annotations=maybe({k: "w" + k for k in rng.sample("xyz", rng.randint(0, 2))}),
        finalizers=maybe(rng.sample(["f1", "f2"], rng.randint(0, 2))),
    ))
    spec = maybe(dict(
        containers=[_rand_container(rng, ["base", "side", "x"]) for _ in range(rng.randint(0, 3))],
        init_containers=maybe([_rand_container(rng, ["i1", "i2"]) for _ in range(rng.randint(0, 2))]),
        volumes=maybe([k8s.V1Volume(name=n) for n in rng.sample(["v1", "v2"], rng.randint(0, 2))]),
        node_selector=maybe({k: "1" for k in rng.sample("pq", rng.randint(0, 2))}),
        host_network=maybe(rng.choice([True, False])),
        termination_grace_period_seconds=maybe(rng.choice([0, 10])),
        security_context=maybe(k8s.V1PodSecurityContext(run_as_user=maybe(rng.choice([0, 1000])))),
    ))
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(**meta) if meta is not None else None,
        spec=k8s.V1PodSpec(**spec) if spec is not None else None,
    )


@pytest.mark.parametrize("seed", range(8))
def test_merge_pods_random_matches_provider(seed):
    rng = random.Random(seed)
    for _ in range(100):
        base, client = _rand_pod(rng), _rand_pod(rng)
        assert merge_pods(sanitize(base), sanitize(client)) == oracle(base, client), (base, client)


def test_merge_pods_none_none():
    assert merge_pods(None, None) == {}


def test_merge_pods_result_shares_nothing_mutable_with_inputs():
    base = {"spec": {"containers": [{"name": "base", "env": [{"name": "A", "value": "1"}]}]}}
    out = merge_pods(base, None)
    out["spec"]["containers"][0]["env"].append({"name": "B"})
    assert base == {"spec": {"containers": [{"name": "base", "env": [{"name": "A", "value": "1"}]}]}}


# --------------------------------------------------------------------------- labels / annotations

LABEL_INPUTS = [
    "", "a", "my_dag", "my.dag-1", "-leading", "trailing-", "_both_", "..dots..", "a.b.c",
    "with space", "tab\tin", "new\nline", "日本語", "dag_日本", "é", "ü-ber", "a.é", "a.éb",
    "x" * 63, "x" * 64, "x" * 250, "-" + "y" * 70 + "-", "a" * 52 + ".-b", "a" * 53 + "." + "b" * 20,
    "manual__2024-01-01T00:00:00+00:00", "scheduled__2024-01-01T00:00:00.123456+00:00",
    "!!!", "___", "A_b-C.d", "123", "0", "emoji😀dag", "tricky-\n", "x\n",
]


@pytest.mark.parametrize("value", LABEL_INPUTS)
def test_safe_label_value_matches_provider(value):
    assert safe_label_value(value) == make_safe_label_value(value)


def test_safe_label_value_random_matches_provider():
    rng = random.Random(7)
    alphabet = "aZ09-_.:+ /\n\té日😀"
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        assert safe_label_value(value) == make_safe_label_value(value), repr(value)


KEYS = [
    TaskKey("dag", "task", "manual__2024-01-01T00:00:00+00:00", 1),
    TaskKey("dag", "group.task", "scheduled__2024-01-01T00:00:00+00:00", 3, 7),
    TaskKey("日本語のダグ", "タスク", "run_é", 2, 0),
    TaskKey("d" * 250, "t" * 250, "r" * 250, 12, 1234),
    TaskKey("__dag__", "-task-", "run.with.dots.", 1),
]
KEY_IDS = ["plain", "mapped", "unicode", "long", "symbols"]


@pytest.mark.parametrize("key", KEYS, ids=KEY_IDS)
def test_annotations_round_trip(key):
    assert tuple(annotations_to_key(task_annotations(key))) == key.as_tuple()


@pytest.mark.parametrize("key", KEYS, ids=KEY_IDS)
@pytest.mark.parametrize("version", [None, airflow_version])
def test_task_labels_match_provider(key, version):
    expected = PodGenerator.build_labels_for_k8s_executor_pod(
        dag_id=key.dag_id, task_id=key.task_id, try_number=key.try_number, airflow_worker="42",
        map_index=key.map_index, run_id=key.run_id, include_version=version is not None,
    )
    labels = task_labels(key, "42", airflow_version=version)
    assert labels.pop("kubestream.io/managed") == "true"
    # The provider emits "-<hash>" (invalid) when nothing of a value survives; we drop the "-".
    assert labels == {k: v.lstrip("-") for k, v in expected.items()}
    for value in labels.values():
        assert LABEL_RE.match(value) and len(value) <= 63, value


# --------------------------------------------------------------------------- build_pod

TEMPLATE = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "placeholder", "labels": {"team": "data"}, "annotations": {"note": "tmpl"}},
    "spec": {
        "restartPolicy": "Never",
        "serviceAccountName": "airflow-worker",
        "containers": [{"name": "base", "image": "template:1", "imagePullPolicy": "IfNotPresent",
                        "env": [{"name": "T", "value": "1"}]}],
        "volumes": [{"name": "logs", "emptyDir": {}}],
    },
}
WORKLOAD = json.dumps({"ti": {"id": "x", "dag_id": "dag"}, "token": "t", "unicode": "é"})


def build(key=KEYS[1], *, template=TEMPLATE, override=None, image="default:1", **kw):
    return build_pod(key=key, namespace="airflow", image=image, workload_json=WORKLOAD, scheduler_id="42",
                     template=template, pod_override=override, **kw)


def provider_pod(key, template, override, kube_image):
    pod_ = PodGenerator.construct_pod(
        dag_id=key.dag_id, task_id=key.task_id, pod_id=key.pod_name(), try_number=key.try_number,
        kube_image=kube_image, date=None,
        args=["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", WORKLOAD],
        pod_override_object=override and PodGenerator.deserialize_model_dict(override),
        base_worker_pod=PodGenerator.deserialize_model_dict(template), namespace="airflow",
        scheduler_job_id="42", run_id=key.run_id, map_index=key.map_index,
    )
    out = sanitize(pod_)
    out["metadata"]["labels"]["kubestream.io/managed"] = "true"
    return out


OVERRIDES = [
    None,
    {"spec": {"containers": [{"name": "base", "image": "override:2", "resources": {"limits": {"cpu": "2"}},
                              "env": [{"name": "O", "value": "1"}]}]}},
    {"metadata": {"labels": {"extra": "x"}, "annotations": {"a": "b"}},
     "spec": {"serviceAccountName": "sa2", "containers": [{"name": "base"}, {"name": "side", "image": "s"}],
              "initContainers": [{"name": "init", "image": "i"}], "nodeSelector": {"pool": "p"}}},
]


@pytest.mark.parametrize("override", OVERRIDES, ids=["none", "image_resources_env", "meta_spec"])
@pytest.mark.parametrize("key", KEYS[:2], ids=KEY_IDS[:2])
def test_build_pod_matches_construct_pod(key, override):
    ours = build(key, override=override, airflow_version=airflow_version)
    assert ours == provider_pod(key, TEMPLATE, override, kube_image=None)


def test_build_pod_matches_construct_pod_without_template_image():
    template = copy.deepcopy(TEMPLATE)
    del template["spec"]["containers"][0]["image"]
    ours = build(template=template, airflow_version=airflow_version)
    assert ours["spec"]["containers"][0]["image"] == "default:1"
    assert ours == provider_pod(KEYS[1], template, None, kube_image="default:1")


@pytest.mark.parametrize("key", KEYS, ids=KEY_IDS)
def test_build_pod_name_labels_annotations(key):
    first, second = build(key), build(key)
    assert first == second
    name = first["metadata"]["name"]
    assert name == key.pod_name() and len(name) <= 63 and DNS1123_RE.match(name)
    labels = first["metadata"]["labels"]
    assert labels["kubestream.io/managed"] == "true" and labels["team"] == "data"
    for k, v in labels.items():
        assert LABEL_RE.match(v) and len(v) <= 63, (k, v)
    assert tuple(annotations_to_key(first["metadata"]["annotations"])) == key.as_tuple()
    assert first["metadata"]["namespace"] == "airflow"
    assert (first["apiVersion"], first["kind"]) == ("v1", "Pod")


def test_build_pod_args_env_and_template_image():
    pod_ = build()
    base = pod_["spec"]["containers"][0]
    assert base["args"] == ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string",
                            WORKLOAD]
    assert base["image"] == "template:1"
    assert base["env"] == [{"name": "T", "value": "1"}, {"name": "AIRFLOW_IS_K8S_EXECUTOR_POD", "value": "True"}]
    assert pod_["spec"]["volumes"] == [{"name": "logs", "emptyDir": {}}]


def test_build_pod_without_template():
    pod_ = build(template=None)
    assert pod_["spec"]["containers"][0]["image"] == "default:1"
    assert pod_["spec"]["restartPolicy"] == "Never"
    assert pod_["metadata"]["name"] == KEYS[1].pod_name()


def test_build_pod_override_wins():
    override = {"spec": {"serviceAccountName": "o", "restartPolicy": "OnFailure",
                         "containers": [{"name": "base", "image": "o:3", "args": ["custom"],
                                         "env": [{"name": "T", "value": "2"}]}]}}
    pod_ = build(override=override)
    base = pod_["spec"]["containers"][0]
    assert (base["image"], base["args"]) == ("o:3", ["custom"])
    assert base["env"][-1] == {"name": "T", "value": "2"}
    assert pod_["spec"]["serviceAccountName"] == "o" and pod_["spec"]["restartPolicy"] == "OnFailure"


def test_build_pod_identity_cannot_be_overridden():
    key = KEYS[1]
    override = {"metadata": {"name": "mine", "namespace": "elsewhere", "labels": {"dag_id": "x", "own": "1"},
                             "annotations": {"run_id": "other", "keep": "1"}}}
    pod_ = build(key, override=override)
    meta = pod_["metadata"]
    assert (meta["name"], meta["namespace"]) == (key.pod_name(), "airflow")
    assert meta["labels"]["dag_id"] == "dag" and meta["labels"]["own"] == "1"
    assert meta["annotations"]["run_id"] == key.run_id and meta["annotations"]["keep"] == "1"


def test_build_pod_restart_policy_default_and_template_kept():
    template = copy.deepcopy(TEMPLATE)
    del template["spec"]["restartPolicy"]
    assert build(template=template)["spec"]["restartPolicy"] == "Never"
    template["spec"]["restartPolicy"] = "OnFailure"
    assert build(template=template)["spec"]["restartPolicy"] == "OnFailure"


def test_build_pod_does_not_mutate_inputs():
    template, override = copy.deepcopy(TEMPLATE), copy.deepcopy(OVERRIDES[2])
    build(template=template, override=override)
    assert template == TEMPLATE and override == OVERRIDES[2]


# --------------------------------------------------------------------------- errors / YAML

ERROR_CASES = [
    ({"spec": {"containers": {"name": "base"}}}, "pod_override.spec.containers must be a list"),
    ({"spec": {"containers": ["base"]}}, "pod_override.spec.containers[0] must be a mapping"),
    ({"spec": {"containers": [{"name": "base", "env": {"A": "1"}}]}},
     "pod_override.spec.containers[0].env must be a list"),
    ({"spec": {"initContainers": {"name": "i"}}}, "pod_override.spec.initContainers must be a list"),
    ({"spec": {"volumes": {"name": "v"}}}, "pod_override.spec.volumes must be a list"),
    ({"spec": ["containers"]}, "pod_override.spec must be a mapping"),
    ({"metadata": "name"}, "pod_override.metadata must be a mapping"),
    ({"metadata": {"labels": ["a"]}}, "pod_override.metadata.labels must be a mapping"),
    ({"metadata": {"finalizers": "f"}}, "pod_override.metadata.finalizers must be a list"),
    ({"kind": "Deployment"}, "pod_override.kind must be 'Pod'"),
    ("not a pod", "pod_override must be a mapping"),
]


@pytest.mark.parametrize(("override", "message"), ERROR_CASES, ids=[m for _, m in ERROR_CASES])
def test_build_pod_errors_name_the_field(override, message):
    with pytest.raises(PodSpecError) as err:
        build(override=override)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_template_errors_and_merge_errors_name_the_input():
    with pytest.raises(PodSpecError, match=r"template\.spec\.containers must be a list"):
        build(template={"spec": {"containers": "x"}})
    with pytest.raises(PodSpecError, match=r"base\.metadata\.annotations must be a mapping"):
        merge_pods({"metadata": {"annotations": "x"}}, {})
    with pytest.raises(PodSpecError, match=r"client\.spec\.containers\[0\]\.ports must be a list"):
        merge_pods({}, {"spec": {"containers": [{"name": "b", "ports": 80}]}})


def test_load_template_yaml():
    text = """
apiVersion: v1
kind: Pod
metadata:
  name: placeholder
spec:
  restartPolicy: Never
  nodeSelector:
  containers:
    - name: base
      image: template:1
"""
    pod_ = load_template_yaml(text)
    assert pod_["spec"]["containers"] == [{"name": "base", "image": "template:1"}]
    assert "nodeSelector" not in pod_["spec"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must be a YAML mapping"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("just a string", "must be a YAML mapping"),
        ("spec: [unclosed", "not valid YAML"),
        ("a: 1\n---\nb: 2\n", "not valid YAML"),
        ("spec:\n  containers:\n    name: base\n", "template.spec.containers must be a list"),
        ("kind: Service\n", "template.kind must be 'Pod'"),
    ],
)
def test_load_template_yaml_errors(text, message):
    with pytest.raises(PodSpecError, match=re.escape(message)):
        load_template_yaml(text)
