"""A throwaway redis-server on a free loopback port (tests, the local demo, bench.chaos).

No persistence by default (a restart starts empty); ``appendonly=True`` (or ``set_appendonly(True)`` on a
running server) keeps an AOF fsynced every second, so that ``restart()`` reloads what was written up to
about a second before the stop.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import redis

from devkit.procs import free_port, spawn, stop_pid, wait_for


class RedisServer:
    def __init__(self, port: int = 0, data_dir: Path | str | None = None, *, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
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
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--dir", str(self.dir), "--protected-mode", "yes", "--daemonize", "no",
        ], self.dir / "redis.log")
        self.pid = proc.pid

        def ping() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}; see {self.dir / 'redis.log'}")
            with redis.Redis(port=self.port, socket_timeout=2) as client:
                return bool(client.ping())

        try:
            wait_for(ping, timeout=20, what=f"redis-server on port {self.port}")
        except BaseException:
            stop_pid(proc.pid)  # never leave a server behind a failed start
            self.pid = 0
            raise
        return self

    def restart(self, *, sig: int = signal.SIGKILL) -> RedisServer:
        """Stop the server with ``sig`` (SIGKILL: a crash; SIGTERM: a clean shutdown) and start it again on
        the same port and directory: it reloads its AOF with ``appendonly``, else it starts empty."""
        if self.pid:
            stop_pid(self.pid, sig=sig)
            self.pid = 0
        return self.start()

    def set_appendonly(self, on: bool) -> None:
        """Turn the AOF on or off on the running server (and for later restarts); returns once the AOF
        holds the whole dataset."""
        self.appendonly = on
        with redis.Redis(port=self.port, socket_timeout=5) as client:
            client.config_set("appendonly", "yes" if on else "no")

            def written() -> bool:
                info = client.info("persistence")
                return (not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
                        and bool(info["aof_enabled"]) is on)

            wait_for(written, timeout=30, what="the AOF rewrite")

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
