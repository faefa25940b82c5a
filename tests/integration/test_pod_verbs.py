"""KubernetesExecutor CLI parity: `kubestream cleanup-pods` and `airflow kubestream generate-dag-yaml`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from devkit.procs import wait_for
from devkit.workloads import SIM_ANNOTATION
from kubestream.kubeapi import PodApi

REPO = Path(__file__).resolve().parents[2]


def test_cleanup_pods_deletes_finished_kubestream_pods_and_a_dry_run_deletes_none(settings, cluster, kubelet,
                                                                                   namespace, admin_api) -> None:
    pods = PodApi(admin_api)
    managed = {"kubestream.io/managed": "true"}
    for name, rule, labels in (("ok", "succeed", managed), ("bad", "exit:1", managed), ("busy", "run", managed),
                               ("foreign", "succeed", {})):
        pods.create(namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "labels": labels, "annotations": {SIM_ANNOTATION: rule}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "base", "image": "busybox"}]}})

    def phase(name: str) -> str:
        return str(((pods.get(namespace, name) or {}).get("status") or {}).get("phase"))

    wait_for(lambda: (phase("ok"), phase("bad"), phase("busy"), phase("foreign"))
             == ("Succeeded", "Failed", "Running", "Succeeded"), timeout=60)
    env = {**settings.to_env(), "KUBESTREAM_KUBE_CONFIG": cluster.kubeconfig("watcher"), "PATH": "/usr/bin:/bin"}

    def cleanup(*extra: str) -> str:
        out = subprocess.run([sys.executable, "-m", "kubestream.cli", "cleanup-pods", "--namespace", namespace,
                              *extra], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    dry = cleanup("--dry-run")
    assert f"would delete {namespace}/ok (Succeeded)" in dry and f"would delete {namespace}/bad (Failed)" in dry
    assert pods.get(namespace, "ok") is not None and pods.get(namespace, "bad") is not None
    done = cleanup()
    assert sorted(done.split("\n")[:2]) == [f"deleted {namespace}/bad (Failed)", f"deleted {namespace}/ok (Succeeded)"]
    assert pods.get(namespace, "ok") is None and pods.get(namespace, "bad") is None
    assert pods.get(namespace, "busy") is not None and pods.get(namespace, "foreign") is not None


def test_generate_dag_yaml_renders_each_task_with_the_pod_builder_and_policy(tmp_path, airflow_home) -> None:
    env = {**os.environ, "AIRFLOW__CORE__EXECUTOR": "kubestream.executor.KubeStreamExecutor",
           "KUBESTREAM_NAMESPACE": "airflow-tasks", "KUBESTREAM_ALLOWED_IMAGES": "apache/airflow:*",
           "KUBESTREAM_REDIS_URL": "redis://127.0.0.1:1/0"}  # offline: never contacted
    airflow = str(Path(sys.executable).with_name("airflow"))
    out = subprocess.run([airflow, "kubestream", "generate-dag-yaml", "ks_override", "--dag-file",
                          str(REPO / "tests" / "e2e" / "dags" / "ks_override.py"), "-o", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in (tmp_path / "ks_override").iterdir())
    assert files == ["never_starts.yaml", "with_override.yaml"]
    pod = yaml.safe_load((tmp_path / "ks_override" / "with_override.yaml").read_text())
    assert pod["metadata"]["namespace"] == "airflow-tasks"
    assert pod["metadata"]["labels"]["kubestream.io/managed"] == "true"
    assert pod["metadata"]["labels"]["team"] == "data-eng"  # the task's pod_override
    (container,) = pod["spec"]["containers"]
    assert {"name": "FROM_OVERRIDE", "value": "hello"} in container["env"]
    assert container["image"] == "apache/airflow:3.3.2" and container["resources"]["limits"]["memory"] == "512Mi"
    assert "refused" not in out.stdout
