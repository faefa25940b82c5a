"""The one place that talks to the Kubernetes API (the only kubestream module importing ``kubernetes``).

- ``api_client``: an ApiClient (``KubeClient``) built explicitly from a kubeconfig or the
  in-cluster config, never from global state; its pools hold ``pool_size`` connections and
  the client never retries on its own (callers classify errors and back off).
- ``PodApi``: the pod calls of the launcher, the watcher and the simulated kubelet, on
  plain dicts (API JSON, camelCase), never model objects: create, get, delete with a
  uid precondition, one page of a list, and a watch whose events are decoded here.
- ``request`` / ``exchange`` (every ``PodApi`` call but ``log`` and ``watch``): one call with
  the ApiClient's auth and headers, without its per-call machinery: the body is encoded once,
  compact, from the plain dicts as they are (``encode_body``), the answer is not deserialized
  beyond ``json.loads``, and it goes on the ``KubeClient``'s ``httpwire`` pool, not urllib3
  (on a loaded launcher this is CPU per create: ``docs/benchmarks.md``). urllib3 carries it
  where the configuration needs it (a proxy) and for any other ApiClient.
- ``raw``: a client method's answer, read fully, its connection given back to the pool (a
  response left unread costs a new TLS handshake on the next call).
- Every error answer is an ``ApiError`` (status, reason, body, headers, which
  ``apierrors.classify_exception`` reads); 410, as an HTTP status or as an ERROR event
  inside a watch, is ``Gone``.
- ``to_api_dict``: a model object (e.g. a DAG's ``V1Pod``) as API JSON.
"""

from __future__ import annotations

import datetime
import json
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import should_bypass_proxies

from kubestream.httpwire import TCP_NODELAY, Endpoint, WirePool

Pod = dict[str, Any]
Event = dict[str, Any]  # {"type": ADDED | MODIFIED | DELETED | BOOKMARK, "object": Pod}
Timeout = tuple[float, float]  # (connect, read) seconds
Query = list[tuple[str, str]]

REQUEST_TIMEOUT: Timeout = (5.0, 30.0)
LIST_TIMEOUT: Timeout = (5.0, 60.0)
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """An error answer of the API server.

    ``status`` (0 when no HTTP answer came, e.g. a TLS failure), ``reason`` (the HTTP
    reason phrase), ``body`` (usually a ``Status`` object as JSON) and ``headers``: the
    attributes ``apierrors.classify_exception`` reads, as on the client's ApiException.
    """

    def __init__(self, status: int, reason: str = "", body: str = "",
                 headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})
        text = f"{status} {reason}".strip()
        message = self.message
        super().__init__(f"{text}: {message}" if message else text)

    @property
    def message(self) -> str:
        """The ``Status`` message of the body (the body itself when it is not a Status)."""
        return str(_status_field(self.body, "message") or self.body.strip())

    @property
    def status_reason(self) -> str:
        """The ``Status`` reason of the body, e.g. ``AlreadyExists``, ``Conflict``, ``Expired``."""
        return str(_status_field(self.body, "reason") or "")


class Gone(ApiError):
    """410: the resourceVersion (or continue token) expired; list again."""

    def __init__(self, reason: str = "Gone", body: str = "", headers: Mapping[str, str] | None = None) -> None:
        super().__init__(410, reason, body, headers)


def _status_field(body: str, name: str) -> Any:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get(name) if isinstance(data, dict) else None


def status_body(status: int, message: str, reason: str = "") -> str:
    """A ``Status`` object as the API server sends it with an error (JSON)."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": status})


def _api_error(exc: Any) -> ApiError:
    """The client's ApiException as an ApiError."""
    status = exc.status if isinstance(exc.status, int) else 0
    body = exc.body
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", errors="replace")
    headers = exc.headers
    try:
        headers = {str(k): str(v) for k, v in dict(headers).items()} if headers else None
    except (TypeError, ValueError):
        headers = None
    reason = str(exc.reason or "")
    if status == HTTPStatus.GONE:
        return Gone(reason or "Gone", body if isinstance(body, str) else "", headers)
    return ApiError(status, reason, body if isinstance(body, str) else "", headers)


