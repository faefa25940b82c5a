"""Redis ACL users for kubestream's components: each may use only the commands and keys it needs.

Redis checks every command a Lua script runs against the calling user's ACL, so the lists
below include the scripts' inner commands. Selectors (Redis >= 7) bind commands to key
patterns, so e.g. a launcher may consume a launch stream (XREADGROUP, XACK, XDEL, XCLAIM)
but never XADD to one: writing a launch stays the scheduler's right.

``kubestream acl`` prints an ACL file (for ``aclfile``) or ``ACL SETUSER`` commands;
``k8s/redis-users.acl`` is its output for the default prefix. Passwords are placeholders that
Redis refuses to load until replaced (``#<sha256 hex of the password>``), so a copied file
never runs with a known password.
"""

from __future__ import annotations

from collections.abc import Iterable

from kubestream.keys import Keys

COMPONENTS = ("scheduler", "launcher", "watcher", "janitor", "status")
PLACEHOLDER = "#REPLACE-WITH-SHA256-HEX-OF-THE-PASSWORD"

_CONNECT = ("+ping", "+client|setname")  # redis-py ignores a refused CLIENT SETINFO (Redis >= 7.2)
_SCRIPTS = ("+evalsha", "+eval", "+script|load", "+script|exists")


def _keys(*patterns: str) -> tuple[str, ...]:
    return tuple(f"~{p}" for p in patterns)


def _selector(keys: Iterable[str], commands: Iterable[str]) -> str:
    return "(" + " ".join([*keys, *commands]) + ")"


def _log_requester(k: Keys) -> list[str]:
    """``get_task_log`` (scheduler and API server): write a pod log request, take and drop its answer."""
    return [_selector(_keys(k.log_requests), ("+xadd",)),
            _selector(_keys(k.log_reply("*")), ("+blpop", "+del"))]


def _log_server(k: Keys) -> list[str]:
    """Every watcher: read pod log requests in its group, write the (expiring) answers."""
    return [_selector(_keys(k.log_requests), ("+xgroup|create", "+xreadgroup", "+xack", "+xdel",
                                              "+xgroup|delconsumer")),
            _selector(_keys(k.log_reply("*")), ("+rpush", "+expire"))]


