"""bench.footprint at a tiny size, so it cannot rot (figures are checked for sanity, never for speed)."""

from __future__ import annotations

from bench.footprint import memory_phase, signing_phase
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.settings import Settings


def test_footprint_phases_give_sane_figures(redis_server, redis_client, key_prefix) -> None:
    settings = Settings.from_mapping({"redis_url": redis_server.url, "key_prefix": key_prefix,
                                      "signing_keys": DEV_SIGNING_KEYS})
    memory = memory_phase(redis_client, settings, tasks=20)  # it checks the lifecycle's entry counts itself
    assert memory.tasks == 20  # (at this size Redis's own allocations drown the per-task bytes: not checked)
    assert all(isinstance(v, float) for k, v in vars(memory).items() if k != "tasks")
    signing = signing_phase(settings, rounds=50)
    assert signing.message_bytes > 1000 and min(signing.sign_us, signing.verify_us) > 0
