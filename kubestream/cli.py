"""`kubestream` command line: launcher, watcher, status, janitor, dlq, cleanup-pods, acl, settings.

The same verbs are reachable as ``airflow kubestream ...`` through the
executor's ``get_cli_commands()``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kubestream.settings import Settings, SettingsError

if TYPE_CHECKING:
    import redis


def _settings() -> Settings:
    try:
        return Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"kubestream: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: Any) -> None:
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _check(component: str, settings: Settings) -> int:
    from kubestream import health
    from kubestream.keys import Keys
    from kubestream.redisconn import connect

    member = settings.consumer_name or f"{socket.gethostname()}-"
    pattern = Keys(settings.key_prefix).health(component, member) + ("*" if member.endswith("-") else "")
    fresh = health.check(connect(settings), pattern, settings.health_ttl_seconds)
    print("\n".join(fresh) or f"no fresh {component} health key matching {pattern}")
    return 0 if fresh else 1


def _warn_if_evicting(client: redis.Redis) -> None:
    """At start: say so when Redis may evict kubestream's keys (its maxmemory-policy is not noeviction)."""
    import logging

    from kubestream.redisconn import eviction_warning

    warning = eviction_warning(client)
    if warning:
        logging.getLogger("kubestream").warning(warning)


def cmd_launcher(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.check:
        return _check("launcher", settings)
    from kubestream import logs
    from kubestream.health import serve_http
    from kubestream.kubeapi import api_client
    from kubestream.redisconn import connect
    from kubestream.workers.launcher import Launcher

    logs.configure(args.log_level)
    client = connect(settings)
    _warn_if_evicting(client)
    launcher = Launcher(settings, client,
                        api_client(settings.kube_config, settings.kube_context, pool_size=settings.launch_concurrency))
    _on_signals(launcher.stop)
    if settings.metrics_port:
        serve_http(settings.metrics_host, settings.metrics_port, launcher.metrics, launcher.heartbeat.healthy)
    launcher.run(until_idle=args.until_idle)
    return 0


def cmd_watcher(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.check:
        return _check("watcher", settings)
    from kubestream import logs
    from kubestream.health import serve_http
    from kubestream.kubeapi import api_client
    from kubestream.redisconn import connect
    from kubestream.watcher.watcher import Watcher, WatcherFailed

    logs.configure(args.log_level)
    client = connect(settings)
    _warn_if_evicting(client)
    watcher = Watcher(settings, client, api_client(settings.kube_config, settings.kube_context))
    _on_signals(watcher.stop)
    if settings.metrics_port:
        serve_http(settings.metrics_host, settings.metrics_port, watcher.metrics, watcher.heartbeat.healthy)
    try:
        watcher.run()
    except WatcherFailed as exc:  # the lease is given up: a standby (or this one, restarted) takes over
        print(f"kubestream: watcher stopped: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from kubestream.redisconn import connect
    from kubestream.status import collect, render

    settings = _settings()
    report = collect(connect(settings), settings)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def cmd_janitor(args: argparse.Namespace) -> int:
    from kubestream import logs
    from kubestream.redisconn import connect

    settings = _settings()
    logs.configure(args.log_level)
    if args.once:
        from kubestream.janitor.jobs import run_all

        done, errors = run_all(connect(settings), settings)
        print(json.dumps(done, indent=2))
        for name, error in errors.items():
            print(f"kubestream: janitor job {name} failed: {error}", file=sys.stderr)
        return 1 if errors else 0
    from kubestream.janitor.worker import rq_key_prefix

    os.environ.setdefault("RQ_KEY_PREFIX", rq_key_prefix(settings))  # read by rq when it is imported
    from kubestream.janitor.worker import work

    work(connect(settings), settings, burst=args.burst)
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from kubestream import dlq
    from kubestream.keys import Keys
    from kubestream.redisconn import connect

    settings = _settings()
    client, keys = connect(settings), Keys(settings.key_prefix)
    if args.dlq_command == "list":
        letters = [d.summary() for d in dlq.list_letters(client, keys, count=args.count)]
        print(json.dumps(letters, indent=2) if args.json else
              "\n".join(f"{d['id']}  {d['reason']}  {d['stream']}  {d['task']}" for d in letters) or "no dead letters")
        return 0
    if args.dlq_command == "show":
        letter = dlq.get(client, keys, args.id)
        if letter is None:
            print(f"kubestream: no dead letter {args.id}", file=sys.stderr)
            return 1
        print(json.dumps({**letter.summary(), "entry": letter.entry, "message": letter.decoded()}, indent=2,
                         default=str))
        return 0
    if args.dlq_command == "replay":
        from kubestream.signing import signer_for

        try:
            new_id = dlq.replay(client, keys, signer_for(settings), args.id, launch_maxlen=settings.launch_maxlen)
        except dlq.ReplayRefused as exc:
            print(f"kubestream: replay refused: {exc}", file=sys.stderr)
            return 1
        print(new_id)
        return 0
    if not args.all and args.older_than is None:
        print("kubestream: dlq purge needs --all or --older-than SECONDS", file=sys.stderr)
        return 2
    print(dlq.purge(client, keys, older_than_s=None if args.all else args.older_than))
    return 0


def cmd_cleanup_pods(args: argparse.Namespace) -> int:
    from kubestream.janitor.pods import cleanup_pods
    from kubestream.kubeapi import PodApi, api_client

    settings = _settings()
    namespaces = tuple(args.namespace or settings.namespaces_to_watch())
    api = api_client(settings.kube_config, settings.kube_context, pool_size=2)
    try:
        found = cleanup_pods(PodApi(api), namespaces, key_prefix=settings.key_prefix, dry_run=args.dry_run)
    finally:
        api.close()
    verb = "would delete" if args.dry_run else "deleted"
    print("\n".join(f"{verb} {p}" for p in found) or f"no finished kubestream pods in {', '.join(namespaces)}")
    return 0


def cmd_acl(args: argparse.Namespace) -> int:
    from kubestream.acl import acl_file

    print(acl_file(args.prefix, args.scheduler_id or ()), end="")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from kubestream.redisconn import redacted_url
    from kubestream.settings import markdown_table

    if args.markdown:
        print(markdown_table())
    else:
        shown = dict(vars(_settings()))
        shown["redis_url"] = redacted_url(shown["redis_url"])
        if shown["signing_keys"]:
            shown["signing_keys"] = "<redacted>"
        print(json.dumps(shown, indent=2, default=list))
    return 0


def build_parser(prog: str = "kubestream") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog,
                                     description="kubestream: Airflow tasks as Kubernetes pods via Redis Streams")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helptext in (("launcher", cmd_launcher, "create pods from the launch streams"),
                                 ("watcher", cmd_watcher, "publish pod state changes to the result streams")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--check", action="store_true", help="exit 0 if a local process of this kind is healthy")
        p.add_argument("--log-level", default=os.environ.get("KUBESTREAM_LOG_LEVEL", "INFO"))
        if name == "launcher":
            p.add_argument("--until-idle", action="store_true", help="exit once no launch is pending (burst mode)")
        p.set_defaults(func=func)
    p = sub.add_parser("status", help="streams, lag, pending, dead letters, watcher lease")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("janitor", help="maintenance on rq: gone schedulers' result streams, stale consumers, "
                       "stream trimming, failed pods past their retention")
    p.add_argument("--once", action="store_true", help="run every job once inline, print what it removed, exit")
    p.add_argument("--burst", action="store_true", help="rq burst mode: run the queued jobs, then exit")
    p.add_argument("--log-level", default=os.environ.get("KUBESTREAM_LOG_LEVEL", "INFO"))
    p.set_defaults(func=cmd_janitor)
    p = sub.add_parser("dlq", help="dead letters: list, show, replay (a launch whose dispatch is current), purge")
    dsub = p.add_subparsers(dest="dlq_command", required=True)
    d = dsub.add_parser("list", help="id, reason, origin stream and task of the newest dead letters")
    d.add_argument("--count", type=int, default=100)
    d.add_argument("--json", action="store_true")
    d = dsub.add_parser("show", help="one dead letter with its (redacted) message decoded")
    d.add_argument("id")
    d = dsub.add_parser("replay", help="re-send a dead-lettered launch, signed, if its task record names the same "
                                       "dispatch and has no final state")
    d.add_argument("id")
    d = dsub.add_parser("purge", help="delete all dead letters (--all) or those older than --older-than seconds")
    group = d.add_mutually_exclusive_group()
    group.add_argument("--all", action="store_true")
    group.add_argument("--older-than", type=float, metavar="SECONDS")
    p.set_defaults(func=cmd_dlq)
    p = sub.add_parser("cleanup-pods", help="delete finished (succeeded or failed) kubestream pods now")
    p.add_argument("--namespace", action="append", help="a namespace to clean (repeatable; default: the task "
                                                        "namespaces, as the watcher's)")
    p.add_argument("--dry-run", action="store_true", help="only print the pods that would be deleted")
    p.set_defaults(func=cmd_cleanup_pods)
    p = sub.add_parser("acl", help="print a Redis ACL file with one least-privilege user per component")
    p.add_argument("--prefix", default="kubestream", help="the key_prefix the users are confined to")
    p.add_argument("--scheduler-id", action="append", help="one scheduler user confined to this id (repeatable)")
    p.set_defaults(func=cmd_acl)
    p = sub.add_parser("settings", help="print the effective settings, or the README table")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(func=cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import redis

    from kubestream.redisconn import redacted_url
    from kubestream.signing import SigningKeyError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except redis.ConnectionError as exc:
        url = redacted_url(os.environ.get("KUBESTREAM_REDIS_URL", "the default URL"))
        print(f"kubestream: cannot reach Redis ({url}): {exc}", file=sys.stderr)
        return 3
    except SigningKeyError as exc:
        print(f"kubestream: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