def rules(component: str, prefix: str = "kubestream", scheduler_id: str = "") -> list[str]:
    """ACL SETUSER rules (after the user name and password) for one component.

    ``scheduler_id``: for the scheduler, confine it to its own result stream and liveness key
    (one user per scheduler; empty: any scheduler's, for deployments with generated ids).
    """
    k = Keys(prefix)
    live = (k.live, f"{k.base}:watcher:cluster:*:live")  # the live sets: one cluster's, or each named cluster's
    own = scheduler_id or "*"
    if component == "scheduler":
        return ["resetkeys", "resetchannels", "-@all", *_CONNECT, *_SCRIPTS,
                *_keys(k.launch("*"), k.task("*"), k.dead, k.results(own)),
                "+multi", "+exec", "+discard",
                "+hdel", "+hset", "+hget", "+hmget", "+hgetall", "+expire", "+exists",  # records, adopt script
                "+xadd", "+xgroup|create", "+xreadgroup", "+xack",  # launches, results, dead letters
                _selector(_keys(k.scheduler(own)), ("+set", "+get", "+pexpire", "+del")),  # its liveness key
                *_log_requester(k)]
    if component == "launcher":
        return ["resetkeys", "resetchannels", "-@all", *_CONNECT, *_SCRIPTS, "+multi", "+exec", "+discard",
                "+time",  # the rate limiter's clock
                *_keys(k.task("*"), k.dead, k.results("*"), *live, k.rate_limit),
                "+xadd", "+hget", "+hmget", "+hset", "+expire", "+sadd", "+srem", "+pexpire",  # failed launches
                "+hgetall",  # a task's record: the namespace of a revoke, the digest of a refused launch
                "+scan",  # `kubestream launcher --check` finds its health key
                _selector(_keys(k.launch("*")), ("+xreadgroup", "+xack", "+xdel", "+xpending", "+xclaim",
                                                 "+xautoclaim", "+xgroup|create", "+xgroup|createconsumer",
                                                 "+xinfo|groups",  # the stream lag and pending metrics
                                                 "+xinfo|consumers", "+xgroup|delconsumer")),  # dead launchers
                # the failed-launch and claim scripts name a launch stream among their keys; their inner
                # commands are still checked one by one (no XADD to a launch stream from a script either)
                _selector(_keys(k.launch("*"), k.task("*"), k.dead, k.results("*"), *live,
                                k.alive("launcher", "*")), _SCRIPTS),
                _selector(_keys(k.alive("launcher", "*")), ("+set", "+exists", "+del")),  # liveness
                _selector(_keys(k.health("launcher", "*")), ("+hset", "+hget", "+pexpire", "+del"))]
    if component == "watcher":
        return ["resetkeys", "resetchannels", "-@all", *_CONNECT, *_SCRIPTS, "+multi", "+exec", "+discard",
                *_keys(k.task("*"), k.results("*"), k.live, f"{k.base}:watcher:*", f"{k.base}:epoch"),
                "+hget", "+hmget", "+hset", "+hdel", "+hincrby", "+hgetall", "+xadd", "+expire", "+sadd", "+srem",
                "+smembers", "+scan",
                "+get", "+set", "+pexpire", "+del", "+incr", "+exists",  # checkpoints, lease, epoch
                _selector(_keys(k.health("watcher", "*")), ("+hset", "+hget", "+pexpire", "+del")),
                *_log_server(k)]
    if component == "janitor":
        rq = f"{k.base}:rq:*"  # rq's keys and channels (RQ_KEY_PREFIX, set by `kubestream janitor`)
        return ["resetkeys", "resetchannels", "-@all", *_CONNECT, "+scan",
                *_keys(k.results("*"), k.launch("*"), k.scheduler("*")),
                "+exists", "+xinfo|stream", "+xinfo|groups", "+xinfo|consumers", "+xgroup|delconsumer",
                "+xpending", "+xtrim",  # trimming below the oldest pending entry
                _selector(_keys(k.results("*")), ("+del",)),
                # the janitor's rq worker, scheduler and jobs: anything but admin commands, on rq's keys only
                _selector([*_keys(rq), f"&{rq}"], ("+@all", "-@dangerous", "-@admin"))]
    if component == "status":  # `kubestream status`: read-only
        return ["resetkeys", "resetchannels", "-@all", *_CONNECT, "+scan", f"%R~{k.base}:*",
                "+xlen", "+xinfo|groups", "+xinfo|consumers", "+xrevrange", "+scard", "+get", "+hgetall"]
    raise ValueError(f"unknown component {component!r}: expected one of {', '.join(COMPONENTS)}")


def user_name(component: str, scheduler_id: str = "") -> str:
    return f"kubestream-{component}" + (f"-{scheduler_id}" if component == "scheduler" and scheduler_id else "")


def acl_file(prefix: str = "kubestream", scheduler_ids: Iterable[str] = ()) -> str:
    """An ACL file with one user per component (one scheduler user per id given), passwords to replace."""
    lines = [f"# kubestream Redis users for key prefix {{{prefix}}}: replace each password placeholder with",
             "# '#' + the SHA-256 hex of the password (or '>' + the password) before loading."]
    users = [("scheduler", sid) for sid in scheduler_ids] or [("scheduler", "")]
    users += [(c, "") for c in COMPONENTS if c != "scheduler"]
    for component, sid in users:
        lines.append(" ".join(["user", user_name(component, sid), "on", PLACEHOLDER,
                               *rules(component, prefix, sid)]))
    return "\n".join(lines) + "\n"
