"""The one place where Redis replies (bytes) become text."""

from __future__ import annotations

from collections.abc import Mapping


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