# --------------------------------------------------------------------------- client


class KubeClient(client.ApiClient):  # type: ignore[misc]
    """The client's ApiClient, with the lean connection pool (``httpwire``) that ``exchange`` sends on when
    the configuration allows one (``wire_pool``); None: ``exchange`` goes through urllib3 as the client does."""

    def __init__(self, configuration: client.Configuration) -> None:
        super().__init__(configuration)
        self.wire = wire_pool(configuration)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.wire is not None:
                self.wire.close()


def wire_pool(configuration: client.Configuration) -> WirePool | None:
    """A ``WirePool`` to the configuration's host with its TLS settings (CA, client certificate, ``verify_ssl``,
    ``tls_server_name``, ``assert_hostname`` False) and pool size; None where urllib3 must carry the requests:
    a proxy, an ``assert_hostname`` naming another host, a scheme other than http(s)."""
    url = urlsplit(configuration.host)
    proxied = configuration.proxy and not should_bypass_proxies(configuration.host,
                                                                  no_proxy=configuration.no_proxy or "")
    if proxied or isinstance(configuration.assert_hostname, str) or url.scheme not in ("http", "https") \
            or not url.hostname or url.path.strip("/"):
        return None
    tls = None
    if url.scheme == "https":
        tls = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        if not configuration.verify_ssl:
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        elif configuration.assert_hostname is False:
            tls.check_hostname = False
        if configuration.cert_file:
            tls.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    options = tuple(configuration.socket_options or ()) or TCP_NODELAY
    endpoint = Endpoint(host=url.hostname, port=url.port or (443 if tls else 80), authority=url.netloc, tls=tls,
                        server_hostname=(configuration.tls_server_name or url.hostname) if tls else None,
                        socket_options=options)
    return WirePool(endpoint, configuration.connection_pool_maxsize or 4)


def api_client(kubeconfig: str = "", context: str = "", *, pool_size: int = 16) -> KubeClient:
    """An ApiClient (``KubeClient``) for ``kubeconfig`` (empty: in-cluster, then ~/.kube/config)."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context or None, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(context=context or None, client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    configuration.retries = False
    return KubeClient(configuration)


def to_api_dict(obj: Any) -> dict[str, Any]:
    """A model object (``V1Pod``...) as API JSON: camelCase keys, None fields dropped."""
    api = client.ApiClient()
    try:
        data = api.sanitize_for_serialization(obj)
    finally:
        api.close()
    if not isinstance(data, dict):
        raise TypeError(f"{type(obj).__name__} does not serialize to an object")
    return data


class ModelCodec:
    """Model objects <-> API JSON with one connection-less ApiClient, built once (the scheduler converts
    a pod both ways for every task when a ``pod_mutation_hook`` is set)."""

    def __init__(self) -> None:
        self._api = client.ApiClient()

    def to_dict(self, obj: Any) -> dict[str, Any]:
        """``obj`` (``V1Pod``...) as API JSON: camelCase keys, None fields dropped."""
        data = self._api.sanitize_for_serialization(obj)
        if not isinstance(data, dict):
            raise TypeError(f"{type(obj).__name__} does not serialize to an object")
        return data

    def from_dict(self, data: dict[str, Any], kind: str) -> Any:
        """API JSON as the model class ``kind`` (``"V1Pod"``), as the client deserializes a response."""
        return self._api._ApiClient__deserialize(data, kind)  # the client's own, not public


def _send(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a client method without reading its answer; errors as ApiError.

    The client masks an error response whose body it cannot read (``e.body.decode`` on
    None in ``ApiClient.__call_api``) with an AttributeError; the ApiException it hid,
    with its status, is what is raised (as an ApiError), so it is classified like any other.
    """
    try:
        return call(*args, _preload_content=False, **kwargs)
    except client.ApiException as exc:
        raise _api_error(exc) from None
    except AttributeError as exc:
        if isinstance(exc.__context__, client.ApiException):
            raise _api_error(exc.__context__) from None
        raise


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    """Call a client method (e.g. ``CoreV1Api.create_namespaced_pod``) without deserializing its
    answer: return the body, read fully, and give the connection back to the pool."""
    resp = _send(call, *args, **kwargs)
    try:
        data: bytes = resp.data
        return data
    finally:
        resp.release_conn()


