"""A redis-server that speaks TLS only, with a throwaway CA (tests of ``rediss://``).

``make_certs`` makes a CA, a server certificate for 127.0.0.1 only (so reaching it as
``localhost`` fails hostname verification) and a client certificate, with openssl.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis

from devkit.procs import free_port, spawn, stop_pid, wait_for


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path) -> Certs:
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=kubestream test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=kubestream {name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return Certs(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


class TlsRedisServer:
    """redis-server on a free loopback port, TLS only, client certificates required."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kubestream-redis-tls-"))
        self.port = free_port()
        self.certs = make_certs(self.dir / "certs")
        self.pid = 0

    def url(self, host: str = "127.0.0.1") -> str:
        return f"rediss://{host}:{self.port}/0"

    def start(self) -> TlsRedisServer:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server not found: run `python -m devkit cluster provision`")
        c = self.certs
        proc = spawn([binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                      "--tls-cert-file", str(c.server_cert), "--tls-key-file", str(c.server_key),
                      "--tls-ca-cert-file", str(c.ca), "--tls-auth-clients", "yes", "--save", "",
                      "--appendonly", "no", "--dir", str(self.dir)], self.dir / "redis.log")
        self.pid = proc.pid

        def ping() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}; see {self.dir / 'redis.log'}")
            with redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(c.ca),
                             ssl_certfile=str(c.client_cert), ssl_keyfile=str(c.client_key),
                             socket_timeout=2) as client:
                return bool(client.ping())

        try:
            wait_for(ping, timeout=20, what=f"TLS redis-server on port {self.port}")
        except BaseException:
            self.stop()  # never leave a server behind a failed start
            raise
        return self

    def stop(self) -> None:
        if self.pid:
            stop_pid(self.pid)
            self.pid = 0
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TlsRedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
