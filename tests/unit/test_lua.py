"""The Lua scripts (kubestream/lua): their documented layout, their shipping as package data,
and their behaviour against a real Redis."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

import msgpack
import pytest
import redis

from devkit.workloads import DEV_SIGNING_KEYS
from kubestream import luascripts
from kubestream.keys import LAUNCH_GROUP, Keys
from kubestream.luascripts import Script
from kubestream.messages import FIELD, TaskState, TaskStateChanged, decode, message_digest, redact
from kubestream.settings import Settings, SettingsError
from kubestream.signing import load_signer
from kubestream.store import NOT_LEASE_HOLDER, Dispatch, LiveMember, TaskStore, failed
from kubestream.taskkey import TaskKey
from kubestream.watcher.lease import Lease

LUA = Path(__file__).resolve().parents[2] / "kubestream" / "lua"
FILES = sorted(p.name for p in LUA.glob("*.lua"))
DOC = re.compile(r"^-- (KEYS|ARGV)\[(\d+)\] (\w+): \S")
BINDING = re.compile(r"^local (\w+) = (?:tonumber\()?(KEYS|ARGV)\[(\d+)\]\)?$")


def _layout(name: str) -> tuple[list[str], list[str], list[str]]:
    """(header, binding block, rest) of one file, split independently of the loader."""
    lines = (LUA / name).read_text().splitlines()
    at = 0
    while at < len(lines) and (not lines[at].strip() or lines[at].startswith("--")):
        at += 1
    header, start = lines[:at], at
    while at < len(lines) and (not lines[at].strip() or BINDING.match(lines[at])):
        at += 1
    return header, lines[start:at], lines[at:]


def test_every_script_is_package_data() -> None:
    shipped = {p.name for p in luascripts.lua_dir().iterdir() if p.name.endswith(".lua")}
    assert FILES and shipped == set(FILES)
    assert luascripts.script_names() == [n for n in FILES if not n.startswith("_")]
    for name in FILES:
        assert luascripts.read(name) == (LUA / name).read_text()


@pytest.mark.parametrize("name", FILES)
def test_every_file_documents_its_keys_argv_and_return_and_binds_argv_at_the_top(name: str) -> None:
    header, block, rest = _layout(name)
    text = "\n".join(header)
    assert header[0].startswith(f"-- {name}: "), "the first line names the file and says what it does"
    assert "KEYS" in text and "ARGV" in text and "Returns" in text
    documented = {(m[1], int(m[2])): m[3] for m in map(DOC.match, header) if m}
    bound = {(m[2], int(m[3])): m[1] for m in map(BINDING.match, block) if m}
    assert documented == bound, "each KEYS[i]/ARGV[i] is documented under the name of its local"
    for table in ("KEYS", "ARGV"):
        indexes = sorted(i for t, i in bound if t == table)
        assert indexes == list(range(1, len(indexes) + 1))
    code = [line.split("--", 1)[0] for line in rest]
    assert not [line for line in code if "ARGV" in line], "ARGV is used through the locals only"
    assert not [line for line in code if "KEYS[" in line], "KEYS[i] is used through the locals only"
    if name.startswith("_"):
        assert not bound and "local function" in "\n".join(code)
    for include in re.findall(r"^-- include: (\S+)$", text, re.M):
        assert include in FILES and include.startswith("_")


@pytest.mark.parametrize("name", FILES)
def test_the_loader_accepts_every_file_and_prepends_its_includes(name: str) -> None:
    spec = luascripts.load(name)
    _, block, _ = _layout(name)
    assert spec.argv == tuple(m[1] for m in map(BINDING.match, block) if m and m[2] == "ARGV")
    includes = re.findall(r"^-- include: (\S+)$", (LUA / name).read_text(), re.M)
    assert spec.source.startswith("\n".join((LUA / include).read_text() for include in includes))  # in order


@pytest.mark.parametrize("body, fragment", [
    (["local a = ARGV[1]", "", "return ARGV[2]"], "used below the bindings"),
    (["local a = ARGV[1]", "return KEYS[1]"], "used below the bindings"),
    (["local a = ARGV[2]", "return a"], "ARGV must be bound in order 1..n"),
    (["local a = KEYS[1]", "local a = ARGV[1]", "return a"], "its own name"),
])
def test_the_loader_rejects_argv_outside_the_bindings(body: list[str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        luascripts.bindings("bad.lua", body)


def test_a_script_is_called_with_every_local_by_name(redis_client: redis.Redis, keys: Keys) -> None:
    release = Script(redis_client, "lease_release.lua")
    with pytest.raises(TypeError, match=r"missing \['token'\], unexpected \['owner'\]"):
        release(lease=keys.watcher_lease, fence=keys.watcher_fence, epoch="1", owner="a")
    with pytest.raises(TypeError, match="binds its KEYS by name"):
        release([keys.watcher_lease], lease=keys.watcher_lease, fence=keys.watcher_fence, token="a", epoch="1")
    assert release(lease=keys.watcher_lease, fence=keys.watcher_fence, token="a", epoch="1") == 0


# -- behaviour against a real Redis ------------------------------------------------------------

KEY = TaskKey("dag", "task", "run", 1)
POD = KEY.pod_name()


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys) -> TaskStore:
    return TaskStore(redis_client, keys, Settings(task_ttl_seconds=600))


def _dispatch(store: TaskStore, key: TaskKey = KEY, *, owner: str = "s1", dispatch: str = "d1") -> None:
    pipe = store.redis.pipeline()
    store.record_dispatch(pipe, key, owner=owner, queue="default", namespace="ns", dispatch=dispatch)
    pipe.execute()


def _event(state: TaskState, reason: str = "", key: TaskKey = KEY) -> TaskStateChanged:
    return TaskStateChanged(key=key, state=state, reason=reason, pod_name=key.pod_name(), namespace="ns", at=1.0)


def _results(store: TaskStore, owner: str) -> list[tuple[str, str]]:
    out = []
    for _, fields in store.redis.xrange(store.keys.results(owner)):
        msg = decode(fields[FIELD])
        assert isinstance(msg, TaskStateChanged)
        out.append((msg.state.value, msg.reason))
    return out


def test_publish_sends_each_new_state_once_and_drops_the_rest(store: TaskStore) -> None:
    _dispatch(store)
    steps = [
        (TaskState.PENDING, True, ""),
        (TaskState.PENDING, False, "duplicate"),
        (TaskState.RUNNING, True, ""),
        (TaskState.PENDING, False, "stale: pending after running"),
        (TaskState.SUCCEEDED, True, ""),
        (TaskState.FAILED, False, "already final: succeeded"),
        (TaskState.RUNNING, False, "already final: succeeded"),
    ]
    for state, published, why in steps:
        result = store.publish(_event(state, reason=f"r-{state.value}"))
        assert result.published is published, (state, result)
        if published:
            assert result.owner == "s1" and result.detail
            assert store.record(POD)["state"] == state.value
            assert (LiveMember("ns", POD, "d1") in store.live_members()) is not state.final
        else:
            assert result.detail == why
    assert _results(store, "s1") == [("pending", "r-pending"), ("running", "r-running"),
                                     ("succeeded", "r-succeeded")]
    assert store.record(POD)["reason"] == "r-succeeded"
    assert 0 < store.redis.ttl(store.keys.task(POD)) <= 600


def test_publish_drops_unknown_revoked_and_stale_dispatch_events(store: TaskStore) -> None:
    assert store.publish(_event(TaskState.RUNNING)).detail == "unknown task"
    assert not store.redis.exists(store.keys.task(POD))  # nothing written for an unknown task
    _dispatch(store, dispatch="d2")
    assert store.publish(_event(TaskState.RUNNING), dispatch="d1").detail == "stale dispatch"
    assert store.publish(_event(TaskState.RUNNING), dispatch="").detail == "stale dispatch"  # a pod without one
    assert store.publish(_event(TaskState.PENDING), dispatch="d2").published
    assert store.publish(_event(TaskState.RUNNING)).published  # no dispatch given: whatever the record has
    store.revoke([POD])
    assert store.publish(_event(TaskState.FAILED), dispatch="d2").detail == "revoked"
    assert _results(store, "s1") == [("pending", ""), ("running", "")]
    assert store.record(POD)["state"] == "running"


def test_a_published_event_names_the_dispatch_of_its_pod(store: TaskStore) -> None:
    """The executor drops an event of an earlier dispatch of the same try (a resumed deferral), so each event
    carries its pod's dispatch; published for whatever dispatch the record has, it names none."""
    _dispatch(store, dispatch="d1")
    assert store.publish(_event(TaskState.PENDING), dispatch="d1").published
    assert store.publish(_event(TaskState.RUNNING)).published
    [pending, running] = [decode(f[FIELD]) for _, f in store.redis.xrange(store.keys.results("s1"))]
    assert isinstance(pending, TaskStateChanged) and isinstance(running, TaskStateChanged)
    assert (pending.dispatch, running.dispatch) == ("d1", "")


