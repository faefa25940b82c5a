"""`kubestream dlq`: list, show, replay (only the scheduler's own launch of a current dispatch, never a redacted
one), purge; real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubestream import dlq
from kubestream.messages import FIELD, LaunchTask, RevokeTask, decode, encode, message_digest, redact
from kubestream.signing import signer_for
from kubestream.taskkey import TaskKey


def _launch(task_id: str, *, token: bool, dispatch: str = "disp-1") -> LaunchTask:
    workload = {"ti": {"task_id": task_id}, **({"token": "secret-jwt"} if token else {})}
    return LaunchTask(key=TaskKey("dlq", task_id, "run1", 1), queue="default", scheduler_id="sched-a",
                      workload_json=json.dumps(workload), external_executor_id=dispatch)


def _dead_letter(redis_client, keys, message: LaunchTask | RevokeTask, reason: str = "bad signature") -> str:
    stream = keys.launch("default")
    return redis_client.xadd(keys.dead, {"reason": reason, "stream": stream, "entry": "1-0",
                                         "task": keys.task(message.pod_name), FIELD: redact(encode(message))}).decode()


def _record(redis_client, keys, message: LaunchTask, **fields: str) -> None:
    """The record the scheduler's dispatch of ``message`` wrote (with the digest of that launch)."""
    redis_client.hset(keys.task(message.pod_name), mapping={"owner": "sched-a", "queue": "default",
                                                            "dispatch": message.external_executor_id,
                                                            "digest": message_digest(encode(message)), **fields})


def _cli(settings, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**settings.to_env(), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "kubestream.cli", "dlq", *argv], env=env, capture_output=True,
                          text=True, timeout=60)


def test_list_and_show_through_the_cli_keep_the_token_redacted(settings, redis_client, keys) -> None:
    message = _launch("t1", token=True)
    letter = _dead_letter(redis_client, keys, message)
    listed = _cli(settings, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"id": letter, "reason": "bad signature", "stream": keys.launch("default"),
                                          "task": keys.task(message.pod_name)}]
    shown = _cli(settings, "show", letter)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["message"]["key"]["task_id"] == "t1" and data["message"]["external_executor_id"] == "disp-1"
    assert "secret-jwt" not in shown.stdout and "<redacted>" in data["message"]["workload_json"]
    assert _cli(settings, "show", "1-1").returncode == 1


def test_a_launch_with_a_redacted_token_is_refused_and_airflow_requeues_it(settings, redis_client, keys) -> None:
    message = _launch("t2", token=True)
    _record(redis_client, keys, message)
    letter = _dead_letter(redis_client, keys, message)
    out = _cli(settings, "replay", letter)
    assert out.returncode == 1 and "redacted" in out.stderr and "Airflow requeues" in out.stderr
    assert not redis_client.exists(keys.launch("default"))
    assert redis_client.xlen(keys.dead) == 1


def test_a_current_dispatch_is_re_sent_signed_and_its_dead_letter_removed(settings, redis_client, keys) -> None:
    message = _launch("t3", token=False)
    _record(redis_client, keys, message, state="pending", entry="1-0")
    letter = _dead_letter(redis_client, keys, message)
    out = _cli(settings, "replay", letter)
    assert out.returncode == 0, out.stderr
    # the record named the dead entry: the new entry's id is unknown inside the transaction, the digest decides
    assert not redis_client.hexists(keys.task(message.pod_name), "entry")
    stream = keys.launch("default")
    ((entry_id, fields),) = redis_client.xrange(stream)
    assert entry_id.decode() == out.stdout.strip()
    payload = signer_for(settings).verify(stream, fields)  # signed with the configured key for that stream
    assert decode(payload) == message
    assert redis_client.xlen(keys.dead) == 0


