"""Pod log requests and replies (kubestream/podlogs.py): validation, capping, signed answers; and the
simulated kubelet's tail (devkit/kubeletlogs.py)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from devkit.kubeletlogs import log_refusal, tail
from kubestream.keys import Keys
from kubestream.podlogs import (
    MAX_LINES,
    REQUEST_TYPE,
    BadReply,
    BadRequest,
    LogReply,
    LogRequest,
    Status,
    cap_lines,
    encode_reply,
    encode_request,
    new_reply_id,
    pack_signed,
    parse_reply,
    parse_request,
    tail_bytes,
)
from kubestream.signing import Signer, Unsigned, new_key
from kubestream.taskkey import TaskKey

KEY = TaskKey("dag", "task", "run-1", 2, 3)
NOW = 1_800_000_000.0
SIGNER = Signer.parse(f"a={new_key()}")
KEYS = Keys("kubestream")


def request_map(**changes: Any) -> dict[str, Any]:
    base = {"v": 1, "type": REQUEST_TYPE, "dag_id": "dag", "task_id": "task", "run_id": "run-1", "try_number": 2,
            "map_index": 3, "lines": 100, "reply": "ab" * 16, "at": NOW}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("asked, read", [(1, 1), (100, 100), (MAX_LINES, MAX_LINES), (MAX_LINES + 1, MAX_LINES),
                                          (10**9, MAX_LINES), (0, 1), (-5, 1)])
def test_lines_are_capped(asked: int, read: int) -> None:
    assert cap_lines(asked) == read


@pytest.mark.parametrize("data, cap, kept, truncated", [
    (b"a\nb\nc\n", 100, b"a\nb\nc\n", False),
    (b"a\nb\nc\n", 6, b"a\nb\nc\n", False),
    (b"aa\nbb\ncc\n", 7, b"bb\ncc\n", True),  # a cut through a line drops that line
    (b"aa\nbb\ncc\n", 6, b"bb\ncc\n", True),  # a cut on a line start keeps the line
    (b"aa\nbb\ncc\n", 3, b"cc\n", True),
    (b"x" * 50, 10, b"x" * 10, True),  # one long line keeps its end
    (b"x" * 50 + b"\n", 10, b"x" * 9 + b"\n", True),
])
def test_the_newest_whole_lines_are_kept_within_the_cap(data: bytes, cap: int, kept: bytes,
                                                        truncated: bool) -> None:
    assert tail_bytes(data, cap) == (kept, truncated)
    assert len(tail_bytes(data, cap)[0]) <= cap


def test_a_request_round_trips() -> None:
    request = LogRequest(KEY, 250, new_reply_id(), NOW)
    assert parse_request(encode_request(request), now=NOW + 1) == request


@pytest.mark.parametrize("raw, reason", [
    (b"\xc1 not msgpack", "not msgpack"),
    (msgpack.packb([1, 2]), "not a map"),
    (msgpack.packb(request_map(type="launch")), "not a pod log request"),
    (msgpack.packb(request_map(v=2)), "unknown pod log request version"),
    (msgpack.packb(request_map(dag_id=None)), "'dag_id' missing"),
    (msgpack.packb(request_map(try_number="2")), "'try_number' missing or not int"),
    (msgpack.packb(request_map(try_number=True)), "'try_number' missing or not int"),
    (msgpack.packb(request_map(lines=0)), "lines must be at least 1"),
    (msgpack.packb(request_map(reply="../../etc")), "32 hex digits"),
    (msgpack.packb(request_map(reply="AB" * 16)), "32 hex digits"),
    (msgpack.packb(request_map(reply="ab" * 16 + "x")), "32 hex digits"),
    (msgpack.packb(request_map(at=NOW - 31)), "stale request"),
    (msgpack.packb(request_map(at=NOW + 31)), "stale request"),
    (msgpack.packb(request_map(at="now")), "'at' missing"),
])
def test_a_bad_request_is_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        parse_request(raw, now=NOW)


def test_a_request_for_too_many_lines_is_capped_not_refused() -> None:
    assert parse_request(msgpack.packb(request_map(lines=10**7)), now=NOW).lines == MAX_LINES


def reply(reply_id: str = "cd" * 16, **changes: Any) -> LogReply:
    fields: dict[str, Any] = {"status": Status.OK, "message": "last 3 lines", "pod": "ks-dag-task-1",
                              "namespace": "ns", "text": "a\nb\nc\n", "truncated": False, "server": "w-1"}
    fields.update(changes)
    return LogReply(reply_id, **fields)


def signed_reply(answer: LogReply, key: str, signer: Signer | Unsigned = SIGNER) -> bytes:
    return pack_signed(signer.sign(key, encode_reply(answer)))


def test_a_signed_reply_round_trips() -> None:
    answer = reply(truncated=True)
    key = KEYS.log_reply(answer.reply_id)
    assert parse_reply(signed_reply(answer, key), key, answer.reply_id, SIGNER) == answer


@pytest.mark.parametrize("make, reason", [
    (lambda key: signed_reply(reply(), key, Unsigned()), "unsigned"),
    (lambda key: signed_reply(reply(), key, Signer.parse(f"a={new_key()}")), "bad signature"),
    (lambda key: signed_reply(reply(), KEYS.log_reply("ef" * 16)), "bad signature"),  # another request's list
    (lambda key: signed_reply(reply(reply_id="ef" * 16), key), "another request"),
    (lambda key: b"\xc1", "not msgpack"),
    (lambda key: msgpack.packb({"m": "x"}), "not a signed entry"),
    (lambda key: pack_signed(SIGNER.sign(key, msgpack.packb({"v": 1, "type": "launch"}))), "not a pod log reply"),
    (lambda key: pack_signed(SIGNER.sign(key, encode_reply(reply()).replace(b"ok", b"zz"))), "unknown status"),
])
def test_a_bad_reply_is_refused(make: Any, reason: str) -> None:
    key = KEYS.log_reply("cd" * 16)
    with pytest.raises(BadReply, match=reason):
        parse_reply(make(key), key, "cd" * 16, SIGNER)


def test_reply_keys_and_groups() -> None:
    assert KEYS.log_requests == "{kubestream}:logs:requests"
    assert KEYS.log_reply("ab") == "{kubestream}:logs:reply:ab"
    assert KEYS.log_group == "logservers"
    assert Keys("kubestream", "east").log_group == "logservers:east"
    assert Keys("kubestream", "east").log_requests == KEYS.log_requests  # one request stream for every cluster


@pytest.mark.parametrize("lines, limit, out", [
    (None, None, b"1\n2\n3\n"),
    (2, None, b"2\n3\n"),
    (10, None, b"1\n2\n3\n"),
    (0, None, b""),
    (2, 3, b"2\n3"),  # limitBytes counts from the start of the tail, as a kubelet's does
    (None, 0, b""),
])
def test_the_simulated_kubelet_honours_tail_lines_and_limit_bytes(lines: int | None, limit: int | None,
                                                                  out: bytes) -> None:
    assert tail(b"1\n2\n3\n", lines, limit) == out


def pod_with(*statuses: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": list(statuses)}}


@pytest.mark.parametrize("pod, refusal", [
    (pod_with({"name": "base", "state": {"running": {}}}), None),
    (pod_with({"name": "base", "state": {"terminated": {"exitCode": 1}}}), None),
    (pod_with({"name": "base", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": {"terminated": {"exitCode": 1}}}), None),  # it ran before: its last log
    (pod_with({"name": "base", "state": {"waiting": {"reason": "ErrImagePull"}}}),
     "container 'base' in pod 'p' is waiting to start: ErrImagePull"),
    (pod_with({"name": "base", "state": {"waiting": {}}}), "container 'base' in pod 'p' is waiting to start: "
                                                           "ContainerCreating"),
    (pod_with(), "container 'base' in pod 'p' is waiting to start: ContainerCreating"),  # no status yet
    (pod_with({"name": "sidecar", "state": {"running": {}}}), "container 'base' in pod 'p' is waiting to start: "
                                                               "ContainerCreating"),
])
def test_the_simulated_kubelet_refuses_the_log_of_a_container_that_never_started(
        pod: dict[str, Any], refusal: str | None) -> None:
    assert log_refusal(pod, "base") == refusal