def test_dispatch_restarts_the_record_and_appends_the_signed_launch_in_one_call(
        redis_client: redis.Redis, keys: Keys) -> None:
    signer = load_signer(keys=DEV_SIGNING_KEYS, keys_file="", allow_unsigned=False)
    store = TaskStore(redis_client, keys, Settings(task_ttl_seconds=600, launch_maxlen=1000), signer)
    _dispatch(store, dispatch="d0")  # an earlier dispatch that ended revoked, with a state
    store.publish(_event(TaskState.FAILED, "r0"))
    store.revoke([POD])
    stream = keys.launch("default")
    pipe = redis_client.pipeline(transaction=True)
    store.dispatch(pipe, KEY, owner="s2", queue="default", namespace="ns2", dispatch="d1", stream=stream,
                   message=b"launch")
    assert len(pipe) == 1  # one command per task
    [[entry_id]] = pipe.execute()
    record = store.record(POD)
    assert {k: v for k, v in record.items() if k != "updated"} == {
        "owner": "s2", "dag_id": "dag", "task_id": "task", "run_id": "run", "try_number": "1", "map_index": "-1",
        "queue": "default", "namespace": "ns2", "dispatch": "d1", "digest": message_digest(b"launch"),
        "entry": entry_id.decode()}  # the launch entry's id: a copy of the message under another id fails nothing
    assert 0 < redis_client.ttl(keys.task(POD)) <= 600
    [(_, fields)] = redis_client.xrange(stream)
    assert signer.verify(stream, fields) == b"launch"
    unsigned = TaskStore(redis_client, keys, Settings(task_ttl_seconds=600))
    pipe = redis_client.pipeline(transaction=True)
    unsigned.dispatch(pipe, KEY, owner="s2", queue="default", namespace="ns2", dispatch="d2", stream=stream,
                      message=b"plain")
    pipe.execute()
    assert redis_client.xrange(stream)[-1][1] == {FIELD: b"plain"}


