import random

import pytest

from kubestream.backoff import backoff_delay


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "ceiling"),
    [
        (0, 0.2, 10.0, 0.2),
        (1, 0.2, 10.0, 0.4),
        (3, 0.2, 10.0, 1.6),
        (5, 0.2, 10.0, 6.4),
        (6, 0.2, 10.0, 10.0),  # 12.8 capped
        (50, 0.2, 10.0, 10.0),
        (5000, 0.2, 10.0, 10.0),  # no float overflow
        (0, 1.0, 0.5, 0.5),  # cap below base
    ],
)
def test_delay_within_equal_jitter_bounds(attempt, base, cap, ceiling):
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, base=base, cap=cap, rng=rng) for _ in range(500)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 10  # it is jittered


@pytest.mark.parametrize(("base", "cap"), [(0.0, 10.0), (1.0, 0.0)])
def test_zero_delay(base, cap):
    assert backoff_delay(3, base=base, cap=cap, rng=random.Random(1)) == 0.0


def test_deterministic_with_seeded_rng():
    a = [backoff_delay(i, base=0.2, cap=10, rng=random.Random(7)) for i in range(8)]
    b = [backoff_delay(i, base=0.2, cap=10, rng=random.Random(7)) for i in range(8)]
    assert a == b


def test_default_rng_works():
    assert 0.1 <= backoff_delay(0, base=0.2, cap=10) <= 0.2


def test_grows_with_attempt_on_average():
    rng = random.Random(3)
    means = [sum(backoff_delay(a, base=0.1, cap=100, rng=rng) for _ in range(200)) / 200 for a in range(6)]
    assert means == sorted(means)


@pytest.mark.parametrize(
    ("attempt", "base", "cap"), [(-1, 0.2, 10.0), (0, -0.1, 10.0), (0, 0.2, -1.0), (0, float("nan"), 1.0)]
)
def test_invalid_arguments(attempt, base, cap):
    with pytest.raises(ValueError):
        backoff_delay(attempt, base=base, cap=cap)