def _call_api(api: Any, method: str, path: str, body: Any, query: Query, content_type: str,
              timeout: Timeout) -> Callable[..., Any]:
    def call(**kwargs: Any) -> Any:
        return api.call_api(path, method, query_params=query, body=body, auth_settings=["BearerToken"],
                            header_params={"Accept": JSON, "Content-Type": content_type},
                            _request_timeout=timeout, **kwargs)

    return call


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime.date):  # a YAML template's unquoted date, as the client's sanitize sends it
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode_body(body: Any) -> bytes:
    """API JSON (plain dicts, lists, scalars) as a request body: compact, ASCII, encoded once; dates as
    ISO 8601 (as the client's ``sanitize_for_serialization``). TypeError for anything else."""
    return json.dumps(body, separators=(",", ":"), default=_json_default).encode("ascii")


def exchange(api: Any, method: str, path: str, body: bytes | None = None, *, query: Query | None = None,
             content_type: str = JSON, timeout: Timeout = REQUEST_TIMEOUT) -> bytes:
    """One request on ``api``'s connections (its ``wire`` pool when it has one, else the client's urllib3
    pool) with its host, default headers and bearer token (the configuration's, refreshed by its hook as the
    client does), ``body`` sent as given; the answer's body, read fully, the connection kept for the next
    request. Non-2xx: ``ApiError`` (``Gone`` for 410); a TLS failure: ``ApiError`` with status 0 (as the
    client's); other connection errors are the transport's own (OSError, ``WireError``, urllib3's)."""
    headers = {"Accept": JSON, "Content-Type": content_type, **api.default_headers}
    if api.cookie:
        headers["Cookie"] = api.cookie
    params = list(query or ())
    api.update_params_for_auth(headers, params, ["BearerToken"])
    target = path + ("?" + urlencode(params) if params else "")
    wire: WirePool | None = getattr(api, "wire", None)
    try:
        if wire is not None:
            answer = wire.request(method, target, headers, body, timeout=timeout)
            status, reason, data, answer_headers = answer.status, answer.reason, answer.body, answer.headers
        else:
            status, reason, data, answer_headers = _urllib3_exchange(api, method, target, body, headers, timeout)
    except (ssl.SSLError, urllib3.exceptions.SSLError) as exc:
        raise ApiError(0, f"{type(exc).__name__}\n{exc}") from None
    if not 200 <= status <= 299:
        text = data.decode("utf-8", errors="replace")
        if status == HTTPStatus.GONE:
            raise Gone(reason or "Gone", text, answer_headers)
        raise ApiError(status, reason or "", text, answer_headers)
    return data


def _urllib3_exchange(api: Any, method: str, target: str, body: bytes | None, headers: dict[str, str],
                      timeout: Timeout) -> tuple[int, str, bytes, dict[str, str]]:
    resp = api.rest_client.pool_manager.request(method, api.configuration.host + target, body=body, headers=headers,
                                                preload_content=False,
                                                timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]))
    try:
        data: bytes = resp.data
    finally:
        resp.release_conn()
    answer_headers = {str(k): str(v) for k, v in dict(resp.headers).items()} if not 200 <= resp.status <= 299 else {}
    return resp.status, resp.reason or "", data, answer_headers


