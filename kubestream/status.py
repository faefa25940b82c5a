"""`kubestream status`: what is queued, pending, dead and alive, read from Redis only."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from kubestream.keys import Keys
from kubestream.settings import Settings
from kubestream.text import as_text, decode_hash


def _stream(client: redis.Redis, key: str) -> dict[str, Any]:
    info: dict[str, Any] = {"stream": key, "length": client.xlen(key), "groups": []}
    for g in client.xinfo_groups(key):
        group = {"name": as_text(g["name"]), "pending": g["pending"], "lag": g.get("lag"), "consumers": []}
        for c in client.xinfo_consumers(key, g["name"]):
            group["consumers"].append({"name": as_text(c["name"]), "pending": c["pending"], "idle_ms": c["idle"]})
        info["groups"].append(group)
    return info


def collect(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    keys = Keys(settings.key_prefix)
    launch = sorted(as_text(k) for k in client.scan_iter(match=keys.launch_pattern, count=1000))
    results = sorted(as_text(k) for k in client.scan_iter(match=keys.results_pattern, count=1000))
    dead = []
    for eid, raw in client.xrevrange(keys.dead, count=10) or []:
        fields = decode_hash(raw)
        dead.append({"id": as_text(eid), "reason": fields.get("reason", ""), "task": fields.get("task", "")})
    health = []
    now = time.time()
    for key in sorted(client.scan_iter(match=keys.health_pattern, count=1000)):
        rec = decode_hash(client.hgetall(key))
        health.append({"key": as_text(key), "age_s": round(now - float(rec.get("ts", 0)), 1),
                       "metrics": json.loads(rec.get("metrics", "{}")),
                       **{k: v for k, v in rec.items() if k not in ("ts", "metrics")}})
    return {
        "prefix": keys.base,
        "launch_streams": [_stream(client, k) for k in launch],
        "result_streams": [_stream(client, k) for k in results],
        "dead_letters": {"count": client.xlen(keys.dead), "latest": dead},
        "live_pods": client.scard(keys.live),
        "watcher_lease": as_text(client.get(keys.watcher_lease) or b"") or None,
        "cluster_watcher_leases": _cluster_leases(client, keys),
        "processes": health,
    }


def _cluster_leases(client: redis.Redis, keys: Keys) -> dict[str, str | None]:
    """The holder of each named cluster's watcher lease (clusters seen by their keys)."""
    leases: dict[str, str | None] = {}
    for key in client.scan_iter(match=keys.cluster_keys_pattern, count=1000):
        cluster = keys.cluster_lease_of(as_text(key))
        if cluster is not None:
            leases[cluster] = as_text(client.get(key) or b"") or None
    return dict(sorted(leases.items()))


def render(report: dict[str, Any]) -> str:
    lines = [f"kubestream status ({report['prefix']})", ""]
    header = f"{'stream':<48} {'length':>7} {'group':<10} {'pending':>8} {'lag':>6}  consumers (pending)"
    lines += [header, "-" * len(header)]
    for s in report["launch_streams"] + report["result_streams"]:
        groups = s["groups"] or [{"name": "-", "pending": 0, "lag": None, "consumers": []}]
        for g in groups:
            consumers = ", ".join(f"{c['name']}({c['pending']})" for c in g["consumers"]) or "-"
            lag = "-" if g["lag"] is None else str(g["lag"])
            lines.append(f"{s['stream']:<48} {s['length']:>7} {g['name']:<10} {g['pending']:>8} {lag:>6}  {consumers}")
    lines += ["", f"live pods (pending/running): {report['live_pods']}",
              f"watcher lease: {report['watcher_lease'] or 'nobody (no active watcher)'}"]
    for cluster, holder in report["cluster_watcher_leases"].items():
        lines.append(f"watcher lease of cluster {cluster}: {holder or 'nobody (no active watcher)'}")
    lines.append(f"dead letters: {report['dead_letters']['count']}")
    for d in report["dead_letters"]["latest"]:
        lines.append(f"  {d['id']}  {d['task']}  {d['reason']}")
    lines += ["", "processes:"]
    for p in report["processes"] or []:
        lines.append(f"  {p['key']}  last beat {p['age_s']}s ago  {json.dumps(p['metrics'])}")
    if not report["processes"]:
        lines.append("  none")
    return "\n".join(lines)
