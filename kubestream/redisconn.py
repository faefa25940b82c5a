"""Redis connections with timeouts chosen for each role (never redis-py's defaults).

- ``executor``: short timeouts and at most two quick retries, so an unreachable
  Redis costs the scheduler loop well under a second per call (the work stays
  queued and is retried next heartbeat).
- ``worker``: a blocking reader (XREADGROUP BLOCK <= 2 s) needs
  socket_timeout > BLOCK; retries with capped backoff ride out a Redis restart.

TLS: a ``rediss://`` URL verifies the server's certificate and hostname
(redis-py >= 6 checks hostnames by default and kubestream never turns it off),
against ``redis_tls_ca_file`` when set (else the system's CAs), and presents
``redis_tls_cert_file``/``redis_tls_key_file`` when the server asks for a client
certificate. Credentials belong in the URL (``rediss://user:password@host``), the
password is never logged (``redacted_url``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from kubestream.settings import Settings
from kubestream.text import as_text


def connect(settings: Settings, *, role: str = "worker") -> redis.Redis:
    if role == "executor":
        timeout, retries, backoff = 2.0, 2, ExponentialBackoff(cap=0.2, base=0.02)
    else:
        timeout, retries, backoff = settings.block_ms / 1000 + 5.0, 6, ExponentialBackoff(cap=2.0, base=0.1)
    return redis.Redis.from_url(
        settings.redis_url,
        **tls_options(settings),
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 2.0),
        retry=Retry(backoff, retries),
        health_check_interval=30,
        protocol=2,  # RESP2 replies: XREADGROUP returns lists (see docs/architecture.md)
    )


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS keywords for a ``rediss://`` URL (none for redis:// and unix://)."""
    if not settings.redis_url.startswith("rediss://"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = settings.redis_tls_cert_file
        options["ssl_keyfile"] = settings.redis_tls_key_file or None
    return options


def redacted_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs and CLI output)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def eviction_warning(client: redis.Redis) -> str:
    """A warning when the server may evict kubestream's keys, '' when its policy is ``noeviction``.

    Task records carry TTLs, so a ``volatile-*`` policy would evict live tasks first; any policy
    other than ``noeviction`` can drop stream entries or records under memory pressure. A server
    that refuses CONFIG (managed services often do) gets no warning: the docs say what to set.
    """
    try:
        policy = as_text(client.config_get("maxmemory-policy").get("maxmemory-policy"))
    except redis.ResponseError:
        return ""
    if not policy or policy == "noeviction":
        return ""
    return (f"Redis maxmemory-policy is {policy!r}: under memory pressure it may evict kubestream's task records "
            "and stream entries (tasks lost or stuck). Run Redis with maxmemory-policy noeviction.")
