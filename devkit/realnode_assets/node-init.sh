#!/bin/sh
# PID 1 of the real node's namespaces (devkit/realnode.py starts it under
# `unshare --pid --fork --mount --propagation private --mount-proc`).
# It puts private directories over the paths the kubelet and dockerd hard-code, fake files
# over the sysctls the kubelet writes, then becomes the reaper (`pause`) that holds the
# namespaces until it is stopped. dockerd and the kubelet are started into these namespaces
# with nsenter. Usage: node-init.sh STATE_DIR PAUSE_BINARY
set -eu
S="$1"
PAUSE="$2"
# a tmpfs of our own for the overlay's upper layer (an overlay upper dir cannot be on every filesystem)
mkdir -p "$S/ns/tmp"
mount -t tmpfs -o size=256m,mode=0755 kubestream-realnode "$S/ns/tmp"
for dir in /var/log /etc/docker /run/docker /run/containerd; do
    private="$S/ns/bind$(echo "$dir" | tr / _)"
    mkdir -p "$private" "$dir"
    mount --bind "$private" "$dir"
done
mkdir -p "$S/ns/tmp/varlib-upper" "$S/ns/tmp/varlib-work"
mount -t overlay kubestream-realnode-varlib \
    -o "lowerdir=/var/lib,upperdir=$S/ns/tmp/varlib-upper,workdir=$S/ns/tmp/varlib-work" /var/lib
mkdir -p "$S/ns/sysctl"
for key in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
        kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
    [ -e "/proc/sys/$key" ] || continue
    fake="$S/ns/sysctl/$(echo "$key" | tr / _)"
    cat "/proc/sys/$key" > "$fake"
    mount --bind "$fake" "/proc/sys/$key"
done
echo ready > "$S/ns/ready"
exec "$PAUSE"
