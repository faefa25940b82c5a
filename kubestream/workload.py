"""Facts about an Airflow workload read from its JSON, without importing airflow."""

from __future__ import annotations

import base64
import binascii
import json


def token_expiry(workload_json: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of the workload's JWT, or None if it has none or cannot be read.

    The signature is not checked: this only tells a launcher that a token is certainly
    past its lifetime, so that it does not start a pod that would be refused at /run.
    """
    try:
        token = json.loads(workload_json).get("token", "")
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
    except (ValueError, AttributeError, IndexError, TypeError, binascii.Error):
        return None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
