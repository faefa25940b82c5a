"""The shared create-rate limiter (a token bucket in Redis): deadlines, stopping, and the order in which
one process's waiting threads get their tokens."""

from __future__ import annotations

import threading
import time

from devkit.procs import wait_for
from kubestream.ratelimit import RateLimiter


class RecordingLimiter(RateLimiter):
    """A RateLimiter that notes which thread each granted token went to, when the bucket granted it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.granted: list[str] = []

    def take(self, want: int = 1) -> int:
        wait_ms = super().take(want)
        if wait_ms <= 0:
            self.granted.append(threading.current_thread().name)
        return wait_ms


def test_waiting_threads_get_their_tokens_in_the_order_they_asked(redis_client, keys) -> None:
    # Racing for each token (every waiter asking Redis when its own wait ends) hands tokens out in no
    # particular order: a create thread can lose round after round while the other one launches lower
    # priority tasks. Here six threads ask one after another for tokens that come every 0.2 s.
    limiter = RecordingLimiter(redis_client, keys.rate_limit, rate=5, burst=1)
    assert limiter.take() == 0  # the bucket is empty now: every acquire below has to wait
    limiter.granted.clear()
    names = [f"waiter-{i}" for i in range(6)]
    threads = []
    for i, name in enumerate(names):
        thread = threading.Thread(target=limiter.acquire, kwargs={"deadline": time.monotonic() + 60},
                                  name=name, daemon=True)
        thread.start()
        threads.append(thread)
        wait_for(lambda n=i + 1: limiter.waiting() + len(limiter.granted) == n, timeout=30, what=f"{name} in line")
    for thread in threads:
        thread.join(60)
    assert limiter.granted == names
    assert limiter.waiting() == 0


def test_a_thread_in_line_gives_up_at_its_deadline_and_leaves_the_line(redis_client, keys) -> None:
    limiter = RateLimiter(redis_client, keys.rate_limit, rate=0.001, burst=1)  # one token per 1000 s
    assert limiter.take() == 0
    stop = threading.Event()
    first = threading.Thread(target=limiter.acquire, args=(stop,), daemon=True)  # no deadline: first in line
    first.start()
    wait_for(lambda: limiter.waiting() == 1, timeout=30, what="the first thread in line")
    try:
        assert limiter.acquire(stop, deadline=time.monotonic() + 0.5) is False  # behind it, until its deadline
        assert limiter.waiting() == 1
    finally:
        stop.set()
    first.join(30)
    assert not first.is_alive() and limiter.waiting() == 0


def test_stopping_wakes_every_thread_in_line(redis_client, keys) -> None:
    limiter = RateLimiter(redis_client, keys.rate_limit, rate=0.001, burst=1)
    assert limiter.take() == 0
    stop = threading.Event()
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(limiter.acquire(stop)), daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: limiter.waiting() == 4, timeout=30, what="four threads in line")
    stop.set()
    for thread in threads:
        thread.join(30)
    assert results == [False] * 4 and limiter.waiting() == 0


def test_acquire_gives_up_at_its_deadline_without_sleeping_past_it(redis_client, keys) -> None:
    limiter = RateLimiter(redis_client, keys.rate_limit, rate=0.001, burst=1)
    assert limiter.acquire(deadline=time.monotonic() + 60)  # the burst's token
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)  # a guard: without a deadline this would wait 1000 s
    timer.start()
    try:
        assert limiter.acquire(stop, deadline=time.monotonic() + 30) is False
        assert not stop.is_set()  # it returned on its own: no token before the deadline
    finally:
        timer.cancel()


def test_a_rate_of_zero_is_unlimited_and_never_waits(redis_client, keys) -> None:
    limiter = RateLimiter(redis_client, keys.rate_limit, rate=0, burst=1)
    assert all(limiter.acquire(deadline=time.monotonic()) for _ in range(100))
    assert not redis_client.exists(keys.rate_limit)