@pytest.mark.parametrize(("record", "why"), [
    (None, "record is gone"),
    ({"dispatch": "disp-2"}, "another dispatch"),
    ({"state": "failed"}, "final state"),
    ({"revoked": "1"}, "revoked"),
])
def test_a_stale_dispatch_is_never_re_sent(settings, redis_client, keys, record, why) -> None:
    message = _launch("t4", token=False)
    if record is not None:
        _record(redis_client, keys, message)
        redis_client.hset(keys.task(message.pod_name), mapping=record)
    letter = _dead_letter(redis_client, keys, message)
    with pytest.raises(dlq.ReplayRefused, match=why):
        dlq.replay(redis_client, keys, signer_for(settings), letter, launch_maxlen=1000)
    assert not redis_client.exists(keys.launch("default")) and redis_client.xlen(keys.dead) == 1


def test_a_letter_that_is_not_the_scheduler_s_launch_is_never_signed(settings, redis_client, keys) -> None:
    """Anyone who can write to Redis can add a dead letter: one naming a current dispatch, with no token to
    redact, an image of its own and a plausible reason is still not the launch the record's digest names."""
    message = _launch("t6", token=False)
    _record(redis_client, keys, message, state="pending")
    forged = LaunchTask(key=message.key, queue="default", scheduler_id="sched-a", workload_json='{"ti": {}}',
                        external_executor_id=message.external_executor_id, pod_override={"spec": {"containers": [
                            {"name": "base", "image": "attacker/evil", "command": ["sh", "-c", "steal"]}]}})
    letter = _dead_letter(redis_client, keys, forged, reason="signature: signed with unknown key id 'k2'")
    with pytest.raises(dlq.ReplayRefused, match="digest differs"):
        dlq.replay(redis_client, keys, signer_for(settings), letter, launch_maxlen=1000)
    # nor is the scheduler's own launch sent to another stream than the one it was dead-lettered from
    genuine = _dead_letter(redis_client, keys, message)
    redis_client.xadd(keys.dead, {"reason": "x", "stream": keys.results("sched-a"), "entry": "1-0",
                                  "task": keys.task(message.pod_name), FIELD: encode(message)})
    elsewhere = redis_client.xrevrange(keys.dead, count=1)[0][0].decode()
    with pytest.raises(dlq.ReplayRefused, match="not a launch stream"):
        dlq.replay(redis_client, keys, signer_for(settings), elsewhere, launch_maxlen=1000)
    assert not redis_client.exists(keys.launch("default")) and redis_client.xlen(keys.dead) == 3
    assert dlq.replay(redis_client, keys, signer_for(settings), genuine, launch_maxlen=1000)


def test_only_launches_are_replayed(settings, redis_client, keys) -> None:
    revoke = RevokeTask(key=TaskKey("dlq", "t5", "run1", 1), queue="default")
    letter = _dead_letter(redis_client, keys, revoke)
    with pytest.raises(dlq.ReplayRefused, match="only launches"):
        dlq.replay(redis_client, keys, signer_for(settings), letter, launch_maxlen=1000)


def test_purge_older_than_then_all(settings, redis_client, keys) -> None:
    old = redis_client.xadd(keys.dead, {"reason": "old", FIELD: b"x"}, id="1000-0").decode()
    assert old == "1000-0"
    _dead_letter(redis_client, keys, _launch("t6", token=True))
    out = _cli(settings, "purge", "--older-than", "3600")
    assert out.returncode == 0 and out.stdout.strip() == "1"
    assert [d.reason for d in dlq.list_letters(redis_client, keys)] == ["bad signature"]
    assert _cli(settings, "purge").returncode == 2  # needs --all or --older-than
    out = _cli(settings, "purge", "--all")
    assert out.returncode == 0 and out.stdout.strip() == "1"
    assert redis_client.xlen(keys.dead) == 0


def test_airflow_kubestream_dlq_lists_the_same(settings, redis_client, keys) -> None:
    letter = _dead_letter(redis_client, keys, _launch("t7", token=True))
    env = {**os.environ, **settings.to_env("AIRFLOW__KUBESTREAM__"),
           "AIRFLOW__CORE__EXECUTOR": "kubestream.executor.KubeStreamExecutor"}
    airflow = str(Path(sys.executable).with_name("airflow"))
    out = subprocess.run([airflow, "kubestream", "dlq", "list", "--json"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert [d["id"] for d in json.loads(out.stdout[out.stdout.index("["):])] == [letter]
