"""Signed stream entries: pure tests of signing, verification, rotation and key parsing."""

from __future__ import annotations

import base64

import pytest

from kubestream.messages import FIELD
from kubestream.signing import (
    KEY_FIELD,
    SIG_FIELD,
    SignatureError,
    Signer,
    SigningKeyError,
    Unsigned,
    load_signer,
    new_key,
)

A, B, C = (f"{name}={new_key()}" for name in ("a", "b", "c"))
STREAM = "{kubestream}:launch:default"


def test_a_signed_entry_verifies_on_its_own_stream_only() -> None:
    signer = Signer.parse(A)
    fields = signer.sign(STREAM, b"payload")
    assert fields[FIELD] == b"payload" and fields[KEY_FIELD] == b"a"
    assert signer.verify(STREAM, fields) == b"payload"
    with pytest.raises(SignatureError, match="another stream"):
        signer.verify("{kubestream}:launch:gpu", fields)  # replayed to another queue's stream


def test_the_signature_is_the_documented_hmac_sha256_so_versions_verify_each_other() -> None:
    # HMAC-SHA256(key, "kubestream/1" NUL stream NUL payload) in hex (docs/security.md); a fixed vector:
    # launchers of one release verify what executors of another signed
    signer = Signer.parse("k=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")  # bytes 0..31
    assert signer.sign(STREAM, b"payload")[SIG_FIELD] == \
        b"699b6fe20c4a83924ac853557cda30e4df79b79396ee70b7176b5d5325f8121e"


@pytest.mark.parametrize("tamper, reason", [
    (lambda f: {**f, FIELD: b"payload, altered"}, "bad signature"),
    (lambda f: {FIELD: f[FIELD]}, "unsigned"),
    (lambda f: {**f, KEY_FIELD: b"zzz"}, "unknown key id"),
    (lambda f: {**f, SIG_FIELD: b"00" * 32}, "bad signature"),
    (lambda f: {KEY_FIELD: f[KEY_FIELD], SIG_FIELD: f[SIG_FIELD]}, "no message"),
])
def test_forged_unsigned_or_altered_entries_are_refused(tamper, reason) -> None:
    signer = Signer.parse(A)
    with pytest.raises(SignatureError, match=reason):
        signer.verify(STREAM, tamper(signer.sign(STREAM, b"payload")))


def test_a_forger_with_another_key_is_refused() -> None:
    forged = Signer.parse(f"a={new_key()}").sign(STREAM, b"privileged pod")  # same id, other secret
    with pytest.raises(SignatureError, match="bad signature"):
        Signer.parse(A).verify(STREAM, forged)


def test_rotation_either_current_key_verifies_and_a_rotated_out_key_does_not() -> None:
    old, new = Signer.parse(f"{A},{B}"), Signer.parse(f"{B},{A}")  # step 2 of a rotation: b signs now
    assert old.key_id == "a" and new.key_id == "b"
    for signer in (old, new):
        assert signer.verify(STREAM, old.sign(STREAM, b"x")) == b"x"
        assert signer.verify(STREAM, new.sign(STREAM, b"y")) == b"y"
    done = Signer.parse(f"{B}\n{C}")  # step 3: a dropped
    with pytest.raises(SignatureError, match="unknown key id 'a'"):
        done.verify(STREAM, old.sign(STREAM, b"x"))


@pytest.mark.parametrize("text, error", [
    ("", "no signing key"),
    ("nokey", "id=base64key"),
    ("a=not base64!", "not valid base64"),
    (f"a={base64.b64encode(b'short').decode()}", "at least 32"),
    (f"{A},{A}", "appears twice"),
    ("bad id=" + new_key(), "id=base64key"),
])
def test_unusable_keys_are_refused_with_the_reason(text, error) -> None:
    with pytest.raises(SigningKeyError, match=error):
        Signer.parse(text)


def test_no_key_is_an_error_unless_unsigned_is_explicitly_allowed(tmp_path) -> None:
    with pytest.raises(SigningKeyError, match="allow_unsigned"):
        load_signer(keys="", keys_file="", allow_unsigned=False)
    unsigned = load_signer(keys="", keys_file="", allow_unsigned=True)
    assert isinstance(unsigned, Unsigned) and unsigned.verify(STREAM, unsigned.sign(STREAM, b"m")) == b"m"
    path = tmp_path / "keys"
    path.write_text(f"# rotated weekly\n{B}\n{A}\n")
    signer = load_signer(keys="", keys_file=str(path), allow_unsigned=False)
    assert isinstance(signer, Signer) and signer.key_id == "b" and set(signer.keys) == {"a", "b"}
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_signer(keys="", keys_file=str(tmp_path / "missing"), allow_unsigned=False)
