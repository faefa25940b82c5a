"""The real node's small pieces that need no node: the runc wrapper and the pod template."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from devkit.realnode import ASSETS, NODE_NAME, pod_template
from kubestream.workers.podspec import build_pod, load_template_yaml


@pytest.fixture
def wrapper(tmp_path: Path) -> Path:
    fake_runc = tmp_path / "runc"
    fake_runc.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/argv"\n')
    fake_runc.chmod(0o755)
    out = tmp_path / "wrapper"
    out.write_text((ASSETS / "runc-wrapper.sh").read_text().replace("@RUNC@", str(fake_runc)))
    out.chmod(0o755)
    return out


def _config(path: Path, adj: int) -> None:
    path.write_text(json.dumps({"ociVersion": "1.0.2", "process": {"oomScoreAdj": adj, "args": ["/pause"]}},
                               separators=(",", ":")))


@pytest.mark.skipif(not shutil.which("sed"), reason="no sed")
@pytest.mark.parametrize(("adj", "expected"), [(-998, 0), (-1, 0), (0, 0), (500, 500)])
def test_runc_wrapper_clamps_a_negative_oom_score_adj(wrapper: Path, tmp_path: Path, adj: int, expected: int) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _config(bundle / "config.json", adj)
    args = ["--root", "/x", "create", "--bundle", str(bundle), "--pid-file", "/x/pid", "cid"]
    subprocess.run([str(wrapper), *args], check=True)
    assert json.loads((bundle / "config.json").read_text())["process"]["oomScoreAdj"] == expected
    assert (tmp_path / "argv").read_text().split() == args  # runc gets the arguments unchanged


def test_runc_wrapper_clamps_an_exec_process_file_and_passes_other_commands(wrapper: Path, tmp_path: Path) -> None:
    process = tmp_path / "process.json"
    process.write_text('{"args":["sh"],"oomScoreAdj":-998}')
    subprocess.run([str(wrapper), "exec", "--process", str(process), "cid"], check=True)
    assert json.loads(process.read_text())["oomScoreAdj"] == 0
    subprocess.run([str(wrapper), "state", "cid"], check=True)
    assert (tmp_path / "argv").read_text().split() == ["state", "cid"]


def test_pod_template_binds_to_the_node_with_host_network_and_local_images() -> None:
    from kubestream.executor.launches import task_key

    template = load_template_yaml(json.dumps(pod_template("kubestream-base:bookworm-minbase")))
    key = task_key(_ti_key())
    pod = build_pod(key=key, namespace="ns", image="ignored:1", workload_json="{}", scheduler_id="s",
                    template=template, pod_override={"spec": {"containers": [{"name": "base", "command": ["true"]}]}})
    spec = pod["spec"]
    assert spec["nodeName"] == NODE_NAME and spec["hostNetwork"] is True
    (container,) = spec["containers"]
    assert container["image"] == "kubestream-base:bookworm-minbase"  # the template's image wins over worker_image
    assert container["imagePullPolicy"] == "Never"
    assert container["command"] == ["true"]


def _ti_key():  # type: ignore[no-untyped-def]
    from airflow.models.taskinstancekey import TaskInstanceKey

    return TaskInstanceKey("dag", "task", "run", 1, -1)
