"""Signed stream entries: Redis write access alone must not start a pod.

Every message kubestream writes to a stream carries an HMAC-SHA256 over the stream's
name and the encoded message, with the id of the key that made it::

    m = <encoded message>   k = <key id>   s = hex(HMAC(key, "kubestream/1" NUL stream NUL m))

The executor signs launch and revoke messages; launchers and the watcher sign the
results they publish. Readers verify before decoding: an entry that is unsigned,
signed with an unknown (rotated-out) key, forged, or copied from another stream is
refused (``SignatureError``) and dead-lettered with the reason.

Keys never live in Redis. They come from ``signing_keys`` (an env variable or the
Airflow option, so ``_secret``/``_cmd`` work) or ``signing_keys_file`` (a mounted
Kubernetes Secret): ``id=base64key`` entries separated by commas or newlines. The
first entry signs; all entries verify, so a rotation is: add the new key second
everywhere, then move it first everywhere, then drop the old one.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from redis.typing import EncodableT, FieldT

from kubestream.messages import FIELD
from kubestream.settings import Settings

KEY_FIELD = b"k"
SIG_FIELD = b"s"
_DOMAIN = b"kubestream/1"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
MIN_KEY_BYTES = 32


class SignatureError(ValueError):
    """A stream entry whose signature cannot be verified; the message says why."""


class SigningKeyError(ValueError):
    """The configured signing keys are unusable (the message says which and why)."""


@dataclass(frozen=True)
class Signer:
    key_id: str  # the key that signs
    keys: Mapping[str, bytes]  # every key that verifies (the signing key included)

    @classmethod
    def parse(cls, text: str) -> Signer:
        entries = [e.strip() for e in re.split(r"[,\n]", text) if e.strip() and not e.strip().startswith("#")]
        if not entries:
            raise SigningKeyError("no signing key given (expected id=base64key, ...)")
        keys: dict[str, bytes] = {}
        for entry in entries:
            key_id, sep, encoded = entry.partition("=")
            key_id = key_id.strip()
            if not sep or not _KEY_ID.match(key_id):
                raise SigningKeyError(f"signing key entries are id=base64key with an id of [A-Za-z0-9_.-]; "
                                      f"got one starting {entry[:8]!r}")
            try:
                secret = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise SigningKeyError(f"signing key {key_id!r} is not valid base64") from None
            if len(secret) < MIN_KEY_BYTES:
                raise SigningKeyError(f"signing key {key_id!r} has {len(secret)} bytes; at least {MIN_KEY_BYTES}")
            if key_id in keys:
                raise SigningKeyError(f"signing key id {key_id!r} appears twice")
            keys[key_id] = secret
        return cls(next(iter(keys)), keys)

    def _mac(self, key: bytes, stream: str, payload: bytes) -> bytes:
        return hmac.digest(key, b"\0".join((_DOMAIN, stream.encode(), payload)), "sha256").hex().encode()

    def sign(self, stream: str, payload: bytes) -> dict[FieldT, EncodableT]:
        """The stream entry's fields for ``payload`` written to ``stream``."""
        mac = self._mac(self.keys[self.key_id], stream, payload)
        return {FIELD: payload, KEY_FIELD: self.key_id.encode(), SIG_FIELD: mac}

    def verify(self, stream: str, fields: Mapping[bytes, bytes]) -> bytes:
        """The payload of an entry read from ``stream``, once its signature holds."""
        payload, key_id, mac = fields.get(FIELD), fields.get(KEY_FIELD), fields.get(SIG_FIELD)
        if payload is None:
            raise SignatureError("no message field")
        if not key_id or not mac:
            raise SignatureError("unsigned message")
        key = self.keys.get(key_id.decode("utf-8", errors="replace"))
        if key is None:
            raise SignatureError(f"signed with unknown key id {key_id.decode('utf-8', errors='replace')[:32]!r}")
        if not hmac.compare_digest(self._mac(key, stream, payload), mac):
            raise SignatureError("bad signature (forged, altered, or written to another stream)")
        return payload


class Unsigned:
    """Signing switched off (``allow_unsigned``): entries carry the message only, nothing is verified."""

    key_id = ""

    def sign(self, stream: str, payload: bytes) -> dict[FieldT, EncodableT]:
        return {FIELD: payload}

    def verify(self, stream: str, fields: Mapping[bytes, bytes]) -> bytes:
        payload = fields.get(FIELD)
        if payload is None:
            raise SignatureError("no message field")
        return payload


def load_signer(*, keys: str, keys_file: str, allow_unsigned: bool) -> Signer | Unsigned:
    """The signer the settings ask for; ``SigningKeyError`` when no key is configured and unsigned
    operation was not explicitly allowed."""
    text = keys
    if keys_file:
        try:
            text = Path(keys_file).read_text()
        except OSError as exc:
            raise SigningKeyError(f"cannot read signing_keys_file {keys_file!r}: {exc.strerror}") from None
    if text.strip():
        return Signer.parse(text)
    if allow_unsigned:
        return Unsigned()
    raise SigningKeyError("no signing key: set signing_keys or signing_keys_file (the same keys for the scheduler, "
                          "launchers and watcher), or allow_unsigned=true to run without (not recommended)")


def signer_for(settings: Settings) -> Signer | Unsigned:
    """The component's signer from its settings (``SigningKeyError`` when none is configured)."""
    return load_signer(keys=settings.signing_keys, keys_file=settings.signing_keys_file,
                       allow_unsigned=settings.allow_unsigned)


UNSIGNED_WARNING = ("allow_unsigned=true and no signing keys: stream messages are neither signed nor verified, so "
                    "anyone who can write to Redis can start pods")


def new_key() -> str:
    """A fresh key entry's secret part (base64 of 32 random bytes)."""
    import secrets

    return base64.b64encode(secrets.token_bytes(MIN_KEY_BYTES)).decode()