def request(api: Any, method: str, path: str, body: Any = None, *, query: Query | None = None,
            content_type: str = JSON, timeout: Timeout = REQUEST_TIMEOUT) -> Any:
    """One request to ``path``: JSON in, JSON out (None for an empty answer); ApiError on non-2xx."""
    data = exchange(api, method, path, None if body is None else encode_body(body), query=query,
                    content_type=content_type, timeout=timeout)
    return json.loads(data) if data else None


# --------------------------------------------------------------------------- pods


@dataclass(frozen=True, slots=True)
class PodList:
    """One page of a pod list."""

    items: list[Pod]
    continue_token: str  # "" on the last page
    resource_version: str


def pods_path(namespace: str, name: str = "") -> str:
    """``/api/v1/namespaces/<ns>/pods[/<name>]``; an empty namespace means every namespace."""
    base = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
    return f"{base}/{name}" if name else base


class PodApi:
    """Pod calls on plain dicts. Errors: ``ApiError`` (``Gone`` for 410), or the connection's own."""

    def __init__(self, api: Any, *, timeout: Timeout = REQUEST_TIMEOUT, list_timeout: Timeout = LIST_TIMEOUT) -> None:
        self.api = api
        self.timeout = timeout
        self.list_timeout = list_timeout

    def open_connections(self, n: int) -> int:
        """Open up to ``n`` connections ahead of the calls that will use them, all at once (each TLS handshake is
        one or two round trips that a first create would otherwise wait for); how many were opened. 0 without an
        ``httpwire`` pool; a connection that cannot be opened is left to the call that needs it."""
        wire: WirePool | None = getattr(self.api, "wire", None)
        return wire.prefill(n, connect_timeout=self.timeout[0]) if wire is not None else 0

    def create(self, namespace: str, pod: Pod, *, timeout: Timeout | None = None) -> Pod:
        """Create ``pod``; 409 (``status_reason`` AlreadyExists) when its name is taken. ``timeout``
        (create, get, delete): this call's (connect, read) seconds instead of the client's."""
        created: Pod = request(self.api, "POST", pods_path(namespace), pod, timeout=timeout or self.timeout)
        return created

    def create_unread(self, namespace: str, pod: Pod, *, timeout: Timeout | None = None) -> None:
        """``create``, the created pod the API answers with left unparsed (a launcher has no use for it)."""
        exchange(self.api, "POST", pods_path(namespace), encode_body(pod), timeout=timeout or self.timeout)

    def get(self, namespace: str, name: str, *, timeout: Timeout | None = None) -> Pod | None:
        """The pod, or None when there is none (404)."""
        try:
            pod: Pod = request(self.api, "GET", pods_path(namespace, name), timeout=timeout or self.timeout)
        except ApiError as exc:
            if exc.status == HTTPStatus.NOT_FOUND:
                return None
            raise
        return pod

    def delete(self, namespace: str, name: str, *, uid: str = "", grace_period_seconds: int | None = None,
               timeout: Timeout | None = None) -> bool:
        """Delete the pod (only if its uid is ``uid``, when given: 409 if it is another pod by now).
        False when there was no pod (404)."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        try:
            request(self.api, "DELETE", pods_path(namespace, name), options, timeout=timeout or self.timeout)
        except ApiError as exc:
            if exc.status == HTTPStatus.NOT_FOUND:
                return False
            raise
        return True

    def list(self, namespace: str, *, label_selector: str = "", limit: int = 500,
             continue_token: str = "", field_selector: str = "") -> PodList:
        """One page of pods (empty namespace: every namespace). 410 (``Gone``) when
        ``continue_token`` expired."""
        query: Query = [("limit", str(limit))]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if continue_token:
            query.append(("continue", continue_token))
        body = request(self.api, "GET", pods_path(namespace), query=query, timeout=self.list_timeout) or {}
        meta = body.get("metadata") or {}
        return PodList(body.get("items") or [], str(meta.get("continue") or ""), str(meta.get("resourceVersion") or ""))

    def log(self, namespace: str, name: str, *, container: str, tail_lines: int, limit_bytes: int,
            timeout: Timeout | None = None) -> bytes:
        """The last ``tail_lines`` lines of a container's log (``pods/log``: the API server reads them from the
        pod's kubelet), at most ``limit_bytes`` bytes (counted from the first line of that tail)."""
        query: Query = [("container", container), ("tailLines", str(tail_lines)), ("limitBytes", str(limit_bytes))]

        def call(**kwargs: Any) -> Any:
            return self.api.call_api(pods_path(namespace, name) + "/log", "GET", query_params=query,
                                     auth_settings=["BearerToken"], header_params={"Accept": "*/*"},
                                     _request_timeout=timeout or self.timeout, **kwargs)

        return raw(call)

    def watch(self, namespace: str, resource_version: str, *, label_selector: str = "", timeout_seconds: int = 300,
              bookmarks: bool = True) -> PodWatch:
        """The pod events after ``resource_version`` (empty namespace: every namespace). The request
        is sent when the events are iterated."""
        query: Query = [("watch", "true"), ("resourceVersion", resource_version),
                        ("timeoutSeconds", str(timeout_seconds))]
        if bookmarks:
            query.append(("allowWatchBookmarks", "true"))
        if label_selector:
            query.append(("labelSelector", label_selector))
        call = _call_api(self.api, "GET", pods_path(namespace), None, query, JSON,
                         (self.timeout[0], timeout_seconds + 10.0))
        return PodWatch(call)


