"""Pure pieces of the shared core: task keys and pod names, keys, messages, settings."""

from __future__ import annotations

import re
import subprocess
import sys

import msgpack
import pytest

from devkit.workloads import jwt_with
from kubestream import messages
from kubestream.keys import Keys
from kubestream.messages import DecodeError, LaunchTask, RevokeTask, TaskState, TaskStateChanged, decode, encode
from kubestream.settings import Settings, SettingsError, markdown_table
from kubestream.taskkey import TaskKey

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("key", [
    TaskKey("dag", "task", "manual__2026-01-01T00:00:00+00:00", 1),
    TaskKey("Dag_With.Dots", "Task__Caps", "r", 3, 7),
    TaskKey("d" * 250, "t" * 250, "r" * 250, 1),
    TaskKey("データ", "タスク", "run", 1),
    TaskKey("---", "___", "r", 1),
    TaskKey("a", "b", "r", 12345, 99999),
])
def test_pod_names_are_dns1123_and_at_most_63(key: TaskKey) -> None:
    name = key.pod_name()
    assert len(name) <= 63 and DNS1123.match(name), name
    assert name == key.pod_name()  # deterministic


def test_pod_names_differ_for_every_field() -> None:
    base = TaskKey("dag", "task", "run", 1, -1)
    variants = [base, TaskKey("dag", "task", "run", 2, -1), TaskKey("dag", "task", "run", 1, 0),
                TaskKey("dag", "task", "run2", 1, -1), TaskKey("dag", "task2", "run", 1, -1),
                TaskKey("d" * 250 + "x", "t", "r", 1), TaskKey("d" * 250 + "y", "t", "r", 1)]
    assert len({k.pod_name() for k in variants}) == len(variants)


def test_keys_share_one_hash_slot_and_reject_bad_prefixes() -> None:
    keys = Keys("prod")
    for k in (keys.launch("gpu"), keys.results("s1"), keys.dead, keys.task("p"), keys.live,
              keys.resource_version("ns"), keys.watcher_lease, keys.rate_limit, keys.health("launcher", "x")):
        assert k.startswith("{prod}:")
    for bad in ("", "a{b", "x" * 33, "a b"):
        with pytest.raises(ValueError):
            Keys(bad)


def test_messages_round_trip() -> None:
    key = TaskKey("d", "t", "r", 2, 5)
    for msg in (LaunchTask(key, "q", "s", '{"a":1}', "ext", {"metadata": {}}, None),
                RevokeTask(key, "q", "why"), TaskStateChanged(key, TaskState.FAILED, "boom", "p", "ns", 3.0)):
        assert decode(encode(msg)) == msg


@pytest.mark.parametrize("raw, fragment, has_key", [
    (b"\xc1garbage", "not msgpack", False),
    (msgpack.packb([1, 2]), "expected a map", False),
    (msgpack.packb({"v": 99, "type": "launch", "key": ["d", "t", "r", 1, -1]}), "unknown schema version 99", True),
    (msgpack.packb({"v": messages.SCHEMA_VERSION + 1, "type": "launch", "key": ["d", "t", "r", 1, -1]}),
     f"unknown schema version {messages.SCHEMA_VERSION + 1} (this build reads "
     f"{' and '.join(map(str, messages.READABLE_VERSIONS))})", True),
    (msgpack.packb({"v": 0, "type": "launch", "key": ["d", "t", "r", 1, -1]}), "unknown schema version 0", True),
    (msgpack.packb({"v": True, "type": "launch", "key": ["d", "t", "r", 1, -1]}), "unknown schema version True",
     True),
    (msgpack.packb({"v": 1, "type": "nope", "key": ["d", "t", "r", 1, -1]}), "unknown message type", True),
    (msgpack.packb({"v": 1, "type": "launch", "key": ["d", "t", "r", "1", -1]}), "invalid LaunchTask", False),
    (msgpack.packb({"v": 1, "type": "launch", "key": ["d", "t", "r", 1, -1], "queue": "q", "scheduler_id": "s",
                    "workload_json": 5}), "workload_json must be str", True),
    (msgpack.packb({"v": 1, "type": "launch", "key": ["d", "t", "r", 1, -1], "queue": "q", "scheduler_id": "s",
                    "workload_json": "{}", "pod_override": [1]}), "pod_override must be a map", True),
    (msgpack.packb({"v": 1, "type": "state", "key": ["d", "t", "r", 1, -1], "state": "exploded"}),
     "invalid TaskStateChanged", True),
])
def test_decode_errors_are_typed_and_keep_the_key(raw: bytes, fragment: str, has_key: bool) -> None:
    with pytest.raises(DecodeError) as err:
        decode(raw)
    assert fragment in str(err.value)
    assert (err.value.key() is not None) == has_key


