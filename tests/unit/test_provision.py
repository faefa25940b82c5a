"""provision.sh says clearly why it cannot install what is missing (not root, no apt)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devkit.cluster import PROVISION_SCRIPT


def _bin_dir(tmp_path: Path, tools: list[str]) -> Path:
    """A PATH with only the given tools (so etcd, redis-server, ... are missing)."""
    d = tmp_path / "bin"
    d.mkdir()
    for tool in tools:
        os.symlink(shutil.which(tool), d / tool)
    d.chmod(0o755)
    tmp_path.chmod(0o755)
    return d


def _run(path: Path, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(PROVISION_SCRIPT)], env={"PATH": str(path), "HOME": "/tmp"},
                          capture_output=True, text=True, timeout=60, **kw)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the script as another user")
def test_missing_packages_without_root_fail_with_the_reason(tmp_path: Path) -> None:
    out = _run(_bin_dir(tmp_path, ["id", "ls", "sed", "grep", "apt-get"]), user=65534, group=65534, cwd="/")
    assert out.returncode == 1
    assert "etcd-server" in out.stderr and "needs root" in out.stderr


def test_missing_packages_without_apt_fail_with_the_reason(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the no-apt branch is reached as root only")
    out = _run(_bin_dir(tmp_path, ["id", "ls", "sed", "grep"]))
    assert out.returncode == 1
    assert "has no apt-get" in out.stderr
