"""The README's main job: the local demo reaches a successful DAG run, twice in a row, and leaves nothing running."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from devkit.components import python_env

pytestmark = pytest.mark.e2e


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line or environment mentions ``text`` (what the demo started)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                if text.encode() in (proc / part).read_bytes():
                    found.append(int(proc.name))
                    break
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return found


def test_the_demo_succeeds_twice_and_stops_everything() -> None:
    # like the default state directory, one the `postgres` user can reach (pytest's tmp_path is 0700)
    parent = Path(tempfile.mkdtemp(prefix="kubestream-demo-test-"))
    parent.chmod(0o755)
    demo_dir = str(parent / "demo")
    env = python_env({**os.environ, "KUBESTREAM_DEMO_DIR": demo_dir})  # devkit found from any cwd
    try:
        for run in (1, 2):  # the second run starts over the first one's state directory
            out = subprocess.run([sys.executable, "-m", "devkit.demo", "--timeout", "300"],
                                 env=env, capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, f"run {run}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            assert "summary: DAG run success" in out.stdout and "Airflow UI: http://127.0.0.1:" in out.stdout
            assert _processes_mentioning(demo_dir) == []
    finally:
        shutil.rmtree(parent, ignore_errors=True)