class PodWatch:
    """One watch request: iterate to get its events, decoded (``{"type", "object"}``).

    Iteration ends when the server ends the watch (its ``timeoutSeconds``) or when
    ``interrupt()`` is called from another thread (the blocked read is unblocked). An ERROR
    event raises: ``Gone`` for code 410, else ``ApiError``; a 410 answer to the request too.
    A response read to its end goes back to the pool; one left mid-stream is closed.
    """

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call
        self._lock = threading.Lock()
        self._resp: Any = None
        self._interrupted = threading.Event()
        self._opened = False

    @property
    def interrupted(self) -> bool:
        return self._interrupted.is_set()

    @property
    def opened(self) -> bool:
        """Whether the server answered the request (its events stream, or are about to)."""
        return self._opened

    def interrupt(self) -> None:
        """End the iteration, now or as soon as the request is sent (any thread)."""
        with self._lock:
            self._interrupted.set()
            resp = self._resp
        if resp is not None:
            _shutdown(resp)

    def __iter__(self) -> Iterator[Event]:
        if self._interrupted.is_set():
            return
        resp = _send(self._call)
        self._opened = True
        with self._lock:
            self._resp = resp
        if self._interrupted.is_set():  # interrupted while the request was on its way
            _shutdown(resp)
        complete = False
        try:
            for line in _lines(resp):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise _event_error(event.get("object"))
                yield event
            complete = not self._interrupted.is_set()
        except Exception:
            if self._interrupted.is_set():
                return  # the read failed because it was unblocked on purpose
            raise
        finally:
            with self._lock:
                self._resp = None
            if complete:
                resp.release_conn()
            else:
                resp.close()  # mid-stream: this connection must not serve another request


def _event_error(obj: Any) -> ApiError:
    status = obj if isinstance(obj, dict) else {}
    code = status.get("code")
    body = json.dumps(status)
    if code == HTTPStatus.GONE:
        return Gone(str(status.get("reason") or "Gone"), body)
    return ApiError(code if isinstance(code, int) else 0, str(status.get("reason") or "watch error"), body)


def _shutdown(resp: Any) -> None:
    """Unblock a read in progress on ``resp`` (urllib3 shuts the socket down for reading)."""
    try:
        resp.shutdown()
    except (OSError, ValueError, RuntimeError):  # closed or released already: nothing to unblock
        pass


def _lines(resp: Any) -> Iterator[bytes]:
    """The non-empty lines of a chunked answer, as they arrive."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
    if buf.strip():
        yield buf
