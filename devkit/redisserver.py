"""A throwaway redis-server on a free loopback port (tests and the local demo)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import redis

from devkit.procs import free_port, spawn, stop_pid, wait_for


class RedisServer:
    def __init__(self, port: int = 0, data_dir: Path | str | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="kubestream-redis-"))
        self.pid = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server not found: run `python -m devkit cluster provision` "
                               "(installs it with apt)")
        self.dir.mkdir(parents=True, exist_ok=True)
        proc = spawn([
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.dir), "--protected-mode", "yes", "--daemonize", "no",
        ], self.dir / "redis.log")
        self.pid = proc.pid

        def ping() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}; see {self.dir / 'redis.log'}")
            with redis.Redis(port=self.port, socket_timeout=2) as client:
                return bool(client.ping())

        wait_for(ping, timeout=20, what=f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.pid:
            stop_pid(self.pid)
            self.pid = 0
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