def test_dispatch_many_writes_each_launch_to_its_stream_in_one_call(redis_client: redis.Redis, keys: Keys) -> None:
    signer = load_signer(keys=DEV_SIGNING_KEYS, keys_file="", allow_unsigned=False)
    store = TaskStore(redis_client, keys, Settings(task_ttl_seconds=600, launch_maxlen=1000), signer)
    tasks = [TaskKey("dag", f"t{i}", "run", 2, map_index=i - 1) for i in range(5)]
    streams = [keys.launch("default"), keys.launch("default", 1), keys.launch("gpu")]
    binary = bytes(range(256)) * 3  # any bytes, NUL and invalid UTF-8 among them
    launches = [Dispatch(k, "gpu" if i == 4 else "default", f"ns{i}", f"d{i}" if i else "", streams[i % 3],
                         binary + bytes([i])) for i, k in enumerate(tasks)]
    pipe = redis_client.pipeline(transaction=True)
    store.dispatch_many(pipe, "s1", launches)
    store.dispatch_many(pipe, "s1", [])
    assert len(pipe) == 1  # one command for the whole batch
    [ids] = pipe.execute()
    assert len(ids) == 5
    for i, d in enumerate(launches):
        record = store.record(d.key.pod_name())
        assert {k: v for k, v in record.items() if k != "updated"} == {
            "owner": "s1", "dag_id": "dag", "task_id": f"t{i}", "run_id": "run", "try_number": "2",
            "map_index": str(i - 1), "queue": d.queue, "namespace": f"ns{i}", "dispatch": d.dispatch,
            "digest": message_digest(d.message), "entry": ids[i].decode()}
        assert 0 < redis_client.ttl(keys.task(d.key.pod_name())) <= 600
    for n, stream in enumerate(streams):
        got = redis_client.xrange(stream)
        assert [eid for eid, _ in got] == [ids[i] for i in range(5) if i % 3 == n]  # in order, each to its stream
        assert [signer.verify(stream, fields) for _, fields in got] == [d.message for d in launches[n::3]]
    script = Script(redis_client, "dispatch.lua")
    with pytest.raises(redis.ResponseError, match="3 keys for 1 launches"):
        script([keys.task("x"), streams[0], keys.task("y")], ttl=1, maxlen=1, owner="s", updated="1",
               launches=msgpack.packb([["d", "t", "r", "1", "-1", "q", "n", "", "", "m", "", ""]]))


