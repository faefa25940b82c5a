"""Child Python processes for tests and the benchmark: kubestream launchers and watchers through the
real CLI (``kubestream launcher|watcher``) and devkit servers (``python -m devkit...``).

Every child logs to ``<log_dir>/<name>.log``, finds ``devkit`` from any working directory (the repo
root is put on its PYTHONPATH: devkit is not installed), gets SIGTERM from the kernel if this process
dies, even by SIGKILL (PR_SET_PDEATHSIG), and is stopped by PID, newest first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from devkit.procs import stop_pid
from kubestream.settings import ENV_PREFIX, Settings

REPO_ROOT = Path(__file__).resolve().parents[1]

# argv: <ppid> <module> <args...>. Dies with its parent, exits at once if that is already gone, then runs
# the module as __main__ in this very process (so a test's SIGKILL reaches the component itself).
_GUARD = ("import ctypes, os, runpy, signal, sys; ctypes.CDLL(None).prctl(1, int(signal.SIGTERM)); "
          "os.getppid() == int(sys.argv.pop(1)) or sys.exit(1); sys.argv[0] = sys.argv.pop(1); "
          "runpy.run_module(sys.argv[0], run_name='__main__')")


def python_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with the repo root first on PYTHONPATH."""
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), out.get("PYTHONPATH", "")) if p)
    return out


def component_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a launcher or watcher: this process's, without its ``KUBESTREAM_*``
    variables, then ``settings`` and keyword overrides (``kube_config=...``) as ``KUBESTREAM_*``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings.to_env())
    env.update({f"{ENV_PREFIX}{k.upper()}": v for k, v in overrides.items()})
    return python_env(env)


class ChildExited(RuntimeError):
    """A child that should be running has exited."""


class Components:
    """The child processes started by one test or benchmark; ``stop_all()`` stops every one of them."""

    def __init__(self, log_dir: Path, *, log_level: str | None = None) -> None:
        self.log_dir = log_dir
        self.log_level = log_level  # passed to launchers and watchers as --log-level
        self._children: list[tuple[str, subprocess.Popen[bytes]]] = []

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        return [proc for _, proc in self._children]

    def start(self, kind: str, settings: Settings, kubeconfig: str, **overrides: str) -> subprocess.Popen[bytes]:
        """``kubestream <kind>`` (launcher or watcher) with ``settings`` and overrides; its consumer name
        (and log name) is ``<kind>-<n>`` unless ``consumer_name`` is given."""
        n = len(self._children)
        name = overrides.setdefault("consumer_name", f"{kind}-{n}") or f"{kind}-{n}"
        args = [kind, *(["--log-level", self.log_level] if self.log_level else [])]
        return self.start_module(name, "kubestream.cli", args, component_env(settings, kube_config=kubeconfig,
                                                                              **overrides))

    def start_module(self, name: str, module: str, args: list[str],
                     env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """``python -m <module> <args>`` as a child named ``name``."""
        argv = [sys.executable, "-c", _GUARD, str(os.getpid()), module, *args]
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, env=python_env(env), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self._children.append((name, proc))
        return proc

    def check(self, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
        """Raise ChildExited (with its last log lines) if one of ``procs`` (default: all) has exited."""
        for name, proc in self._children:
            if (procs is None or proc in procs) and proc.poll() is not None:
                raise ChildExited(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def wait(self, condition: Callable[[], object], *, timeout: float, what: str,
             procs: list[subprocess.Popen[bytes]] | None = None, interval: float = 0.05) -> object:
        """Poll ``condition`` until it is truthy, failing at once if one of ``procs`` (default: all) exited."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            self.check(procs)
            try:
                value = condition()
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - e.g. a server that is not up yet
                last = exc
            if time.monotonic() > deadline:
                detail = f" (last error: {last!r})" if last else ""
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
            time.sleep(interval)

    def stop(self, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
        """Stop ``procs`` (default: all), newest first: SIGTERM, then SIGKILL after 15 s."""
        for name, proc in reversed(list(self._children)):
            if procs is None or proc in procs:
                stop_pid(proc.pid, timeout=15)
                self._children.remove((name, proc))

    def stop_all(self) -> None:
        self.stop()

    def names(self) -> list[str]:
        return [name for name, _ in self._children]

    def log(self, name: str) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def logs(self) -> str:
        """The end of every log in ``log_dir``."""
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.log_dir.glob("*.log")))
