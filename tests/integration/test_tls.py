"""``rediss://`` against a real redis-server that speaks TLS only and requires client certificates."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from devkit.tlsredis import TlsRedisServer
from kubestream.redisconn import connect, redacted_url
from kubestream.settings import Settings


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsRedisServer]:
    with TlsRedisServer() as server:
        yield server


def _settings(url: str, **tls: str) -> Settings:
    return Settings.from_mapping({"redis_url": url, **tls})


def _full(server: TlsRedisServer, host: str = "127.0.0.1") -> Settings:
    c = server.certs
    return _settings(server.url(host), redis_tls_ca_file=str(c.ca), redis_tls_cert_file=str(c.client_cert),
                     redis_tls_key_file=str(c.client_key))


@pytest.mark.parametrize("role", ["executor", "worker"])
def test_a_verified_tls_connection_with_a_client_certificate_works(tls_server, role) -> None:
    client = connect(_full(tls_server), role=role)
    assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
    client.close()


def test_a_server_certificate_from_an_unknown_ca_is_refused(tls_server) -> None:
    c = tls_server.certs
    client = connect(_settings(tls_server.url(), redis_tls_cert_file=str(c.client_cert),
                               redis_tls_key_file=str(c.client_key)), role="executor")  # system CAs only
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        client.ping()


def test_a_hostname_the_certificate_does_not_name_is_refused(tls_server) -> None:
    client = connect(_full(tls_server, host="localhost"), role="executor")  # the certificate names 127.0.0.1
    with pytest.raises(redis.ConnectionError, match="hostname|match|IP address mismatch"):
        client.ping()


def test_no_client_certificate_is_refused_by_the_server(tls_server) -> None:
    client = connect(_settings(tls_server.url(), redis_tls_ca_file=str(tls_server.certs.ca)), role="executor")
    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_plain_redis_urls_get_no_tls_options_and_passwords_are_redacted() -> None:
    assert redacted_url("rediss://kubestream-executor:s3cret@redis:6380/0") == \
        "rediss://kubestream-executor:***@redis:6380/0"
    assert redacted_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
