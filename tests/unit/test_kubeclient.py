"""kubeclient.raw: connections go back to the pool, and the client's masked errors are unmasked."""

from __future__ import annotations

import pytest
from kubernetes.client import ApiException

from kubestream.kubeclient import raw


class Response:
    def __init__(self) -> None:
        self.data = b'{"kind":"Pod"}'
        self.released = False

    def release_conn(self) -> None:
        self.released = True


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

    with pytest.raises(ApiException) as err:
        raw(call)
    assert err.value.status == 503


def test_raw_leaves_other_attribute_errors_alone() -> None:
    def call(*args, **kwargs):
        raise AttributeError("a bug of ours")

    with pytest.raises(AttributeError, match="a bug of ours"):
        raw(call)
