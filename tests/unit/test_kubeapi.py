"""kubestream.kubeapi: responses read and connections released, the client's masked errors unmasked,
errors as ApiError / Gone, watch lines and interrupts; and the bar: no other module imports kubernetes."""

from __future__ import annotations

import ast
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiException
from kubernetes.client import models as k8s

from devkit.procs import wait_for
from kubestream.apierrors import classify_exception
from kubestream.kubeapi import ApiError, Gone, PodWatch, raw, status_body, to_api_dict

PACKAGE = Path(__file__).resolve().parents[2] / "kubestream"


class Response:
    """What the client returns with ``_preload_content=False``: a urllib3 response."""

    def __init__(self, data: bytes = b'{"kind":"Pod"}', chunks: list[bytes] | None = None) -> None:
        self.data = data
        self.chunks = chunks or []
        self.released = self.closed = False
        self.unblock = threading.Event()
        self.blocking = False

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Iterator[bytes]:
        yield from self.chunks
        if self.blocking:  # a watch waiting for its next event
            self.unblock.wait(30)
            raise OSError("read on a socket shut down")

    def shutdown(self) -> None:
        self.unblock.set()

    def release_conn(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


def api_exception(status: int, body: str | None, headers: dict[str, str] | None = None) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body, exc.headers = body, headers
    return exc


def test_raw_reads_the_body_and_releases_the_connection() -> None:
    resp = Response()
    seen = {}

    def call(*args, **kwargs):
        seen.update(kwargs)
        return resp

    assert raw(call, "ns", _request_timeout=1) == b'{"kind":"Pod"}'
    assert resp.released and seen == {"_preload_content": False, "_request_timeout": 1}


def test_raw_unmasks_an_api_error_whose_body_could_not_be_read() -> None:
    def call(*args, **kwargs):
        try:
            raise ApiException(status=503, reason="Service Unavailable")
        except ApiException as e:  # what ApiClient.__call_api does with an unreadable body
            e.body = None
            e.body = e.body.decode("utf-8")

    with pytest.raises(ApiError) as err:
        raw(call)
    assert err.value.status == 503 and err.value.reason == "Service Unavailable"
    assert classify_exception(err.value).kind == "transient"


def test_raw_leaves_other_attribute_errors_alone() -> None:
    def call(*args, **kwargs):
        raise AttributeError("a bug of ours")

    with pytest.raises(AttributeError, match="a bug of ours"):
        raw(call)


def test_errors_keep_what_classification_reads_and_410_is_gone() -> None:
    def failing(exc: ApiException):
        def call(*args, **kwargs):
            raise exc
        return call

    body = status_body(409, 'pods "p" already exists', "AlreadyExists")
    with pytest.raises(ApiError) as err:
        raw(failing(api_exception(409, body)))
    assert (err.value.status_reason, err.value.message) == ("AlreadyExists", 'pods "p" already exists')
    assert classify_exception(err.value).kind == "exists"

    with pytest.raises(ApiError) as err:
        raw(failing(api_exception(429, status_body(429, "slow down"), {"Retry-After": "2"})))
    outcome = classify_exception(err.value)
    assert (outcome.kind, outcome.retry_after) == ("transient", 2.0)

    with pytest.raises(Gone) as gone:
        raw(failing(api_exception(410, status_body(410, "too old resource version", "Expired"))))
    assert gone.value.status == 410 and gone.value.status_reason == "Expired"


def events(*objs: dict) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_a_watch_splits_lines_across_chunks_and_releases_a_finished_stream() -> None:
    stream = (events({"type": "ADDED", "object": {"metadata": {"name": "a"}}}) + b"\n\n"  # blank lines: skipped
              + events({"type": "BOOKMARK", "object": {}}, {"type": "DELETED", "object": {"metadata": {"name": "a"}}}))
    resp = Response(chunks=[stream[:7], stream[7:50], stream[50:-3], stream[-3:]])
    watch = PodWatch(lambda **kw: resp)
    assert [e["type"] for e in watch] == ["ADDED", "BOOKMARK", "DELETED"]
    assert resp.released and not resp.closed


@pytest.mark.parametrize("code, error", [(410, Gone), (500, ApiError)])
def test_an_error_event_raises_and_closes_the_connection(code: int, error: type[Exception]) -> None:
    stream = events({"type": "ADDED", "object": {}},
                    {"type": "ERROR", "object": {"kind": "Status", "code": code, "message": "m", "reason": "R"}})
    resp = Response(chunks=[stream])
    seen = []
    with pytest.raises(error) as err:
        for event in PodWatch(lambda **kw: resp):
            seen.append(event["type"])
    assert seen == ["ADDED"] and getattr(err.value, "status", None) == code
    assert resp.closed and not resp.released


def test_interrupt_unblocks_a_watch_waiting_for_its_next_event() -> None:
    resp = Response(chunks=events({"type": "ADDED", "object": {}}).splitlines(keepends=True))
    resp.blocking = True
    watch = PodWatch(lambda **kw: resp)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(e["type"] for e in watch))
    reader.start()
    wait_for(lambda: seen == ["ADDED"], timeout=10, what="the first event")
    watch.interrupt()
    reader.join(timeout=10)
    assert not reader.is_alive() and watch.interrupted
    assert resp.closed and not resp.released  # mid-stream: never back to the pool


def test_a_watch_interrupted_before_it_starts_sends_nothing() -> None:
    calls = []
    watch = PodWatch(lambda **kw: calls.append(kw))
    watch.interrupt()
    assert list(watch) == [] and calls == []


def test_to_api_dict_gives_api_json() -> None:
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="p", annotations={"a": "b"}),
                    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", image_pull_policy="Never")]))
    assert to_api_dict(pod) == {"metadata": {"name": "p", "annotations": {"a": "b"}},
                                "spec": {"containers": [{"name": "base", "imagePullPolicy": "Never"}]}}


def _kubernetes_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {n}" for n in names
                  if n == "kubernetes" or n.startswith("kubernetes.")]
    return found


def test_no_module_but_kubeapi_imports_kubernetes() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "kubeapi.py" in sources and _kubernetes_imports(PACKAGE / "kubeapi.py")
    offenders = [hit for path in sources if path.name != "kubeapi.py" or path.parent != PACKAGE
                 for hit in _kubernetes_imports(path)]
    assert offenders == []
