"""The pod calls on ``httpwire`` against the real kube-apiserver: TLS as the kubeconfig says, kept
connections (opened ahead by a starting launcher), a connection cut in between, a CA that does not sign the
server, and where urllib3 stays."""

from __future__ import annotations

import select

import pytest
import redis
from kubernetes import client, config

from devkit.cluster import ClusterState
from devkit.faultproxy import FaultProxy
from devkit.procs import wait_for
from kubestream.apierrors import classify_exception
from kubestream.kubeapi import ApiError, KubeClient, PodApi, api_client, wire_pool
from kubestream.settings import Settings
from kubestream.workers.launcher import Launcher

SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"  # a bundle that does not hold the local cluster's CA


def pod(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "base", "image": "busybox"}]}}


def configuration(cluster: ClusterState, **changes: object) -> client.Configuration:
    conf = client.Configuration()
    config.load_kube_config(config_file=cluster.kubeconfig("admin"), client_configuration=conf)
    conf.retries = False
    for name, value in changes.items():
        setattr(conf, name, value)
    return conf


def test_every_pod_call_goes_on_one_kept_verified_connection(cluster: ClusterState, namespace: str) -> None:
    api = api_client(cluster.kubeconfig("admin"))
    try:
        assert isinstance(api, KubeClient) and api.wire is not None
        assert api.wire.endpoint.tls is not None and api.wire.endpoint.server_hostname == "127.0.0.1"
        pods = PodApi(api)
        uids = {pods.create(namespace, pod(f"w{i}"))["metadata"]["uid"] for i in range(10)}
        assert len(uids) == 10
        pods.create_unread(namespace, pod("w-unread"))
        listed = pods.list(namespace, limit=500)
        assert {p["metadata"]["name"] for p in listed.items} == {f"w{i}" for i in range(10)} | {"w-unread"}
        assert pods.get(namespace, "w3")["metadata"]["uid"] in uids
        assert pods.get(namespace, "nope") is None
        with pytest.raises(ApiError) as taken:
            pods.create(namespace, pod("w1"))
        assert (taken.value.status, taken.value.status_reason) == (409, "AlreadyExists")
        assert pods.delete(namespace, "w1", grace_period_seconds=0) is True
        assert pods.delete(namespace, "w1") is False
        assert api.wire.opened == 1
    finally:
        api.close()


def test_connections_opened_ahead_carry_the_calls(cluster: ClusterState, namespace: str) -> None:
    api = api_client(cluster.kubeconfig("admin"), pool_size=4)
    try:
        pods = PodApi(api)
        assert pods.open_connections(8) == 4  # the pool's size
        assert len(api.wire._idle) == 4
        # a TLS 1.3 server sends its session tickets after the handshake (Go's does, to a client with a
        # certificate): they make each idle connection readable, and must not pass for a closed connection
        wait_for(lambda: all(select.select([c.sock], [], [], 0)[0] for c in api.wire._idle), timeout=10,
                 what="the session tickets")
        for i in range(6):
            pods.create_unread(namespace, pod(f"ahead{i}"))
        assert api.wire.opened == 4
    finally:
        api.close()


def test_a_starting_launcher_opens_its_api_connections_before_any_launch(settings: Settings, cluster: ClusterState,
                                                                         redis_client: redis.Redis) -> None:
    api = api_client(cluster.kubeconfig("launcher"), pool_size=settings.launch_concurrency)
    try:
        launcher = Launcher(settings, redis_client, api)
        launcher.run(until_idle=True)  # nothing to launch: it returns at once
        wait_for(lambda: len(api.wire._idle) == settings.launch_concurrency, timeout=30,
                 what="the launcher's connections opened ahead")
        assert api.wire.opened == settings.launch_concurrency
    finally:
        api.close()


def test_a_cut_connection_costs_the_next_call_nothing_but_a_new_connection(cluster: ClusterState,
                                                                           namespace: str) -> None:
    with FaultProxy("127.0.0.1", cluster.apiserver_port) as proxy:
        api = KubeClient(configuration(cluster, host=f"https://127.0.0.1:{proxy.port}"))
        try:
            pods = PodApi(api)
            pods.create(namespace, pod("cut-a"))
            proxy.cut_all()
            wait_for(lambda: not api.wire._idle[0].idle_and_clean(), timeout=10, what="the cut at the client")
            assert pods.get(namespace, "cut-a") is not None
            assert api.wire.opened == 2 and proxy.accepted == 2
            proxy.refuse = True
            proxy.cut_all()
            with pytest.raises((OSError, ApiError)) as caught:  # refused in or before the TLS handshake
                pods.get(namespace, "cut-a", timeout=(2.0, 2.0))
            assert classify_exception(caught.value).kind == "transient"
        finally:
            api.close()


def test_a_server_certificate_the_configured_ca_does_not_sign_is_refused(cluster: ClusterState) -> None:
    api = KubeClient(configuration(cluster, ssl_ca_cert=SYSTEM_CAS))
    try:
        with pytest.raises(ApiError) as caught:
            PodApi(api).get("default", "any")
        assert caught.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
        assert classify_exception(caught.value).kind == "transient"
    finally:
        api.close()
    unverified = KubeClient(configuration(cluster, ssl_ca_cert=SYSTEM_CAS, verify_ssl=False))
    try:
        assert PodApi(unverified).get("default", "any") is None  # verify_ssl false: as the client does
    finally:
        unverified.close()


def test_tls_server_name_is_the_name_the_certificate_is_checked_against(cluster: ClusterState) -> None:
    named = KubeClient(configuration(cluster, tls_server_name="kubernetes"))  # a name the apiserver's cert has
    wrong = KubeClient(configuration(cluster, tls_server_name="wrong.example"))
    try:
        assert named.wire.endpoint.server_hostname == "kubernetes"
        assert PodApi(named).get("default", "any") is None
        with pytest.raises(ApiError, match="Hostname mismatch") as caught:
            PodApi(wrong).get("default", "any")
        assert caught.value.status == 0
    finally:
        named.close()
        wrong.close()


def test_urllib3_carries_what_the_wire_does_not_do(cluster: ClusterState) -> None:
    assert wire_pool(configuration(cluster, proxy="http://127.0.0.1:3128")) is None
    assert wire_pool(configuration(cluster, assert_hostname="kubernetes")) is None
    assert wire_pool(configuration(cluster, host="https://127.0.0.1:1/prefix")) is None
    bypassed = configuration(cluster, proxy="http://127.0.0.1:3128", no_proxy="127.0.0.1")
    assert wire_pool(bypassed) is not None
    plain = client.ApiClient(configuration(cluster))  # not a KubeClient: urllib3, as before
    try:
        assert PodApi(plain).get("default", "any") is None
    finally:
        plain.close()
