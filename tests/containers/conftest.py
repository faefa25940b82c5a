"""Fixtures of the container tests: a private dockerd and kubestream's images built on a local Debian base.

Nothing is pulled (no registry is reachable): the base is a debootstrap rootfs, the images are
built from the repository's Dockerfile with ``INSTALL_PYTHON=apt``; both are cached under
``~/.cache/kubestream/docker`` keyed by content (``devkit.docker``). Without root, ``dockerd`` or
``debootstrap`` the tests are skipped with the reason.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.docker import Dockerd, base_image, build_image, unavailable_reason


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # a short path: the daemon's unix sockets must stay under the 108-byte limit
    root = Path(tempfile.mkdtemp(prefix="ks-dockerd-"))
    daemon = Dockerd(root)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def base(dockerd: Dockerd) -> str:
    return base_image(dockerd)


@pytest.fixture(scope="session")
def launcher_image(dockerd: Dockerd, base: str) -> str:
    return build_image(dockerd, "launcher", base)