def test_publish_many_decides_each_event_as_publish_does_in_two_round_trips(store: TaskStore) -> None:
    keys = [TaskKey("dag", f"t{i}", "run", 1) for i in range(4)]
    for key in keys[:3]:
        _dispatch(store, key)
    store.revoke([keys[2].pod_name()])
    batch = [(_event(TaskState.RUNNING, key=keys[0]), "d1"), (_event(TaskState.RUNNING, key=keys[0]), "d1"),
             (_event(TaskState.SUCCEEDED, key=keys[1]), None), (_event(TaskState.RUNNING, key=keys[1]), "d2"),
             (_event(TaskState.FAILED, key=keys[2]), "d1"), (_event(TaskState.RUNNING, key=keys[3]), "")]
    got = [(p.published, p.detail if not p.published else "") for p in store.publish_many(batch)]
    assert got == [(True, ""), (False, "duplicate"), (True, ""), (False, "stale dispatch"), (False, "revoked"),
                   (False, "unknown task")]
    assert _results(store, "s1") == [("running", ""), ("succeeded", "")]
    assert store.publish_many([]) == []


def test_publish_many_signs_again_for_a_task_adopted_between_the_owner_read_and_the_write(
        redis_client: redis.Redis, keys: Keys) -> None:
    class AdoptedMeanwhile(TaskStore):
        def _owners(self, tasks: Sequence[str]) -> list[str]:
            owners = super()._owners(tasks)
            self.adopt([POD], "s2")  # another scheduler adopts the task right after its owner was read
            return owners

    store = AdoptedMeanwhile(redis_client, keys, Settings(task_ttl_seconds=600))
    _dispatch(store)
    [published] = store.publish_many([(_event(TaskState.RUNNING), "d1")])
    assert (published.published, published.owner) == (True, "s2")
    assert _results(store, "s2") == [("running", "")] and _results(store, "s1") == []


def test_adopt_rewrites_the_owner_and_returns_the_last_state(store: TaskStore) -> None:
    other = TaskKey("dag", "other", "run", 1)
    _dispatch(store)
    _dispatch(store, other)
    assert store.publish(_event(TaskState.RUNNING, reason="started")).published
    last = store.adopt([POD, other.pod_name(), "ks-never-dispatched"], "s2")
    assert last == [("running", "started"), ("", ""), None]
    assert store.record(POD)["owner"] == store.record(other.pod_name())["owner"] == "s2"
    assert not store.redis.exists(store.keys.task("ks-never-dispatched"))
    assert store.publish(_event(TaskState.SUCCEEDED)).owner == "s2"  # later events go to the new owner
    assert _results(store, "s1") == [("running", "started")]
    assert _results(store, "s2") == [("succeeded", "")]
    assert store.adopt([], "s3") == []


