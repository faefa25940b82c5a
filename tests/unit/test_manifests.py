"""k8s/: every overlay renders with the kubectl 1.20 that devkit/provision.sh builds (its kustomize is
v2.0.3), every rendered object validates against the OpenAPI schemas of a current Kubernetes release
(kubernetes-validate) and KEDA's CRD schema (the subset in keda_schemas.json), and the rendered objects
say what kubestream needs: the settings parse, the pod template passes the pod policy, the probes check
the right component, the roles are bound in the task namespace, the autoscaler reads launch-stream lag.

The objects are applied to a real API server in tests/integration/test_manifests_apply.py."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubestream.keys import LAUNCH_GROUP, Keys
from kubestream.settings import ENV_PREFIX, FIELDS, Settings
from kubestream.signing import Signer
from kubestream.taskkey import TaskKey
from kubestream.workers.podpolicy import PodPolicy, check
from kubestream.workers.podspec import build_pod, load_template_yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "production")
COMPONENTS = ("launcher", "watcher", "janitor")
PROBED = ("launcher", "watcher")  # the components with a `--check`
COMPONENT_NS = "kubestream"
KEDA_KINDS = ("ScaledObject", "TriggerAuthentication")
METRICS_PORT = 9090

Obj = dict[str, Any]


# --------------------------------------------------------------------------- rendering


def kubectl_path() -> Path:
    """The kubectl devkit/provision.sh builds and links (same cache directory), or KUBESTREAM_KUBECTL_BIN."""
    if os.environ.get("KUBESTREAM_KUBECTL_BIN"):
        return Path(os.environ["KUBESTREAM_KUBECTL_BIN"])
    cache_root = os.environ.get("KUBESTREAM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "kubestream")
    return Path(cache_root) / "bin" / "kubectl"


@cache
def _render(overlay: str) -> str:
    kubectl = kubectl_path()
    if not os.access(kubectl, os.X_OK):
        pytest.fail(f"no kubectl at {kubectl}: the manifests are rendered with the kubectl 1.20 (kustomize v2.0.3) "
                    "that `bash devkit/provision.sh` builds from Debian's kubernetes source and links as "
                    "<cache>/kubestream/bin/kubectl (./scripts/setup and ./scripts/test run it; "
                    "KUBESTREAM_KUBECTL_BIN names another)", pytrace=False)
    proc = subprocess.run([str(kubectl), "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed:\n{proc.stderr}"
    return proc.stdout


def render(overlay: str) -> list[Obj]:
    """The objects `kubectl kustomize k8s/overlays/<overlay>` renders (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_render(overlay)) if doc]