def test_a_build_reads_its_own_schema_version_and_the_one_before() -> None:
    assert messages.readable_versions(1) == (1,)  # no version 0 ever existed
    assert messages.readable_versions(2) == (1, 2)  # the next bump keeps reading 1
    assert messages.readable_versions(7) == (6, 7)
    # the tables follow the rule: bumping SCHEMA_VERSION without them fails here
    assert messages.READABLE_VERSIONS == messages.readable_versions(messages.SCHEMA_VERSION)
    assert messages.EVENT_VERSION == messages.READABLE_VERSIONS[0]
    assert messages.EVENT_VERSION in messages._DOWNGRADES
    key = TaskKey("d", "t", "r", 2, 5)
    for version in messages.READABLE_VERSIONS:
        raw = msgpack.packb({"v": version, "type": "revoke", "key": ["d", "t", "r", 2, 5], "queue": "q"})
        assert decode(raw) == RevokeTask(key, "q")


def test_a_rolling_upgrade_to_the_next_version_keeps_both_builds_reading_each_other(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Build N+1 (simulated: the tables as the next bump sets them) next to build N: launchers and watcher
    run N+1 first, schedulers N until they are upgraded too."""
    key = TaskKey("d", "t", "r", 2, 5)
    launch = LaunchTask(key, "q", "s", "{}", "ext")
    event = TaskStateChanged(key, TaskState.RUNNING, "", "p", "ns", 1.0)
    old_launch, old_event = encode(launch), encode(event)  # written by build N
    n = messages.SCHEMA_VERSION
    monkeypatch.setattr(messages, "SCHEMA_VERSION", n + 1)
    monkeypatch.setattr(messages, "_UPGRADES", {n: messages._as_is, n + 1: messages._as_is})
    monkeypatch.setattr(messages, "READABLE_VERSIONS", (n, n + 1))
    monkeypatch.setattr(messages, "EVENT_VERSION", n)
    monkeypatch.setattr(messages, "_DOWNGRADES", {n: messages._as_is})
    assert decode(old_launch) == launch  # N+1 reads the commands N writes
    # N writes events at its oldest readable version, for the schedulers that are still on N
    assert msgpack.unpackb(old_event)["v"] == messages.readable_versions(n)[0]
    new_launch, new_event = encode(launch), encode(event)
    assert msgpack.unpackb(new_launch)["v"] == n + 1
    assert msgpack.unpackb(new_event)["v"] == n  # events stay readable by schedulers still on N
    monkeypatch.undo()
    assert decode(new_event) == event  # a scheduler on N reads an upgraded watcher's events
    with pytest.raises(DecodeError, match=f"unknown schema version {n + 1}"):
        decode(new_launch)  # hence schedulers last: launchers on N could not read N+1 launches


@pytest.mark.parametrize("env, fragment", [
    ({"KUBESTREAM_LAUNCH_CONCURRENCY": "zero"}, "KUBESTREAM_LAUNCH_CONCURRENCY='zero': expected an integer >= 1"),
    ({"KUBESTREAM_LAUNCH_CONCURRENCY": "0"}, "KUBESTREAM_LAUNCH_CONCURRENCY='0'"),
    ({"KUBESTREAM_REDIS_URL": "http://x"}, "KUBESTREAM_REDIS_URL='http://x': expected a redis://"),
    ({"KUBESTREAM_DELETE_WORKER_PODS": "maybe"}, "KUBESTREAM_DELETE_WORKER_PODS='maybe': expected true or false"),
    ({"KUBESTREAM_KEY_PREFIX": "{x}"}, "KUBESTREAM_KEY_PREFIX"),
    ({"KUBESTREAM_NAMESPACE": "Bad_NS"}, "KUBESTREAM_NAMESPACE='Bad_NS': 'Bad_NS' is not a valid namespace name"),
    ({"KUBESTREAM_NAMESPACE": "a,b"}, "KUBESTREAM_NAMESPACE='a,b': expected one namespace name"),
    ({"KUBESTREAM_QUEUE_NAMESPACES": "gpu"}, "KUBESTREAM_QUEUE_NAMESPACES='gpu'"),
    ({"KUBESTREAM_RECLAIM_IDLE_SECONDS": "10", "KUBESTREAM_RETRY_BUDGET_SECONDS": "30"},
     "KUBESTREAM_RECLAIM_IDLE_SECONDS=10.0 must exceed KUBESTREAM_RETRY_BUDGET_SECONDS=30.0"),
    ({"KUBESTREAM_CREATE_RATE": "nan"}, "KUBESTREAM_CREATE_RATE"),
])
def test_wrong_settings_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert fragment in str(err.value)


def test_settings_parse_and_route_queues() -> None:
    s = Settings.from_env({"KUBESTREAM_QUEUES": "default, gpu", "KUBESTREAM_QUEUE_NAMESPACES": "gpu=gpu-pool",
                           "KUBESTREAM_DELETE_WORKER_PODS": "false", "OTHER": "x"})
    assert s.queues == ("default", "gpu") and s.delete_worker_pods is False
    assert s.namespace_for_queue("gpu") == "gpu-pool" and s.namespace_for_queue("default") == "default"
    assert s.namespaces_to_watch() == ("default", "gpu-pool")
    assert Settings.from_mapping({}, source="kubestream") == Settings()


def test_airflow_section_errors_name_the_option() -> None:
    with pytest.raises(SettingsError, match=r"\[kubestream\] sync_batch='-1'"):
        Settings.from_mapping({"sync_batch": "-1"}, source="kubestream")


def test_readme_configuration_table_is_generated_from_the_settings() -> None:
    readme = open("README.md").read()
    assert markdown_table() in readme, "README's table is stale: paste `kubestream settings --markdown`"


def test_launcher_and_watcher_do_not_import_airflow() -> None:
    code = ("import kubestream.workers.launcher, kubestream.watcher.watcher, kubestream.cli, sys; "
            "assert 'airflow' not in sys.modules, 'airflow imported'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_shared_core_imports_neither_airflow_nor_kubernetes() -> None:
    code = ("import kubestream.settings, kubestream.keys, kubestream.messages, kubestream.store, "
            "kubestream.taskkey, kubestream.ratelimit, kubestream.health, kubestream.status, kubestream.backoff, "
            "kubestream.apierrors, kubestream.workload, sys; "
            "bad = [m for m in ('airflow', 'kubernetes') if m in sys.modules]; assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_launcher_and_watcher_do_not_import_each_other() -> None:
    for mod, other in (("kubestream.workers.launcher", "kubestream.watcher"),
                       ("kubestream.watcher.watcher", "kubestream.workers")):
        code = f"import {mod}, sys; assert not [m for m in sys.modules if m.startswith('{other}')]"
        assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0, mod


@pytest.mark.parametrize("workload_json, expected", [
    (f'{{"token": "{jwt_with({"exp": 1700000000, "sub": "ti"})}"}}', 1700000000.0),
    (f'{{"token": "{jwt_with({"exp": 1700000000.5})}"}}', 1700000000.5),
    (f'{{"token": "{jwt_with({"sub": "no exp"})}"}}', None),
    (f'{{"token": "{jwt_with({"exp": True})}"}}', None),
    ('{"token": "not-a-real-jwt"}', None),
    ('{"token": "a.!!!.c"}', None),
    ('{"no": "token"}', None),
    ("not json", None),
    ("[]", None),
])
def test_token_expiry_is_read_without_airflow(workload_json: str, expected: float | None) -> None:
    from kubestream.workload import token_expiry

    assert token_expiry(workload_json) == expected


def test_decoder_blow_ups_are_a_clean_decode_error_and_redaction_keeps_nothing_unsafe() -> None:
    from kubestream.messages import redact

    deep = b"\x91" * 100_000 + b"\xc0"  # nested arrays deeper than any stack
    with pytest.raises(DecodeError, match="not msgpack"):
        decode(deep)
    kept = msgpack.unpackb(redact(deep))
    assert set(kept) == {"unreadable"} and "100001 bytes" in kept["unreadable"]