def test_unreported_finds_gone_and_long_final_records_across_script_calls(
        store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kubestream.store.RECORDS_PER_READ", 2)  # 7 records: four calls, the last one short
    tasks = [TaskKey("dag", f"t{i}", "run", 1) for i in range(6)]
    for key in tasks:
        _dispatch(store, key)
    for key, state in zip(tasks, (TaskState.RUNNING, TaskState.SUCCEEDED, TaskState.FAILED), strict=False):
        assert store.publish(_event(state, key=key)).published
    store.redis.delete(store.keys.task(tasks[3].pod_name()))
    pods = [k.pod_name() for k in tasks] + ["ks-never-dispatched"]
    now = time.time()
    assert store.unreported(pods, settled_before=now + 60) == (
        [tasks[3].pod_name(), "ks-never-dispatched"], [tasks[1].pod_name(), tasks[2].pod_name()])
    assert store.unreported(pods, settled_before=now - 60) == ([tasks[3].pod_name(), "ks-never-dispatched"], [])
    assert store.unreported([], settled_before=now) == ([], [])


@pytest.fixture
def launches(store: TaskStore) -> str:
    """The launch stream with the launchers' group."""
    stream = store.keys.launch("default")
    store.redis.xgroup_create(stream, LAUNCH_GROUP, id="0", mkstream=True)
    return stream


def _delivered(store: TaskStore, stream: str, raw: bytes = b"launch") -> str:
    """Add a launch entry and deliver it to a launcher: it is pending until acknowledged."""
    entry = store.redis.xadd(stream, {FIELD: raw}).decode()
    store.redis.xreadgroup(LAUNCH_GROUP, "launcher-0", {stream: ">"})
    assert store.redis.xpending(stream, LAUNCH_GROUP)["pending"] == 1
    return entry


def _dead_letters(store: TaskStore) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in store.redis.xrange(store.keys.dead)]


def test_fail_launch_acks_deletes_dead_letters_and_publishes_in_one_call(store: TaskStore, launches: str) -> None:
    _dispatch(store)
    stream, entry = launches, _delivered(store, launches, raw=b"\xc1bad")
    result = store.fail_launch(stream, entry, failed(KEY, "bad launch message: x", "ns"), dead_reason="decode: x",
                               raw=b"\xc1bad")
    assert result.published and result.owner == "s1"
    assert store.redis.xpending(stream, LAUNCH_GROUP)["pending"] == 0 and store.redis.xlen(stream) == 0
    assert _dead_letters(store) == [{b"reason": b"decode: x", b"stream": stream.encode(), b"entry": entry.encode(),
                                     b"task": store.keys.task(POD).encode(), b"m": redact(b"\xc1bad")}]
    assert _results(store, "s1") == [("failed", "bad launch message: x")]
    assert store.record(POD)["state"] == "failed"
    assert not store.live_members()


def test_fail_launch_without_dead_reason_or_task_still_settles_the_entry(store: TaskStore, launches: str) -> None:
    _dispatch(store)
    stream, entry = launches, _delivered(store, launches)
    assert store.fail_launch(stream, entry, failed(KEY, "forbidden")).published
    assert store.redis.xlen(stream) == 0 and not _dead_letters(store)  # no dead letter asked
    second = _delivered(store, stream, raw=b"r")
    unknown = store.fail_launch(stream, second, None, dead_reason="unexpected RevokeTask", raw=b"r")
    assert (unknown.published, unknown.detail) == (False, "no task")
    assert store.redis.xlen(stream) == 0
    assert [d[b"task"] for d in _dead_letters(store)] == [store.keys.task("-").encode()]
    assert _results(store, "s1") == [("failed", "forbidden")]


def test_fail_launch_settles_the_entry_even_when_the_state_is_dropped(store: TaskStore, launches: str) -> None:
    _dispatch(store)
    store.revoke([POD])
    stream, entry = launches, _delivered(store, launches)
    result = store.fail_launch(stream, entry, failed(KEY, "gave up"), dead_reason="gave up", raw=b"m")
    assert (result.published, result.detail) == (False, "revoked")
    assert store.redis.xlen(stream) == 0 and len(_dead_letters(store)) == 1
    assert _results(store, "s1") == []