def find(objs: Iterable[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: Iterable[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def deployment(objs: Iterable[Obj], component: str) -> Obj:
    return one(objs, "Deployment", f"kubestream-{component}")


def container(dep: Obj) -> Obj:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def pod_of(dep: Obj) -> Obj:
    """The Deployment's pod template as a Pod in the Deployment's namespace."""
    template = copy.deepcopy(dep["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template.get("metadata", {}), "name": "probe", "namespace": dep["metadata"]["namespace"]},
            "spec": template["spec"]}


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def config_map(objs: list[Obj], dep: Obj, name_prefix: str) -> Obj:
    """The ConfigMap the Deployment refers to whose (generated, hashed) name starts with ``name_prefix``."""
    spec = dep["spec"]["template"]["spec"]
    refs = [e["configMapRef"]["name"] for e in container(dep).get("envFrom", []) if "configMapRef" in e]
    refs += [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
    names = [r for r in refs if r.startswith(name_prefix)]
    assert len(names) == 1, (name_prefix, refs)
    return one(objs, "ConfigMap", names[0])


def settings_of(objs: list[Obj], dep: Obj) -> dict[str, str]:
    return dict(config_map(objs, dep, "kubestream-settings")["data"])


def secret_value(objs: list[Obj], name: str, key: str) -> str:
    secret = one(objs, "Secret", name)
    return base64.b64decode(secret["data"][key]).decode()


def env_sources(dep: Obj) -> dict[str, Obj]:
    return {e["name"]: e.get("valueFrom", {"value": e.get("value")}) for e in container(dep).get("env", [])}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objs(overlay: str) -> list[Obj]:
    return render(overlay)


# --------------------------------------------------------------------------- schemas


def test_every_overlay_renders_kubestreams_objects(objs: list[Obj]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for component in COMPONENTS:
        assert ("Deployment", f"kubestream-{component}") in kinds
        assert ("ServiceAccount", f"kubestream-{component}") in kinds
    for kind, name in (("Namespace", COMPONENT_NS), ("Namespace", "airflow-tasks"),
                       ("ClusterRole", "kubestream-launcher"), ("ClusterRole", "kubestream-watcher"),
                       ("PodDisruptionBudget", "kubestream-launcher"), ("NetworkPolicy", "kubestream-components"),
                       ("ScaledObject", "kubestream-launcher"), ("TriggerAuthentication", "kubestream-redis")):
        assert (kind, name) in kinds
    assert len(kinds) == len(objs), "an object is rendered twice"
    for o in objs:
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubestream", o["metadata"]["name"]


def schema_error(obj: Obj) -> str | None:
    """Why ``obj`` does not validate against the OpenAPI schemas of the newest Kubernetes release
    kubernetes-validate ships (strict: unknown fields are errors), or None."""
    version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return f"{obj['kind']}/{obj['metadata']['name']} at {path or '.'}: {exc.message} (Kubernetes {version})"
    return None


def test_every_object_validates_against_the_kubernetes_schemas(objs: list[Obj]) -> None:
    checked = [o for o in objs if o["kind"] not in KEDA_KINDS]
    assert len(checked) == len(objs) - len(KEDA_KINDS)
    errors = [e for e in map(schema_error, checked) if e]
    assert not errors, "\n".join(errors)


def keda_validator(kind: str) -> jsonschema.protocols.Validator:
    schemas = json.loads((Path(__file__).with_name("keda_schemas.json")).read_text())
    schema = schemas[kind]
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_class.check_schema(schema)
    return validator_class(schema)


def test_the_keda_objects_validate_against_kedas_crd_schema(objs: list[Obj]) -> None:
    for kind in KEDA_KINDS:
        found = find(objs, kind)
        assert found, kind
        for obj in found:
            errors = [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in keda_validator(kind).iter_errors(obj)]
            assert not errors, (kind, errors)


def test_the_keda_schema_catches_a_misspelt_field(objs: list[Obj]) -> None:
    scaled = copy.deepcopy(one(objs, "ScaledObject", "kubestream-launcher"))
    scaled["spec"]["minReplicas"] = scaled["spec"].pop("minReplicaCount")  # the HPA's spelling
    assert not keda_validator("ScaledObject").is_valid(scaled)


def test_the_hpa_alternative_validates_and_matches_the_scaled_object(objs: list[Obj]) -> None:
    path = K8S / "base" / "hpa-external-metric.yaml"
    (hpa,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert schema_error(hpa) is None, schema_error(hpa)
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert path.name not in base["resources"], "two autoscalers would fight over the launcher's replicas"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "kubestream-launcher"}
    base_scaled = [d for d in yaml.safe_load_all((K8S / "base" / "keda.yaml").read_text())
                   if d and d["kind"] == "ScaledObject"][0]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        base_scaled["spec"]["minReplicaCount"], base_scaled["spec"]["maxReplicaCount"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["target"]["averageValue"] == base_scaled["spec"]["triggers"][0]["metadata"]["lagCount"]


# --------------------------------------------------------------------------- autoscaling


def test_keda_scales_the_launchers_on_the_lag_of_the_launch_stream(objs: list[Obj]) -> None:
    scaled = one(objs, "ScaledObject", "kubestream-launcher")
    assert scaled["metadata"]["namespace"] == COMPONENT_NS
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment(objs, "launcher")["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    settings = Settings.from_mapping({"key_prefix": "kubestream"})
    assert meta["stream"] == Keys(settings.key_prefix).launch("default") == "{kubestream}:launch:default"
    assert meta["consumerGroup"] == LAUNCH_GROUP
    assert int(meta["lagCount"]) > 0 and "activationLagCount" in meta  # lag-based (XINFO GROUPS)
    assert not {"pendingEntriesCount", "streamLength"} & set(meta)
    assert not {"address", "host", "password", "username"} & set(meta), "credentials belong to the Secret"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    auth = one(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"address", "password"}
    redis_url = env_sources(deployment(objs, "launcher"))["KUBESTREAM_REDIS_URL"]["secretKeyRef"]
    assert {name for name, _ in refs.values()} == {redis_url["name"]}, "one Secret holds every Redis credential"


def test_production_runs_more_and_bigger_launchers_than_dev() -> None:
    dev, prod = (deployment(render(o), "launcher") for o in OVERLAYS)
    assert prod["spec"]["replicas"] > dev["spec"]["replicas"]
    mebibytes = {"Mi": 1, "Gi": 1024}

    def memory(dep: Obj, kind: str) -> int:
        value = container(dep)["resources"][kind]["memory"]
        return int(value[:-2]) * mebibytes[value[-2:]]

    for kind in ("requests", "limits"):
        assert memory(prod, kind) > memory(dev, kind)
    dev_scaled, prod_scaled = (one(render(o), "ScaledObject", "kubestream-launcher") for o in OVERLAYS)
    assert prod_scaled["spec"]["minReplicaCount"] >= prod["spec"]["replicas"]
    assert prod_scaled["spec"]["maxReplicaCount"] > dev_scaled["spec"]["maxReplicaCount"]


# --------------------------------------------------------------------------- the components


def test_each_component_runs_its_command_as_its_own_service_account(objs: list[Obj]) -> None:
    for component in COMPONENTS:
        dep = deployment(objs, component)
        spec = dep["spec"]["template"]["spec"]
        assert dep["metadata"]["namespace"] == COMPONENT_NS
        assert spec["serviceAccountName"] == f"kubestream-{component}"
        assert container(dep)["args"] == ["kubestream", component]
        assert container(dep)["image"] == "kubestream/launcher:0.1.0"
        assert selects(dep["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    assert deployment(objs, "watcher")["spec"]["replicas"] == 2  # leader + standby
    assert deployment(objs, "janitor")["spec"]["replicas"] == 1


def test_probes_check_the_health_of_their_own_component(objs: list[Obj]) -> None:
    for component in PROBED:
        c = container(deployment(objs, component))
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["exec"]["command"] == ["kubestream", component, "--check"], (component, probe)
            # a probe's Python start plus a Redis round trip: not the 1 s default
            assert c[probe]["timeoutSeconds"] >= 5
        liveness = c["livenessProbe"]
        # --check fails once the health key is older than health_ttl_seconds; restarts need it to stay stale
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= Settings().health_ttl_seconds


def test_the_launcher_outlives_an_in_flight_create_and_spreads_across_nodes(objs: list[Obj]) -> None:
    dep = deployment(objs, "launcher")
    spec = dep["spec"]["template"]["spec"]
    settings = Settings.from_env(settings_of(objs, dep))
    assert spec["terminationGracePeriodSeconds"] == 60
    assert spec["terminationGracePeriodSeconds"] > settings.retry_budget_seconds
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for constraint in spec["topologySpreadConstraints"]:
        assert constraint["topologyKey"] == "kubernetes.io/hostname"
        assert selects(constraint["labelSelector"], labels)
    for component in ("launcher", "watcher"):
        pdb = one(objs, "PodDisruptionBudget", f"kubestream-{component}")
        assert selects(pdb["spec"]["selector"], deployment(objs, component)["spec"]["template"]["metadata"]["labels"])
        assert pdb["spec"]["maxUnavailable"] == 1


def test_component_pods_run_restricted_read_only_and_non_root(objs: list[Obj]) -> None:
    restricted = PodPolicy(level="restricted", allowed_service_accounts=("*",))
    for dep in find(objs, "Deployment"):
        pod = pod_of(dep)
        violations = check(pod, restricted, namespace=dep["metadata"]["namespace"])
        assert not violations, (dep["metadata"]["name"], [str(v) for v in violations])
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            ctx = c["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_settings_come_from_the_config_map_and_secrets_only_by_reference(objs: list[Obj], overlay: str) -> None:
    known = {f"{ENV_PREFIX}{f.name.upper()}" for f in FIELDS}
    for component in COMPONENTS:
        dep = deployment(objs, component)
        data = settings_of(objs, dep)
        assert set(data) <= known, f"not settings: {sorted(set(data) - known)}"
        assert not {"KUBESTREAM_REDIS_URL", "KUBESTREAM_SIGNING_KEYS"} & set(data), "secrets in a ConfigMap"
        env = env_sources(dep)
        assert env["KUBESTREAM_REDIS_URL"]["secretKeyRef"] == {"name": "kubestream-redis", "key": "url"}
        if component in PROBED:
            assert env["KUBESTREAM_SIGNING_KEYS"]["secretKeyRef"] == {"name": "kubestream-signing", "key": "keys"}
            assert env["KUBESTREAM_METRICS_HOST"]["fieldRef"]["fieldPath"] == "status.podIP"
            ports = {p["name"]: p["containerPort"] for p in container(dep)["ports"]}
            assert ports["metrics"] == int(data["KUBESTREAM_METRICS_PORT"]) == METRICS_PORT
        else:  # the janitor needs Redis and its ServiceAccount's token (failed task pods), no signing keys
            assert set(env) == {"KUBESTREAM_REDIS_URL"}
            assert dep["spec"]["template"]["spec"].get("automountServiceAccountToken") is not False
        values = {**data, "KUBESTREAM_REDIS_URL": "redis://redis.example:6379/0"}
        settings = Settings.from_env(values)  # every value parses, the cross-field rules hold
        assert settings.namespace == "airflow-tasks"
        if overlay == "production":
            assert settings.create_rate > 0
    # no Secret values anywhere in production: only the dev overlay generates its (dev-only) Secrets
    assert bool(find(objs, "Secret")) == (overlay == "dev")


def test_the_pod_template_is_mounted_where_the_settings_say_and_passes_the_pod_policy(objs: list[Obj]) -> None:
    dep = deployment(objs, "launcher")
    settings = Settings.from_env({**settings_of(objs, dep), "KUBESTREAM_REDIS_URL": "redis://r:6379/0"})
    template_cm = config_map(objs, dep, "kubestream-pod-template")
    volume = next(v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]
                  if v.get("configMap", {}).get("name") == template_cm["metadata"]["name"])
    mount = next(m for m in container(dep)["volumeMounts"] if m["name"] == volume)
    directory, filename = os.path.split(settings.pod_template_file)
    assert mount["mountPath"] == directory and filename in template_cm["data"]
    template = load_template_yaml(template_cm["data"][filename])
    pod = build_pod(key=TaskKey("dag", "task", "run", 1, -1), namespace=settings.namespace,
                    image=settings.worker_image, workload_json="{}", scheduler_id="sched",
                    template=template, pod_override=None)
    assert not check(pod, PodPolicy.from_settings(settings), namespace=settings.namespace)
    # the template also passes `restricted`, the level the task namespace audits and warns about
    assert not check(pod, PodPolicy(level="restricted"), namespace=settings.namespace)
    assert schema_error(pod) is None, schema_error(pod)


def test_the_roles_are_bound_in_the_task_namespace_only(objs: list[Obj]) -> None:
    settings = Settings.from_env({**settings_of(objs, deployment(objs, "launcher")),
                                  "KUBESTREAM_REDIS_URL": "redis://r:6379/0"})
    task_ns = one(objs, "Namespace", settings.namespace)
    assert task_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    assert not find(objs, "ClusterRoleBinding"), "nothing is granted cluster-wide"
    bindings = find(objs, "RoleBinding")
    assert {(b["metadata"]["namespace"], b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == {
        (settings.namespace, "ClusterRole", f"kubestream-{c}") for c in COMPONENTS}
    for b in bindings:
        (subject,) = b["subjects"]
        assert subject["kind"] == "ServiceAccount" and subject["namespace"] == COMPONENT_NS
        assert subject["name"] == b["roleRef"]["name"]
        one(objs, "ServiceAccount", subject["name"])


def test_the_network_policy_lets_components_reach_redis_the_api_and_dns_and_monitoring_scrape(
        objs: list[Obj]) -> None:
    policy = one(objs, "NetworkPolicy", "kubestream-components")
    spec = policy["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    for component in COMPONENTS:
        assert selects(spec["podSelector"], deployment(objs, component)["spec"]["template"]["metadata"]["labels"])
    for other in find(objs, "Deployment"):
        if other["metadata"]["name"] not in {f"kubestream-{c}" for c in COMPONENTS}:  # the dev Redis
            assert not selects(spec["podSelector"], other["spec"]["template"]["metadata"]["labels"])
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": METRICS_PORT}]
    assert ingress["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    egress = {(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]}
    assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 6379), ("TCP", 443), ("TCP", 6443)}


def test_every_namespaced_object_lives_in_the_component_or_the_task_namespace(objs: list[Obj]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole"}
    namespaces = {o["metadata"]["name"] for o in find(objs, "Namespace")}
    assert namespaces == {COMPONENT_NS, "airflow-tasks"}
    for o in objs:
        if o["kind"] in cluster_scoped:
            assert "namespace" not in o["metadata"]
        else:
            assert o["metadata"].get("namespace") in namespaces, (o["kind"], o["metadata"]["name"])


# --------------------------------------------------------------------------- overlays


def test_dev_runs_one_redis_without_eviction_and_with_aof_behind_the_secrets_url() -> None:
    objs = render("dev")
    redis_dep = one(objs, "Deployment", "redis")
    assert redis_dep["spec"]["replicas"] == 1
    args = container(redis_dep)["args"]
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert options["--maxmemory-policy"] == "noeviction"
    assert options["--appendonly"] == "yes"
    service = one(objs, "Service", "redis")
    assert selects({"matchLabels": service["spec"]["selector"]}, redis_dep["spec"]["template"]["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert secret_value(objs, "kubestream-redis", "url") == f"redis://{host}:{port['port']}/0"
    assert secret_value(objs, "kubestream-redis", "address") == f"{host}:{port['port']}"
    assert Settings.from_mapping({"redis_url": secret_value(objs, "kubestream-redis", "url")})


def test_dev_signs_with_a_key_marked_dev_only() -> None:
    objs = render("dev")
    signer = Signer.parse(secret_value(objs, "kubestream-signing", "keys"))
    assert signer.key_id.startswith("dev-only")
    kustomization = (K8S / "overlays" / "dev" / "kustomization.yaml").read_text()
    assert "DEV ONLY, NOT A SECRET" in kustomization


def test_production_has_no_redis_and_no_secret_values() -> None:
    objs = render("production")
    assert not find(objs, "Secret")
    assert {d["metadata"]["name"] for d in find(objs, "Deployment")} == {f"kubestream-{c}" for c in COMPONENTS}
    assert not find(objs, "Service")
