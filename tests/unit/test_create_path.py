"""The launcher's create path without the client's per-call machinery: ``kubeapi.encode_body`` and
``kubeapi.exchange`` (on a real ApiClient and its configuration, its urllib3 pool replaced by a recorder:
what is sent, what an answer becomes), and podspec's copy and label fast paths."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
import urllib3
import yaml
from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value
from kubernetes import client

from kubestream.apierrors import classify_exception
from kubestream.kubeapi import ApiError, Gone, PodApi, encode_body, exchange, status_body
from kubestream.taskkey import TaskKey
from kubestream.workers.podspec import PodSpecError, build_pod, load_template_yaml, safe_label_value


class Answer:
    """A urllib3 response as the pool returns it with ``preload_content=False``."""

    def __init__(self, status: int, data: bytes, headers: dict[str, str] | None = None, reason: str = "") -> None:
        self.status, self.reason = status, reason
        self.headers = urllib3.HTTPHeaderDict(headers or {"Content-Type": "application/json"})
        self._data = data
        self.read_fully = self.released = False

    @property
    def data(self) -> bytes:
        self.read_fully = True
        return self._data

    def release_conn(self) -> None:
        self.released = True


class Pool:
    def __init__(self, answer: Answer | Exception) -> None:
        self.answer = answer
        self.sent: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Answer:
        self.sent.append({"method": method, "url": url, **kwargs})
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def api_with(answer: Answer | Exception, *, token: str = "Bearer t0") -> tuple[Any, Pool]:
    configuration = client.Configuration(host="https://k8s.example:6443")
    configuration.api_key = {"authorization": token}
    api = client.ApiClient(configuration)
    pool = Pool(answer)
    api.rest_client.pool_manager = pool
    return api, pool


def test_encode_body_is_compact_ascii_json_with_dates_as_iso() -> None:
    body = {"metadata": {"name": "p", "annotations": {"day": datetime.date(2026, 11, 30), "é": "ü"}}, "n": [1, None]}
    data = encode_body(body)
    assert data == b'{"metadata":{"name":"p","annotations":{"day":"2026-11-30","\\u00e9":"\\u00fc"}},"n":[1,null]}'
    assert json.loads(data)["metadata"]["annotations"]["é"] == "ü"
    with pytest.raises(TypeError):
        encode_body({"x": object()})
    assert classify_exception(TypeError("x")).kind == "permanent"  # a body that cannot be sent fails the task


def test_create_sends_the_body_once_with_auth_and_headers_and_reads_the_answer() -> None:
    created = {"kind": "Pod", "metadata": {"name": "p", "uid": "u1"}}
    answer = Answer(201, json.dumps(created).encode())
    api, pool = api_with(answer)
    api.configuration.refresh_api_key_hook = lambda conf: conf.api_key.update(authorization="Bearer t1")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}
    assert PodApi(api).create("ns", pod, timeout=(2.0, 7.0)) == created
    (sent,) = pool.sent
    assert (sent["method"], sent["url"]) == ("POST", "https://k8s.example:6443/api/v1/namespaces/ns/pods")
    assert sent["body"] == encode_body(pod) and json.loads(sent["body"]) == pod
    assert sent["headers"]["authorization"] == "Bearer t1"  # the configuration's hook refreshed the token
    assert sent["headers"]["Content-Type"] == "application/json" and sent["headers"]["Accept"] == "application/json"
    assert sent["headers"]["User-Agent"] == api.user_agent
    assert sent["preload_content"] is False
    assert (sent["timeout"].connect_timeout, sent["timeout"].read_timeout) == (2.0, 7.0)
    assert answer.read_fully and answer.released  # the connection goes back to the pool


def test_a_query_goes_into_the_url() -> None:
    api, pool = api_with(Answer(200, b'{"items":[],"metadata":{"continue":"c2","resourceVersion":"9"}}'))
    page = PodApi(api).list("ns", label_selector="a=b,c", limit=5, continue_token="c1")
    assert (page.items, page.continue_token, page.resource_version) == ([], "c2", "9")
    assert pool.sent[0]["url"] == ("https://k8s.example:6443/api/v1/namespaces/ns/pods"
                                   "?limit=5&labelSelector=a%3Db%2Cc&continue=c1")
    assert pool.sent[0]["body"] is None


@pytest.mark.parametrize(("status", "reason", "kind"), [
    (409, "AlreadyExists", "exists"), (409, "Conflict", "transient"), (422, "Invalid", "permanent"),
    (403, "Forbidden", "denied"), (429, "TooManyRequests", "transient"), (503, "ServiceUnavailable", "transient"),
])
def test_an_error_answer_is_an_api_error_read_fully_and_released(status: int, reason: str, kind: str) -> None:
    body = status_body(status, f"it is {reason}", reason)
    answer = Answer(status, body.encode(), {"Content-Type": "application/json", "Retry-After": "3"}, reason="Why")
    api, _ = api_with(answer)
    with pytest.raises(ApiError) as caught:
        exchange(api, "POST", "/api/v1/namespaces/ns/pods", b"{}")
    exc = caught.value
    assert (exc.status, exc.reason, exc.body, exc.status_reason) == (status, "Why", body, reason)
    assert exc.headers["Retry-After"] == "3"
    outcome = classify_exception(exc)
    assert outcome.kind == kind
    if status in (429, 503):
        assert outcome.retry_after == 3.0
    assert answer.read_fully and answer.released


def test_410_is_gone_and_a_body_not_utf8_is_kept_readable() -> None:
    api, _ = api_with(Answer(410, b"\xff expired", reason="Gone"))
    with pytest.raises(Gone) as caught:
        exchange(api, "GET", "/api/v1/pods")
    assert caught.value.status == 410 and "expired" in caught.value.body


def test_a_tls_failure_is_an_api_error_without_status_and_other_errors_pass_through() -> None:
    api, _ = api_with(urllib3.exceptions.SSLError("certificate verify failed"))
    with pytest.raises(ApiError) as caught:
        exchange(api, "GET", "/api/v1/pods")
    assert caught.value.status == 0 and "certificate verify failed" in str(caught.value)
    assert classify_exception(caught.value).kind == "transient"
    api, _ = api_with(urllib3.exceptions.ProtocolError("connection reset"))
    with pytest.raises(urllib3.exceptions.ProtocolError):
        exchange(api, "GET", "/api/v1/pods")


def test_get_and_delete_keep_their_404_meaning() -> None:
    api, pool = api_with(Answer(404, status_body(404, "not found", "NotFound").encode()))
    pods = PodApi(api)
    assert pods.get("ns", "p") is None
    assert pods.delete("ns", "p", uid="u1", grace_period_seconds=0) is False
    assert json.loads(pool.sent[1]["body"]) == {"apiVersion": "v1", "kind": "DeleteOptions",
                                                "preconditions": {"uid": "u1"}, "gracePeriodSeconds": 0}


# --------------------------------------------------------------------------- podspec


def test_build_pod_shares_nothing_mutable_with_its_template_and_override() -> None:
    template = load_template_yaml("apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {team: a}\nspec:\n"
                                  "  containers:\n  - name: base\n    image: x\n    env: [{name: A, value: '1'}]\n"
                                  "  tolerations: [{key: k, operator: Exists}]\n")
    override = {"spec": {"nodeSelector": {"disk": "ssd"}, "volumes": [{"name": "v", "emptyDir": {}}]}}
    before = (json.dumps(template), json.dumps(override))
    key = TaskKey("d", "t", "r", 1)
    pod = build_pod(key=key, namespace="ns", image="img", workload_json="{}", scheduler_id="s", template=template,
                    pod_override=override)
    pod["spec"]["containers"][0]["env"].append({"name": "B"})
    pod["spec"]["tolerations"][0]["key"] = "changed"
    pod["spec"]["nodeSelector"]["disk"] = "hdd"
    pod["spec"]["volumes"][0]["emptyDir"]["medium"] = "Memory"
    pod["metadata"]["labels"]["team"] = "b"
    assert (json.dumps(template), json.dumps(override)) == before
    assert build_pod(key=key, namespace="ns", image="img", workload_json="{}", scheduler_id="s", template=template,
                     pod_override=override, pod_name=key.pod_name())["metadata"]["name"] == key.pod_name()


def test_a_template_that_refers_to_itself_is_a_pod_spec_error() -> None:
    text = "apiVersion: v1\nkind: Pod\nspec: &loop\n  containers: []\n  inner: *loop\n"
    spec = yaml.safe_load(text)["spec"]
    assert spec["inner"] is spec  # a structure with a cycle, as YAML allows
    with pytest.raises(PodSpecError, match="refers to itself"):
        load_template_yaml(text)


@pytest.mark.parametrize("value", [
    "a", "A9", "a" * 63, "a" * 64, "a-", "-a", "a.b_c-d", "a..b", "a b", "ä", "a" * 62 + ".", "_a", "a_", "9" * 63,
    "dag-with.dots_and-dashes", "", "-", "a/b", "a\nb",
])
def test_safe_label_value_fast_path_matches_the_provider(value: str) -> None:
    assert safe_label_value(value) == make_safe_label_value(value)
