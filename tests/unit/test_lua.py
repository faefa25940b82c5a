"""The Lua scripts (kubestream/lua): their documented layout, their shipping as package data,
and their behaviour against a real Redis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from kubestream import luascripts
from kubestream.keys import LAUNCH_GROUP, Keys
from kubestream.luascripts import Script
from kubestream.messages import FIELD, TaskState, TaskStateChanged, decode
from kubestream.settings import Settings
from kubestream.store import TaskStore, failed
from kubestream.taskkey import TaskKey

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
    for include in re.findall(r"^-- include: (\S+)$", (LUA / name).read_text(), re.M):
        assert spec.source.startswith((LUA / include).read_text())


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
    with pytest.raises(TypeError, match=r"missing \['holder'\], unexpected \['owner'\]"):
        release(lease=keys.watcher_lease, owner="a")
    with pytest.raises(TypeError, match="binds its KEYS by name"):
        release([keys.watcher_lease], lease=keys.watcher_lease, holder="a")
    assert release(lease=keys.watcher_lease, holder="a") == 0


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
            assert (("ns", POD) in store.live_pods()) is not state.final
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
    assert store.publish(_event(TaskState.PENDING), dispatch="d2").published
    assert store.publish(_event(TaskState.RUNNING), dispatch="").published  # '' = any dispatch
    store.revoke([POD])
    assert store.publish(_event(TaskState.FAILED), dispatch="d2").detail == "revoked"
    assert _results(store, "s1") == [("pending", ""), ("running", "")]
    assert store.record(POD)["state"] == "running"


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
                                     b"task": store.keys.task(POD).encode(), b"m": b"\xc1bad"}]
    assert _results(store, "s1") == [("failed", "bad launch message: x")]
    assert store.record(POD)["state"] == "failed"
    assert ("ns", POD) not in store.live_pods()


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

