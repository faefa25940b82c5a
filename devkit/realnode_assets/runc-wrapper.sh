#!/bin/sh
# dockerd's OCI runtime on the real node (devkit/realnode.py): runc, with every negative
# process.oomScoreAdj clamped to 0 first. The sandbox this runs in lacks CAP_SYS_RESOURCE, so
# runc fails on any negative oom_score_adj, and dockershim asks -998 for every pod sandbox.
# REAL_RUNC is replaced by the path of runc when the node is set up.
REAL_RUNC=@RUNC@
clamp() {
    [ -f "$1" ] && sed -i -E 's/"oomScoreAdj":-[0-9]+/"oomScoreAdj":0/g' "$1"
}
bundle=""
prev=""
for arg in "$@"; do
    case "$prev" in
        --bundle|-b) bundle="$arg" ;;
        --process|-p) clamp "$arg" ;;
    esac
    case "$arg" in
        --bundle=*) bundle="${arg#--bundle=}" ;;
        --process=*) clamp "${arg#--process=}" ;;
    esac
    prev="$arg"
done
[ -n "$bundle" ] && clamp "$bundle/config.json"
exec "$REAL_RUNC" "$@"
