"""Redis connections with timeouts chosen for each role (never redis-py's defaults).

- ``executor``: short timeouts and at most two quick retries, so an unreachable
  Redis costs the scheduler loop well under a second per call (the work stays
  queued and is retried next heartbeat).
- ``worker``: a blocking reader (XREADGROUP BLOCK <= 2 s) needs
  socket_timeout > BLOCK; retries with capped backoff ride out a Redis restart.
"""

from __future__ import annotations

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
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 2.0),
        retry=Retry(backoff, retries),
        health_check_interval=30,
        protocol=2,  # RESP2 replies: XREADGROUP returns lists (see docs/architecture.md)
    )


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
