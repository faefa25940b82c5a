"""Classify the outcome of a pod create call (pure: imports neither kubernetes nor airflow).

Rules follow Airflow's KubernetesExecutor (``_handle_pod_publish_error``) and
``generic_api_retry``:

- 2xx: ``created``; 409 with reason ``AlreadyExists``: ``exists`` (a previous
  delivery already created the pod: success).
- transient (retry with backoff, the create may be repeated safely because the
  pod name is deterministic): no status (connection error / timeout), 409 other
  than AlreadyExists (conflict, "the object has been modified"), 403 "exceeded
  quota", 410, 429, 5xx. ``retry_after`` comes from ``Retry-After`` (delta
  seconds only) on 429 and 5xx (the apiserver sends it on 503 when shutting down).
- denied: 403 Forbidden (not quota). Retried like a transient error (right after
  a restart the apiserver denies until its RBAC cache is warm); the task fails
  only when the denial persists through its last delivery (`max_deliveries`).
- permanent (fail the task): every other status, e.g. 400, 404, 422,
  and client-side validation errors (ValueError, TypeError).
- Any other exception is transient: not known to be permanent, it is retried and
  bounded by ``max_deliveries`` (then dead-lettered with a failed result).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

MAX_MESSAGE = 1000

# "denied": 403 Forbidden. Retried and redelivered like a transient error (an apiserver that just
# restarted denies until its RBAC cache is warm); fails the task only when it persists to the last delivery.
Kind = Literal["created", "exists", "transient", "denied", "permanent"]


@dataclass(frozen=True)
class Outcome:
    """What to do after a create call."""

    kind: Kind
    message: str = ""
    retry_after: float | None = None


def parse_retry_after(value: str | bytes | None) -> float | None:
    """``Retry-After`` as seconds; None for a missing, negative, HTTP-date or garbage value."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    try:
        seconds = float(str(value).strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, val in headers.items():
        if str(key).lower() == wanted:
            return val
    return None


def _parse_body(body: str | bytes | None) -> tuple[str, str]:
    """(message, k8s Status reason) from a response body."""
    if body is None:
        return "", ""
    text = body.decode("utf-8", errors="replace") if isinstance(body, (bytes, bytearray)) else str(body)
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and ("message" in data or data.get("kind") == "Status"):
        return str(data.get("message") or "")[:MAX_MESSAGE], str(data.get("reason") or "")
    return text.strip()[:MAX_MESSAGE], ""


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP error"


def _prefix(status: int, message: str) -> str:
    phrase = _phrase(status)
    return f"{status} {phrase}: {message}" if message else f"{status} {phrase}"


def classify_create_error(
    status: int | None, body: str | bytes | None, headers: Mapping[str, str] | None
) -> Outcome:
    """Classify a create response from its status code, body and headers."""
    if status is None:
        detail = _parse_body(body)[0]
        return Outcome("transient", f"connection error: {detail}" if detail else "connection error")
    message, reason = _parse_body(body)
    text = _prefix(status, message)
    if 200 <= status < 300:
        return Outcome("created", text)
    if status == 409:
        if reason == "AlreadyExists" or (not reason and "already exists" in message.lower()):
            return Outcome("exists", text)
        return Outcome("transient", text)
    if status == 403:
        return Outcome("transient" if "exceeded quota" in message else "denied", text)
    if status == 410:
        return Outcome("transient", text)
    if status == 429 or 500 <= status < 600:
        return Outcome("transient", text, parse_retry_after(_header(headers, "Retry-After")))
    return Outcome("permanent", text)


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):  # socket, ssl, TimeoutError, ConnectionError
        return True
    for cls in type(exc).__mro__:
        module = cls.__module__ or ""
        # urllib3 errors (MaxRetryError, ProtocolError, ReadTimeoutError...), except bad URLs
        # (LocationValueError & co. are ValueErrors: configuration, not the network).
        if module.split(".")[0] == "urllib3" and not isinstance(exc, ValueError):
            return True
        if module == "http.client" and cls.__name__ in ("HTTPException", "IncompleteRead", "RemoteDisconnected"):
            return True
        if module.split(".")[0] == "aiohttp" and cls.__name__ in ("ClientConnectionError", "ServerTimeoutError"):
            return True
    return False


def _looks_like_api_exception(exc: BaseException) -> bool:
    return all(hasattr(exc, name) for name in ("status", "body", "headers"))


def classify_exception(exc: BaseException) -> Outcome:
    """Classify an exception raised by a create call (ApiException by duck typing, network errors)."""
    if _looks_like_api_exception(exc):
        status = getattr(exc, "status", None)
        if isinstance(status, int) and not isinstance(status, bool) and status > 0:
            body = getattr(exc, "body", None)
            reason = getattr(exc, "reason", None)
            if not body and reason and str(reason).lower() != _phrase(status).lower():
                body = str(reason)  # no body: the HTTP reason is all there is
            headers = getattr(exc, "headers", None)
            try:
                headers = dict(headers) if headers else None
            except (TypeError, ValueError):
                headers = None
            return classify_create_error(status, body, headers)
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return Outcome("transient", f"connection error: {reason}")
    if _is_connection_error(exc):
        return Outcome("transient", f"connection error: {type(exc).__name__}: {exc}"[:MAX_MESSAGE])
    if isinstance(exc, (ValueError, TypeError)):  # the request itself is wrong (client-side validation)
        return Outcome("permanent", f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE])
    # Anything else is not known to be permanent: retried, and bounded by max_deliveries
    # (then dead-lettered with a failed result) rather than failing a task on a client glitch.
    return Outcome("transient", f"unexpected error: {type(exc).__name__}: {exc}"[:MAX_MESSAGE])