def test_fail_launch_never_fails_a_task_whose_pod_of_that_dispatch_was_seen(store: TaskStore, launches: str) -> None:
    """A launcher created the pod and died before acknowledging; the redelivery went to a launcher whose pod
    policy changed meanwhile: its refusal settles the entry but does not fail the running task."""
    _dispatch(store, dispatch="d1")
    for state in (TaskState.PENDING, TaskState.RUNNING):
        assert store.publish(_event(state), dispatch="d1").published
        entry = _delivered(store, launches)
        result = store.fail_launch(launches, entry, failed(KEY, "pod policy: privileged", "ns"),
                                   dead_reason="pod policy: privileged", raw=b"m", dispatch="d1")
        assert (result.published, result.detail) == (False, f"its pod exists: {state.value}")
        assert store.record(POD)["state"] == state.value and store.redis.xlen(launches) == 0
    assert _results(store, "s1") == [("pending", ""), ("running", "")]
    assert len(_dead_letters(store)) == 2 and LiveMember("ns", POD, "d1") in store.live_members()
    _dispatch(store, dispatch="d2")  # queued again: a failed launch of d2 is published (no d2 pod was seen)
    assert store.fail_launch(launches, _delivered(store, launches), failed(KEY, "forbidden", "ns"),
                             dispatch="d2").published


# -- dispatch ids, fencing, TTLs and caps ------------------------------------------------------


def test_publish_names_the_dispatch_in_the_live_set_and_a_final_state_of_any_dispatch_removes_its_member(
        store: TaskStore) -> None:
    _dispatch(store, dispatch="d1")
    assert store.publish(_event(TaskState.RUNNING), dispatch="d1").published
    assert store.live_members() == {LiveMember("ns", POD, "d1")}
    assert store.redis.smembers(store.keys.live) == {f"ns/{POD}/d1".encode()}
    _dispatch(store, dispatch="d2")  # queued again: the d1 pod's last word must not reach the d2 dispatch
    assert store.publish(_event(TaskState.PENDING), dispatch="d2").published
    assert store.live_members() == {LiveMember("ns", POD, "d1"), LiveMember("ns", POD, "d2")}
    late = store.publish(_event(TaskState.FAILED, "pod deleted while running"), dispatch="d1")
    assert (late.published, late.detail) == (False, "stale dispatch")
    assert store.live_members() == {LiveMember("ns", POD, "d2")}  # the d1 pod is done with all the same
    assert _results(store, "s1") == [("running", ""), ("pending", "")]
    assert store.publish(_event(TaskState.SUCCEEDED)).published  # no dispatch given: the record's (d2)
    assert not store.live_members()


def test_live_members_of_either_form_parse_and_print_back() -> None:
    for text, member in [("ns/pod/d1", LiveMember("ns", "pod", "d1")), ("ns/pod/", LiveMember("ns", "pod", "")),
                         ("ns/pod", LiveMember("ns", "pod", None)), ("ns/pod/a/b", LiveMember("ns", "pod", "a/b"))]:
        assert LiveMember.parse(text) == member and str(member) == text


def test_fail_launch_of_an_older_dispatch_never_fails_the_newer_one(store: TaskStore, launches: str) -> None:
    _dispatch(store, dispatch="d1")
    _dispatch(store, dispatch="d2")  # a stuck-in-queued requeue: same try, same pod name
    entry = _delivered(store, launches)
    old = store.fail_launch(launches, entry, failed(KEY, "forbidden", "ns"), dispatch="d1")
    assert (old.published, old.detail) == (False, "stale dispatch")
    assert store.redis.xlen(launches) == 0  # settled all the same
    current = store.fail_launch(launches, _delivered(store, launches), failed(KEY, "forbidden", "ns"), dispatch="d2")
    assert current.published
    assert _results(store, "s1") == [("failed", "forbidden")]


def _lease(client: redis.Redis, keys: Keys, name: str, seconds: float = 5) -> Lease:
    return Lease(client, keys.watcher_lease, name, seconds, fence_key=keys.watcher_fence)


