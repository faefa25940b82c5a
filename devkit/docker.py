"""A private Docker daemon and kubestream's images, built from a local Debian base.

No image registry is reachable from the machines this runs on, so nothing is
pulled:

- ``Dockerd(root)`` starts ``dockerd`` with every path under ``root`` (data,
  exec root, socket, pid file), the ``vfs`` storage driver, no bridge and no
  iptables rules; containers use the host's network. ``stop()`` stops it by
  its pid and removes ``root``.
- ``base_image(dockerd)`` imports a ``debootstrap --variant=minbase`` rootfs
  of this machine's Debian suite (no Python in it), the tarball cached under
  ``~/.cache/kubestream/docker/``.
- ``build_image(dockerd, target, base)`` builds a ``Dockerfile`` target on
  that base (``INSTALL_PYTHON=apt``) with the host's CA bundle as the
  ``pip_cert`` build secret, and caches the result (``docker save``) keyed by
  the content of everything that goes into it, so a second run only loads it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from devkit.procs import spawn, stop_pid, wait_for

REPO = Path(__file__).resolve().parents[1]
# what the build context holds (.dockerignore lets only these in)
CONTEXT_PATHS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "kubestream")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class DockerError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("KUBESTREAM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kubestream")
    return Path(root) / "docker"


def docker_cli() -> str | None:
    """A docker CLI with the classic BuildKit client built in (Debian's docker.io), else any docker."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def unavailable_reason() -> str | None:
    """Why a private dockerd cannot run here, or None."""
    if os.geteuid() != 0:
        return "dockerd needs root"
    if not shutil.which("dockerd"):
        return "no dockerd (install the docker.io package; devkit/provision.sh does with KUBESTREAM_DOCKER=1)"
    if not docker_cli():
        return "no docker CLI"
    if not shutil.which("debootstrap"):
        return "no debootstrap (install the debootstrap package)"
    return None


def debian_suite_and_mirror() -> tuple[str, str]:
    """This machine's Debian suite and the mirror apt uses."""
    suite = "bookworm"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME=") and line.split("=", 1)[1].strip():
                suite = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    mirror = DEFAULT_MIRROR
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                uri = line.split(":", 1)[1].split()[0]
                if not uri.rstrip("/").endswith("-security"):
                    mirror = uri
                    break
    return suite, mirror


class Dockerd:
    """A dockerd of our own: private paths, vfs, host networking only."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.socket = self.root / "docker.sock"
        self.pid: int | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1",
                "COMPOSE_DOCKER_CLI_BUILD": "1"}

    def start(self, timeout: float = 120) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        proc = spawn(["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                      "--pidfile", str(self.root / "docker.pid"), "--host", f"unix://{self.socket}",
                      "--storage-driver", "vfs", "--bridge", "none", "--iptables=false", "--ip-masq=false"],
                     self.root / "dockerd.log")
        self.pid = proc.pid

        def ready() -> bool:
            if proc.poll() is not None:
                raise DockerError(f"dockerd exited ({proc.returncode}); see {self.root / 'dockerd.log'}")
            return self.docker("version", check=False, timeout=10).returncode == 0

        wait_for(ready, timeout=timeout, interval=0.5, what="dockerd")

    def stop(self) -> None:
        if self.pid is not None:
            stop_pid(self.pid, timeout=30)
            self.pid = None
        # dockerd leaves its default network namespace mounted under the exec root
        for mount in reversed(self._mounts()):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def _mounts(self) -> list[str]:
        prefix = str(self.root.resolve()) + "/"
        try:
            lines = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return []
        points = [line.split()[4] for line in lines if len(line.split()) > 4]
        return [point for point in points if point.startswith(prefix)]

    def docker(self, *args: str, check: bool = True, timeout: float = 600,
               input_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        cli = docker_cli()
        if cli is None:
            raise DockerError("no docker CLI")
        with open(input_file or os.devnull, "rb") as stdin:
            out = subprocess.run([cli, *args], env=self.env, stdin=stdin, capture_output=True, timeout=timeout)
        result = subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(errors="replace"),
                                             out.stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            raise DockerError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False, timeout=60).returncode == 0


def _rootfs_tarball() -> Path:
    """The debootstrap minbase rootfs of this machine's suite, built once and cached."""
    suite, mirror = debian_suite_and_mirror()
    cache = cache_dir()
    tarball = cache / f"base-{suite}-minbase.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs.", dir=cache))
    try:
        rootfs = work / "rootfs"
        out = subprocess.run(["debootstrap", "--variant=minbase", suite, str(rootfs), mirror],
                             capture_output=True, text=True, timeout=1200)
        if out.returncode != 0:
            raise DockerError(f"debootstrap {suite} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        rootfs.chmod(0o755)  # the image's "/": readable by its non-root users
        tmp = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tmp), "."], check=True, timeout=600)
        tmp.replace(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def base_image(dockerd: Dockerd) -> str:
    """Import the cached Debian rootfs as an image (no Python in it) and return its name."""
    tarball = _rootfs_tarball()
    name = f"kubestream-base:{tarball.stem.removeprefix('base-')}"
    if not dockerd.has_image(name):
        dockerd.docker("import", "-", name, input_file=tarball, timeout=900)
    return name


def context_digest(paths: Sequence[str] = CONTEXT_PATHS, *extra: str) -> str:
    """A digest of the build context's content (and of ``extra`` strings such as build args)."""
    digest = hashlib.sha256()
    for rel in paths:
        path = REPO / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(REPO)).encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    for item in extra:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()[:16]


