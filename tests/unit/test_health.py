"""Health follows the main loop: a component whose loop is stuck lets its health key expire."""

from __future__ import annotations

import threading

from devkit.procs import wait_for
from kubestream.health import Heartbeat, Metrics


def test_a_stuck_main_loop_lets_the_health_key_expire(redis_client, keys) -> None:
    key = keys.health("launcher", "stuck")
    beat = Heartbeat(redis_client, key, 1.0, Metrics("launcher")).start()
    try:
        assert redis_client.exists(key) and beat.healthy()
        # the heartbeat thread runs on, but nobody reports progress: the key expires, /healthz turns red
        wait_for(lambda: not redis_client.exists(key), timeout=20, what="the health key to expire")
        assert not beat.healthy()
    finally:
        beat.stop()


def test_a_progressing_main_loop_keeps_the_health_key(redis_client, keys) -> None:
    key = keys.health("launcher", "busy")
    beat = Heartbeat(redis_client, key, 1.0, Metrics("launcher")).start()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.1):
            beat.progress()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        refreshed = [float(redis_client.hget(key, "ts") or 0)]

        def refreshed_three_times() -> bool:
            ts = float(redis_client.hget(key, "ts") or 0)
            if ts > refreshed[-1]:
                refreshed.append(ts)
            return len(refreshed) >= 4

        wait_for(refreshed_three_times, timeout=30, what="three refreshes of the health key")
        assert beat.healthy() and redis_client.exists(key)
    finally:
        stop.set()
        thread.join()
        beat.stop()
