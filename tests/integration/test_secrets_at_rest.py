"""Forged or broken messages never become pods, and no workload token is left in a dead letter, a log line,
the status output or a metric after a run that dead-letters messages."""

from __future__ import annotations

import json
import subprocess
import sys

from devkit.components import component_env
from devkit.procs import wait_for
from devkit.workloads import jwt_with, signed, workload
from kubestream.messages import FIELD, LaunchTask, encode
from kubestream.taskkey import TaskKey

FORGED_POD = {"spec": {"hostNetwork": True, "hostPID": True, "nodeName": "node-1",
                       "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                       "containers": [{"name": "base", "image": "evil/img", "command": ["nsenter", "-t", "1"],
                                       "env": [{"name": "AWS_SECRET", "value": "hunter2-env-secret"}],
                                       "securityContext": {"privileged": True}}]}}


def test_forged_and_broken_launches_leave_no_pod_and_no_token_anywhere(settings, pipeline, streams, redis_client,
                                                                       keys, tmp_path) -> None:
    token = jwt_with({"sub": "ti:forged", "exp": 4102444800, "marker": "SECRET-TOKEN-MARKER"})
    stream = keys.launch("default")
    forged = TaskKey("secrets", "forged", "run-1", 1)
    raw = encode(LaunchTask(forged, "default", "sched-a", json.dumps({"token": token}), "d1",
                            pod_override=FORGED_POD))
    redis_client.xadd(stream, {FIELD: raw})  # the review's attack: a raw XADD, unsigned
    redis_client.xadd(stream, signed(settings, stream, raw[:-5]))  # ours, but truncated: undecodable
    pipeline.start()
    normal = workload("secrets", "normal", token=token)  # a real dispatch carrying the token too
    pipeline.submit([normal])
    assert pipeline.run_until([normal.ti.key], timeout=120)[normal.ti.key] == "success"
    wait_for(lambda: streams.dead_count() == 2, timeout=60, what="both bad entries dead-lettered")

    reasons = sorted(d.reason for d in streams.dead_letters())
    assert reasons[0].startswith("decode:") and reasons[1] == "signature: unsigned message"
    assert not streams.pod_exists(forged.pod_name())
    status = subprocess.run([sys.executable, "-m", "kubestream.cli", "status", "--json"],
                            env=component_env(settings), capture_output=True, text=True, timeout=60, check=True)
    settings_out = subprocess.run([sys.executable, "-m", "kubestream.cli", "settings"],
                                  env=component_env(settings), capture_output=True, text=True, timeout=60, check=True)
    places = {
        "dead letters": repr(redis_client.xrange(keys.dead)),
        "status": status.stdout + status.stderr,
        "settings": settings_out.stdout,
        "metrics": json.dumps([streams.launcher_metrics(n) for n in pipeline.components.names()]),
        "logs": pipeline.components.logs() + "".join(pipeline.components.log(n)
                                                     for n in pipeline.components.names()),
    }
    for place, text in places.items():
        assert "SECRET-TOKEN-MARKER" not in text and token not in text, place
        assert "hunter2-env-secret" not in text, place
        assert settings.signing_keys.split("=", 1)[1] not in text, place