def test_the_lease_is_held_by_one_process_even_under_one_name_and_its_epoch_grows(
        redis_client: redis.Redis, keys: Keys) -> None:
    first, second = _lease(redis_client, keys, "watcher"), _lease(redis_client, keys, "watcher")
    standby = _lease(redis_client, keys, "standby")
    assert first.acquire_or_renew() == 1
    assert standby.acquire_or_renew() == 0  # another name waits for the lease to expire, even on its first call
    assert first.acquire_or_renew() == 1  # renewed under the same epoch
    assert second.acquire_or_renew() == 2  # the same name, a new process (a restart): taken over at once
    assert first.acquire_or_renew() == 0  # the predecessor (paused, not dead) is fenced out...
    assert first.acquire_or_renew() == 0 and second.acquire_or_renew() == 2  # ...and never takes it back
    assert not first.release() and second.holder_now() == "watcher"
    assert second.release()
    assert first.acquire_or_renew() == 3  # every acquisition gets a new epoch
    redis_client.delete(keys.watcher_lease)  # it expired (a long pause of its holder)
    assert standby.acquire_or_renew() == 4 and first.acquire_or_renew() == 0


def test_fenced_writes_are_refused_once_the_lease_is_another_ones(store: TaskStore, keys: Keys) -> None:
    leader = _lease(store.redis, keys, "watcher")
    fence = leader.fence(leader.acquire_or_renew())
    _dispatch(store)
    assert store.publish(_event(TaskState.RUNNING), dispatch="d1", fence=fence).published
    checkpoint = Script(store.redis, "checkpoint.lua")
    assert checkpoint(checkpoint=keys.resource_version("ns"), lease=keys.watcher_lease, token=fence.token,
                      epoch=str(fence.epoch), rv="7") == 1
    # the leader pauses past its lease; another process takes it through the lease script
    store.redis.delete(keys.watcher_lease)
    Script(store.redis, "lease_renew.lua")(lease=keys.watcher_lease, fence=keys.watcher_fence, holder="other",
                                           token="other-token", epoch="0", ms=5000, resume="0")
    refused = store.publish(_event(TaskState.SUCCEEDED), dispatch="d1", fence=fence)
    assert (refused.published, refused.detail) == (False, NOT_LEASE_HOLDER)
    assert checkpoint(checkpoint=keys.resource_version("ns"), lease=keys.watcher_lease, token=fence.token,
                      epoch=str(fence.epoch), rv="9") == 0
    assert not store.remove_live(LiveMember("ns", POD, "d1"), fence)
    assert store.redis.get(keys.resource_version("ns")) == b"7"
    assert store.live_members() == {LiveMember("ns", POD, "d1")} and store.record(POD)["state"] == "running"
    assert _results(store, "s1") == [("running", "")]
    assert store.publish(_event(TaskState.SUCCEEDED)).published  # a launcher's publish carries no fence


def test_a_final_state_shortens_the_records_lifetime(redis_client: redis.Redis, keys: Keys) -> None:
    store = TaskStore(redis_client, keys, Settings(task_ttl_seconds=600, final_record_ttl_seconds=120))
    _dispatch(store)
    assert 590 < store.redis.ttl(keys.task(POD)) <= 600
    assert store.publish(_event(TaskState.RUNNING)).published
    assert store.publish(_event(TaskState.SUCCEEDED)).published
    assert 0 < store.redis.ttl(keys.task(POD)) <= 120


def test_a_final_record_ttl_above_the_task_ttl_is_refused() -> None:
    with pytest.raises(SettingsError, match="KUBESTREAM_FINAL_RECORD_TTL_SECONDS=7200 must not exceed"):
        Settings.from_mapping({"task_ttl_seconds": "3600", "final_record_ttl_seconds": "7200"})


def test_the_dead_letter_stream_is_capped(redis_client: redis.Redis, keys: Keys, launches: str) -> None:
    store = TaskStore(redis_client, keys, Settings(dead_letters_maxlen=100))
    for _ in range(350):
        store.fail_launch(launches, _delivered(store, launches), None, dead_reason="bad", raw=b"x")
    assert 100 <= store.redis.xlen(keys.dead) < 350  # approximate: whole stream nodes are trimmed
