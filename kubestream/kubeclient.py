"""Kubernetes API access shared by the launcher, the watcher and the local cluster tooling.

The one shared module that imports ``kubernetes`` (the shared core does not; the
executor never uses it). Clients are built explicitly from a kubeconfig, never
from global state, and raw calls always give their connection back to the pool:
a response left unread would cost a new TLS handshake on the next call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client, config


def api_client(kubeconfig: str = "", context: str = "", *, pool_size: int = 16) -> client.ApiClient:
    """An ApiClient for ``kubeconfig`` (empty: in-cluster, then ~/.kube/config)."""
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
    return client.ApiClient(configuration)


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    """Call an API method without deserializing its answer; return the body and release the connection.

    The client masks an error response whose body it cannot read (``e.body.decode`` on None in
    ``ApiClient.__call_api``) with an AttributeError; the ApiException it hid, with its status,
    is raised instead so that it is classified like any other API error.
    """
    try:
        resp = call(*args, _preload_content=False, **kwargs)
    except AttributeError as exc:
        if isinstance(exc.__context__, client.ApiException):
            raise exc.__context__ from None
        raise
    try:
        return resp.data
    finally:
        resp.release_conn()
