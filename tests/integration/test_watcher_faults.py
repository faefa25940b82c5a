"""The watcher process (`kubestream watcher`) against faults of its own: a namespace's watch never dies
quietly. An error that goes away (here: a checkpoint Redis cannot read) is retried until it does; one that
cannot (here: credentials the apiserver refuses, 401) makes the process give its lease up and exit non-zero,
so that a standby or the restarted process takes over."""

from __future__ import annotations

import pytest

from devkit.isolated import proxied_kubeconfig
from devkit.workloads import workload

pytestmark = pytest.mark.cluster


def test_a_checkpoint_redis_cannot_read_is_retried_until_it_can_and_the_task_reports(
        pipeline, streams, components, redis_client, keys, settings) -> None:
    redis_client.hset(keys.resource_version(settings.namespace), "not", "a string")  # GET answers WRONGTYPE
    pipeline.launcher()
    pipeline.watcher()
    name = components.names()[-1]
    task = workload("faults", "checkpoint")
    pipeline.submit([task])
    components.wait(lambda: components.log(name).count("watch error") >= 2, timeout=60,
                    what="the checkpoint read retried")
    assert streams.lease_holder() == name  # it leads all along
    redis_client.delete(keys.resource_version(settings.namespace))
    assert pipeline.run_until([task.ti.key], timeout=90) == {task.ti.key: "success"}


def test_refused_credentials_make_the_watcher_give_its_lease_up_and_exit_non_zero(
        pipeline, streams, components, fault_proxy, tmp_path) -> None:
    # a token the apiserver does not know (e.g. a rotated one this process still holds): every call is 401
    bad = proxied_kubeconfig(tmp_path, fault_proxy.url, "not-a-valid-token", "watcher")
    watcher = pipeline.watcher(kubeconfig=bad)
    name = components.names()[-1]
    assert watcher.wait(timeout=120) == 1
    assert streams.lease_holder() is None  # given up, not left to expire: a standby takes over at once
    assert "cannot go on" in components.log(name) and "401" in components.log(name)
    pipeline.launcher()
    pipeline.watcher()
    task = workload("faults", "after")
    pipeline.submit([task])
    assert pipeline.run_until([task.ti.key], timeout=90) == {task.ti.key: "success"}