def host_ca_bundle() -> Path | None:
    """The CA bundle pip on this host trusts, if any (passed to builds as the ``pip_cert`` secret)."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_cached(dockerd: Dockerd, repository: str, context: Path, build_args: dict[str, str], *,
                 dockerfile: Path | None = None, target: str | None = None, context_paths: Sequence[str] = (),
                 timeout: float = 1800) -> str:
    """``docker build`` tagged ``<repository>:<content key>``, saved under the cache and loaded from there
    on the next run: the key covers ``context_paths`` (relative to the repository), the Dockerfile, the
    target, the build args and the base images' ids."""
    base_ids = [dockerd.docker("image", "inspect", "--format", "{{.Id}}", value, timeout=60).stdout.strip()
                for name, value in sorted(build_args.items()) if name.endswith("BASE")]
    dockerfile_rel = str((dockerfile or context / "Dockerfile").relative_to(REPO))
    key = context_digest((*context_paths, dockerfile_rel), str(target),
                         *(f"{k}={v}" for k, v in sorted(build_args.items())), *base_ids)
    name = f"{repository}:{key}"
    if dockerd.has_image(name):
        return name
    saved = cache_dir() / f"image-{repository.replace('/', '-')}-{key}.tar"
    if saved.exists():
        dockerd.docker("load", "-i", str(saved), timeout=900)
        if dockerd.has_image(name):
            return name
    args = ["build", "--tag", name, "--network", "host", "--progress", "plain"]
    if target:
        args += ["--target", target]
    if dockerfile:
        args += ["--file", str(dockerfile)]
    for arg, value in build_args.items():
        args += ["--build-arg", f"{arg}={value}"]
    ca = host_ca_bundle()
    if ca:
        args += ["--secret", f"id=pip_cert,src={ca}"]
    dockerd.docker(*args, str(context), timeout=timeout)
    saved.parent.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_suffix(".tmp")
    dockerd.docker("save", "-o", str(tmp), name, timeout=900)
    tmp.replace(saved)
    for old in saved.parent.glob(f"image-{repository.replace('/', '-')}-*.tar"):
        if old != saved:
            old.unlink(missing_ok=True)
    return name


def build_image(dockerd: Dockerd, target: str, base: str, *, timeout: float = 1800) -> str:
    """Build ``target`` of the repository's Dockerfile on ``base`` (a base without Python), cached by content."""
    return build_cached(dockerd, f"kubestream/{target}", REPO,
                        {"PYTHON_BASE": base, "AIRFLOW_BASE": base, "INSTALL_PYTHON": "apt"},
                        target=target, context_paths=CONTEXT_PATHS, timeout=timeout)
