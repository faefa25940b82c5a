#!/usr/bin/env bash
# Provision what the local cluster, the tests and the demo need on a Debian machine:
#   - Debian packages: etcd-server, redis-server, postgresql, golang-go, rsync, jq, build tools,
#     docker.io, debootstrap, docker-compose (the container tests)
#   - kube-apiserver and kubectl, built once from Debian's `kubernetes` source package and
#     cached outside the repository, keyed by the Debian source version
#     ($CACHE_ROOT/kube-apiserver-<version>/, $CACHE_ROOT/kubectl-<version>/, and the link
#     $CACHE_ROOT/kubelet-<version>/ (the real-node tier), and the link
#     $CACHE_ROOT/bin/kubectl to the current kubectl, which tests/unit/test_manifests.py renders k8s/ with).
# Prints the path of the cached kube-apiserver binary on its last line.
# Idempotent: a second run with everything present installs and builds nothing.
set -euo pipefail

CACHE_ROOT="${KUBESTREAM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubestream}"
log() { printf 'kubestream-provision: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "$1 is missing and installing it needs root (apt-get); run as root or install it yourself"
  command -v apt-get >/dev/null || die "$1 is missing and this machine has no apt-get; install it yourself"
}

apt_updated=""
apt_install() {
  # apt_install <binary-to-check>=<package> ...
  local missing=()
  for pair in "$@"; do
    local bin="${pair%%=*}" pkg="${pair#*=}"
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "$bin" ]; then missing+=("$pkg"); fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root "${missing[*]}"
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    apt_updated=1
  fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
}

ensure_deb_src() {
  # apt-get source needs a deb-src entry: derive it from the machine's own sources.
  if grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
    return 0
  fi
  need_root "a deb-src apt entry"
  local src=/etc/apt/sources.list.d/debian.sources
  [ -f "$src" ] || die "no $src to derive a deb-src entry from; add a deb-src line for 'kubernetes' yourself"
  log "adding deb-src entries derived from $src"
  sed -E 's/^Types:.*/Types: deb-src/' "$src" > /etc/apt/sources.list.d/kubestream-deb-src.sources
  apt-get update -qq >&2 || die "apt-get update (deb-src) failed"
  apt_updated=1
}

apt_install etcd=etcd-server redis-server=redis-server rsync=rsync jq=jq openssl=openssl make=make
# the container tests (tests/containers): a private dockerd, a debootstrap base image, compose 1.29
apt_install dockerd=docker.io debootstrap=debootstrap docker-compose=docker-compose
# PostgreSQL (the Airflow metadata DB of the end-to-end tests and the demo): its binaries are not on PATH
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install /usr/lib/postgresql/none/bin/initdb=postgresql
fi

apiserver_override="${KUBESTREAM_APISERVER_BIN:-}"
if [ -n "$apiserver_override" ]; then
  [ -x "$apiserver_override" ] || die "KUBESTREAM_APISERVER_BIN=$apiserver_override is not executable"
fi

# Fast path: cached builds for the version apt would give us.
ensure_deb_src
version=$(apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/{print $2; exit}')
[ -n "$version" ] || die "apt-cache showsrc kubernetes found no source package"
bin="${apiserver_override:-$CACHE_ROOT/kube-apiserver-$version/kube-apiserver}"
kubectl_bin="$CACHE_ROOT/kubectl-$version/kubectl"
# the kubelet of the real-node tier (devkit/realnode.py), from the same source package
kubelet_bin="$CACHE_ROOT/kubelet-$version/kubelet"

link_kubectl() {
  # $CACHE_ROOT/bin/kubectl -> the kubectl of this version (replaced atomically)
  [ "$(readlink "$CACHE_ROOT/bin/kubectl" 2>/dev/null)" = "$kubectl_bin" ] && return 0
  mkdir -p "$CACHE_ROOT/bin"
  ln -sfn "$kubectl_bin" "$CACHE_ROOT/bin/kubectl.tmp"
  mv -T "$CACHE_ROOT/bin/kubectl.tmp" "$CACHE_ROOT/bin/kubectl"
}

missing_targets() {
  local targets=()
  [ -x "$bin" ] || targets+=(cmd/kube-apiserver)
  [ -x "$kubectl_bin" ] || targets+=(cmd/kubectl)
  [ -x "$kubelet_bin" ] || targets+=(cmd/kubelet)
  echo "${targets[*]}"
}

if [ -z "$(missing_targets)" ]; then
  link_kubectl
  log "cached kube-apiserver, kubectl and kubelet $version"
  echo "$bin"; exit 0
fi

apt_install go=golang-go gcc=gcc dpkg-source=dpkg-dev
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/build.lock"
flock 9
targets=$(missing_targets)   # a concurrent run may have built some
if [ -n "$targets" ]; then
  work=$(mktemp -d "$CACHE_ROOT/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "building $targets from Debian source kubernetes $version (kube-apiserver about 7 minutes on 2 cores, kubectl and kubelet about 3 each)"
  ( cd "$work" && apt-get source --download-only -qq kubernetes >&2 ) || die "apt-get source kubernetes failed"
  orig=$(ls "$work"/kubernetes_*.orig.tar.* | head -n1)
  mkdir "$work/src"
  tar -xf "$orig" -C "$work/src" --strip-components=1
  mkdir -p "$work/home"
  ( cd "$work/src" && HOME="$work/home" GOFLAGS= make WHAT="$targets" >&2 ) || die "build of $targets failed"
  for target in $targets; do
    name=${target#cmd/}
    case "$name" in
      kubectl) dest=$kubectl_bin ;;
      kubelet) dest=$kubelet_bin ;;
      *) dest=$bin ;;
    esac
    mkdir -p "$(dirname "$dest")"
    cp "$work/src/_output/bin/$name" "$dest.tmp"
    mv "$dest.tmp" "$dest"
    log "built $("$dest" version --client --short 2>/dev/null || "$dest" --version)"
  done
fi
link_kubectl
echo "$bin"
