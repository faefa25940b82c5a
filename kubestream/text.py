"""The one place where Redis replies (bytes) become text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast


def as_text(value: bytes | str | int | float | None) -> str:
    """A Redis reply value as str: bytes decoded as UTF-8, None as ''."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def decode_hash(mapping: Mapping[bytes | str, bytes | str] | None) -> dict[str, str]:
    """An HGETALL reply as a dict of str."""
    return {as_text(k): as_text(v) for k, v in (mapping or {}).items()}


StreamFields = dict[bytes, bytes]


def stream_entries(reply: object) -> list[tuple[str, str, StreamFields | None]]:
    """An XREAD/XREADGROUP/XAUTOCLAIM-style reply (RESP2: ``[[stream, [[id, fields], ...]], ...]``) as
    (stream, entry id, fields) rows; fields are None for an entry deleted while pending."""
    rows: list[tuple[str, str, StreamFields | None]] = []
    for stream, entries in cast(list[tuple[Any, list[tuple[Any, Any]]]], reply or []):
        for entry_id, fields in entries:
            rows.append((as_text(stream), as_text(entry_id), fields))
    return rows
