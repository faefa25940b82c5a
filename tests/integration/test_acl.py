"""Least-privilege Redis users: every component works under its own ACL user against the real
redis-server, and each is refused what is outside its role."""

from __future__ import annotations

import secrets
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devkit.procs import wait_for
from devkit.workloads import DEV_SIGNING_KEYS, pod_name, sim, workload
from kubestream.acl import COMPONENTS, PLACEHOLDER, acl_file, rules, user_name
from kubestream.messages import FIELD
from kubestream.signing import new_key

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_acl_file_is_what_kubestream_acl_prints() -> None:
    assert (REPO / "k8s" / "redis-users.acl").read_text() == acl_file()


def test_a_copied_file_cannot_be_loaded_with_its_placeholder_password(redis_client) -> None:
    with pytest.raises(redis.ResponseError):
        redis_client.execute_command("ACL", "SETUSER", "kubestream-test-placeholder", "on", PLACEHOLDER)


@pytest.fixture
def acl_users(redis_client, redis_server, key_prefix) -> Iterator[dict[str, str]]:
    """One user per component for this test's key prefix (scheduler confined to sched-a); their URLs."""
    urls = {}
    host_port = redis_server.url.split("//", 1)[1]
    for component in COMPONENTS:
        name, password = user_name(component, "sched-a") + f"-{key_prefix}", secrets.token_hex(8)
        redis_client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}",
                                     *rules(component, key_prefix, "sched-a"))
        urls[component] = f"redis://{name}:{password}@{host_port}"
    yield urls
    for component in COMPONENTS:
        redis_client.execute_command("ACL", "DELUSER", user_name(component, "sched-a") + f"-{key_prefix}")


def test_every_component_works_under_its_acl_user(pipeline, streams, acl_users) -> None:
    pipeline.launcher(redis_url=acl_users["launcher"])
    pipeline.watcher(redis_url=acl_users["watcher"])
    driver = pipeline.new_driver(redis_url=acl_users["scheduler"])
    good = [workload("acl", f"ok{i}", executor_config=sim("succeed")) for i in range(4)]
    failing = workload("acl", "fails", executor_config=sim("exit:1"))
    rejected = workload("acl", "rejected", executor_config={"pod_override": {"spec": {"containers": [
        {"name": "Bad_Name!"}]}}})  # a 422: the launcher's failed-launch script runs under its user
    driver.submit([*good, failing, rejected])
    finals = driver.run_until([w.ti.key for w in [*good, failing, rejected]], timeout=120)
    assert {finals[w.ti.key] for w in good} == {"success"}
    assert finals[failing.ti.key] == "failed" and finals[rejected.ti.key] == "failed"
    assert driver.failures(rejected.ti.key)[0].startswith("422 ")
    assert streams.pending() == 0


def test_a_launcher_under_its_acl_user_deletes_a_revoked_pod_and_fails_a_refused_launch(
        pipeline, streams, acl_users, redis_client, keys) -> None:
    """Both read the task's record (its namespace; the digest that proves a refused launch was the
    scheduler's own). No watcher runs, so only the launcher can delete the revoked pod."""
    pipeline.launcher(redis_url=acl_users["launcher"])
    driver = pipeline.new_driver(redis_url=acl_users["scheduler"])
    running = workload("acl", "revoked", executor_config=sim("run"))
    driver.submit([running])
    pod = pod_name(running)
    wait_for(lambda: streams.pod_phase(pod) == "Running", timeout=90, what="the pod running")
    driver.executor.revoke_task(ti=types.SimpleNamespace(key=running.ti.key, queue=running.ti.queue,
                                                         external_executor_id=running.ti.external_executor_id))
    wait_for(lambda: pod not in streams.pods(), timeout=90, what="the revoked pod deleted by the launcher")
    # a scheduler that signs with a key the launchers do not have yet (a botched rotation; it still verifies
    # the launchers' results): its launch is dead-lettered and its task failed, not retried for ever
    rotated = pipeline.new_driver(redis_url=acl_users["scheduler"], signing_keys=f"next={new_key()},{DEV_SIGNING_KEYS}")
    refused = workload("acl", "refused")
    rotated.submit([refused])
    finals = rotated.run_until([refused.ti.key], timeout=90)
    assert finals[refused.ti.key] == "failed"
    why = "signature: signed with unknown key id 'next'"
    assert rotated.failures(refused.ti.key)[0] == f"launch message refused: {why}"
    assert [f[b"reason"] for _, f in redis_client.xrange(keys.dead)] == [why.encode()]
    assert streams.pending() == 0


def test_each_component_is_refused_what_is_outside_its_role(acl_users, keys) -> None:
    def client(component: str) -> redis.Redis:
        return redis.Redis.from_url(acl_users[component])

    launch, task = keys.launch("default"), keys.task("ks-x")
    refused = [
        ("launcher", lambda c: c.xadd(launch, {FIELD: b"a forged launch"})),  # only the scheduler launches
        ("watcher", lambda c: c.xadd(launch, {FIELD: b"a forged launch"})),
        ("watcher", lambda c: c.xreadgroup("launchers", "w", {launch: ">"})),
        ("scheduler", lambda c: c.xreadgroup("executor", "sched-a", {keys.results("sched-b"): ">"})),
        ("scheduler", lambda c: c.delete(task)),
        ("scheduler", lambda c: c.hset(keys.health("launcher", "x"), "ts", "1")),
        ("janitor", lambda c: c.hset(task, "owner", "me")),
        ("status", lambda c: c.hset(task, "owner", "me")),
        ("launcher", lambda c: c.flushall()),
        ("launcher", lambda c: c.get(keys.watcher_lease)),
    ]
    for component, call in refused:
        with client(component) as c, pytest.raises(redis.exceptions.NoPermissionError):
            call(c)
    with client("launcher") as c, pytest.raises(redis.ResponseError, match="(?i)noperm|permission|can.t access"):
        c.eval("return redis.call('XADD', KEYS[1], '*', 'm', 'forged')", 1, launch)  # nor from a script
    with client("scheduler") as c:  # and allowed what it needs
        c.xadd(launch, {FIELD: b"x"})
        c.hset(task, "owner", "sched-a")
