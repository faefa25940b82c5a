import json
import socket
import subprocess
import sys
from http.client import IncompleteRead, RemoteDisconnected

import pytest
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from kubestream.apierrors import Outcome, classify_create_error, classify_exception, parse_retry_after


def status_body(code: int, reason: str, message: str) -> str:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code})


INVALID = 'Pod "x" is invalid: spec.containers[0].image: Required value'


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retry_after"),
    [
        pytest.param(None, None, None, "transient", None, id="connection-error"),
        pytest.param(201, '{"kind":"Pod"}', None, "created", None, id="201"),
        pytest.param(409, status_body(409, "AlreadyExists", 'pods "x" already exists'), None, "exists", None,
                     id="409-already-exists"),
        pytest.param(409, 'pods "x" already exists', None, "exists", None, id="409-already-exists-plain"),
        pytest.param(409, status_body(409, "Conflict", "Operation cannot be fulfilled on pods \"x\": the object "
                                      "has been modified; please apply your changes"), None, "transient", None,
                     id="409-modified"),
        pytest.param(409, status_body(409, "Conflict", "conflict"), None, "transient", None, id="409-conflict"),
        pytest.param(403, status_body(403, "Forbidden", 'pods "x" is forbidden: exceeded quota: q, requested: '
                                      "cpu=1, used: cpu=4, limited: cpu=4"), None, "transient", None,
                     id="403-exceeded-quota"),
        pytest.param(403, status_body(403, "Forbidden", 'pods is forbidden: User "u" cannot create resource'),
                     None, "denied", None, id="403-forbidden"),
        pytest.param(410, status_body(410, "Expired", "too old resource version"), None, "transient", None,
                     id="410"),
        pytest.param(429, status_body(429, "TooManyRequests", "Too many requests"), {"Retry-After": "3"},
                     "transient", 3.0, id="429-retry-after"),
        pytest.param(429, "Too many requests, please try again later.\n", {"retry-after": "1"}, "transient", 1.0,
                     id="429-plain-body-lowercase-header"),
        pytest.param(429, None, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, "transient", None,
                     id="429-http-date"),
        pytest.param(429, None, {"Retry-After": "soon"}, "transient", None, id="429-garbage"),
        pytest.param(429, None, {"Retry-After": "-5"}, "transient", None, id="429-negative"),
        pytest.param(429, None, None, "transient", None, id="429-no-header"),
        pytest.param(500, status_body(500, "InternalError", "etcdserver: request timed out"), None, "transient",
                     None, id="500"),
        pytest.param(502, "bad gateway", None, "transient", None, id="502"),
        pytest.param(503, status_body(503, "ServiceUnavailable", "apiserver is shutting down"),
                     {"Retry-After": "5"}, "transient", 5.0, id="503-retry-after"),
        pytest.param(504, None, None, "transient", None, id="504"),
        pytest.param(400, status_body(400, "BadRequest", "bad request"), None, "permanent", None, id="400"),
        pytest.param(404, status_body(404, "NotFound", 'namespaces "nope" not found'), None, "permanent", None,
                     id="404"),
        pytest.param(422, status_body(422, "Invalid", INVALID), None, "permanent", None, id="422"),
        pytest.param(401, status_body(401, "Unauthorized", "Unauthorized"), None, "permanent", None, id="401"),
        pytest.param(413, "too large", None, "permanent", None, id="413"),
    ],
)
def test_classify_create_error(status, body, headers, kind, retry_after):
    outcome = classify_create_error(status, body, headers)
    assert outcome.kind == kind
    assert outcome.retry_after == retry_after
    if status is not None:
        assert outcome.message.startswith(f"{status} ")


def test_message_from_status_json():
    outcome = classify_create_error(422, status_body(422, "Invalid", INVALID).encode(), None)
    assert outcome == Outcome("permanent", f"422 Unprocessable Entity: {INVALID}")


def test_message_from_plain_body_truncated():
    outcome = classify_create_error(400, "x" * 5000, None)
    assert outcome.message == "400 Bad Request: " + "x" * 1000


def test_message_without_body():
    assert classify_create_error(404, None, None).message == "404 Not Found"
    assert classify_create_error(404, b"", None).message == "404 Not Found"


def test_non_utf8_body():
    outcome = classify_create_error(500, b"\xff\xfeboom", None)
    assert outcome.kind == "transient" and "boom" in outcome.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", 1.0), (" 120 ", 120.0), ("0", 0.0), ("1.5", 1.5), (b"2", 2.0), (None, None), ("", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("-1", None), ("nan", None), ("inf", None), ("abc", None)],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value) == expected


