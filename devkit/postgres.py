"""A throwaway PostgreSQL server on a free loopback port (the Airflow metadata DB for e2e tests and the demo).

Uses Debian's PostgreSQL binaries (installed with apt when missing). PostgreSQL
refuses to run as root, so as root the server runs as the ``postgres`` user.
Data lives in a fresh directory, with durability off (fsync, full page writes):
it is a test database.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from devkit.procs import free_port, spawn_as, stop_pid, wait_for


def _bin_dir() -> Path:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if not dirs:
        raise RuntimeError("PostgreSQL binaries not found in /usr/lib/postgresql/*/bin: run `python -m devkit cluster "
                           "provision` (installs Debian's postgresql) or apt-get install postgresql")
    return Path(dirs[-1])


class PostgresServer:
    def __init__(self, port: int = 0, data_dir: Path | str | None = None, database: str = "airflow") -> None:
        self.port = port or free_port()
        self.database = database
        self._own_dir = data_dir is None
        self.dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="kubestream-pg-"))
        self.pid = 0
        self._user: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> PostgresServer:
        bindir = _bin_dir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self._user = {"uid": pw.pw_uid, "gid": pw.pw_gid}
        data, sock = self.dir / "data", self.dir / "sock"
        for d in (self.dir, sock):
            d.mkdir(parents=True, exist_ok=True)
            if self._user:
                os.chown(d, self._user["uid"], self._user["gid"])
        self._run([str(bindir / "initdb"), "-D", str(data), "-U", "airflow", "--auth=trust", "-E", "UTF8",
                   "--no-sync"])
        proc = spawn_as([str(bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sock),
                         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
                         "-c", "synchronous_commit=off", "-c", "max_connections=300"],
                        self.dir / "postgres.log", **self._user)
        self.pid = proc.pid

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {proc.returncode}; see {self.dir / 'postgres.log'}")
            out = subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                 capture_output=True)
            return out.returncode == 0

        wait_for(ready, timeout=60, what=f"postgres on port {self.port}")
        self._run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "airflow",
                   self.database])
        return self

    def _run(self, argv: list[str]) -> None:
        out = subprocess.run(argv, capture_output=True, text=True, cwd="/", **({"user": self._user["uid"],
                                                                               "group": self._user["gid"]}
                                                                              if self._user else {}))
        if out.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {out.stderr.strip() or out.stdout.strip()}")

    def stop(self) -> None:
        if self.pid:
            import signal

            stop_pid(self.pid, sig=signal.SIGINT)  # fast shutdown
            self.pid = 0
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