class FakeApiError(Exception):
    """Looks like kubernetes' ApiException without being one."""

    def __init__(self, status, body=None, headers=None, reason=None):
        super().__init__(f"({status})")
        self.status, self.body, self.headers, self.reason = status, body, headers, reason


class UnrelatedError(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "kind", "retry_after", "in_message"),
    [
        pytest.param(FakeApiError(429, status_body(429, "TooManyRequests", "slow down"), {"Retry-After": "2"}),
                     "transient", 2.0, "429 Too Many Requests: slow down", id="duck-429"),
        pytest.param(FakeApiError(409, status_body(409, "AlreadyExists", "exists")), "exists", None, "exists",
                     id="duck-409-exists"),
        pytest.param(FakeApiError(422, status_body(422, "Invalid", INVALID)), "permanent", None, INVALID,
                     id="duck-422"),
        pytest.param(FakeApiError(403, None, None, reason="exceeded quota: q"), "transient", None, "exceeded quota",
                     id="duck-403-quota-reason-only"),
        pytest.param(FakeApiError(None, reason="Connection refused"), "transient", None, "Connection refused",
                     id="duck-no-status"),
        pytest.param(ConnectionRefusedError(111, "Connection refused"), "transient", None, "ConnectionRefusedError",
                     id="refused"),
        pytest.param(ConnectionResetError(104, "reset"), "transient", None, "reset", id="reset"),
        pytest.param(TimeoutError("timed out"), "transient", None, "timed out", id="timeout"),
        pytest.param(socket.gaierror(-2, "Name or service not known"), "transient", None, "gaierror", id="dns"),
        pytest.param(OSError("boom"), "transient", None, "boom", id="oserror"),
        pytest.param(urllib3.exceptions.MaxRetryError(None, "/api", reason=OSError("refused")), "transient", None,
                     "MaxRetryError", id="urllib3-maxretry"),
        pytest.param(urllib3.exceptions.ProtocolError("Connection aborted."), "transient", None, "ProtocolError",
                     id="urllib3-protocol"),
        pytest.param(urllib3.exceptions.ReadTimeoutError(None, "/api", "Read timed out."), "transient", None,
                     "ReadTimeoutError", id="urllib3-read-timeout"),
        pytest.param(urllib3.exceptions.LocationValueError("bad url"), "permanent", None, "bad url",
                     id="urllib3-bad-url"),
        pytest.param(RemoteDisconnected("closed"), "transient", None, "closed", id="remote-disconnected"),
        pytest.param(IncompleteRead(b"abc"), "transient", None, "IncompleteRead", id="incomplete-read"),
        pytest.param(ValueError("Invalid value for `containers`, must not be `None`"), "permanent", None,
                     "ValueError: Invalid value", id="value-error"),
        pytest.param(UnrelatedError("oops"), "transient", None, "unexpected error: UnrelatedError: oops", id="other"),
        pytest.param(AttributeError("'NoneType' object has no attribute 'decode'"), "transient", None,
                     "AttributeError", id="client-glitch"),
    ],
)
def test_classify_exception(exc, kind, retry_after, in_message):
    outcome = classify_exception(exc)
    assert outcome.kind == kind
    assert outcome.retry_after == retry_after
    assert in_message in outcome.message


def test_real_api_exception_422():
    exc = ApiException(status=422, reason="Unprocessable Entity")
    exc.body = status_body(422, "Invalid", INVALID).encode()
    outcome = classify_exception(exc)
    assert outcome == Outcome("permanent", f"422 Unprocessable Entity: {INVALID}")


def test_real_api_exception_without_body_uses_phrase_once():
    outcome = classify_exception(ApiException(status=500, reason="Internal Server Error"))
    assert outcome == Outcome("transient", "500 Internal Server Error")


def test_real_api_exception_from_http_response():
    class Resp:
        status = 429
        reason = "Too Many Requests"
        data = b"Too many requests"

        def getheaders(self):
            return urllib3.HTTPHeaderDict({"retry-after": "7", "Content-Type": "text/plain"})

    outcome = classify_exception(ApiException(http_resp=Resp()))
    assert outcome == Outcome("transient", "429 Too Many Requests: Too many requests", 7.0)


def test_modules_are_pure():
    code = ("import sys, kubestream.apierrors, kubestream.watcher.classify, kubestream.backoff; "
            "assert 'kubernetes' not in sys.modules and 'airflow' not in sys.modules and 'urllib3' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
