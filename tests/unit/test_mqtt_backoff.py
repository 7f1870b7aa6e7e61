"""The one reconnect backoff (gateway/mqtt/backoff.py): its bounds, its jitter, its reset."""

from __future__ import annotations

import itertools
import statistics

import pytest

from gateway.mqtt.backoff import Backoff


def test_each_step_waits_between_half_and_all_of_its_ceiling() -> None:
    for _ in range(200):
        delays = list(itertools.islice(Backoff(10.0, base=0.5), 8))
        ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
        for d, c in zip(delays, ceilings, strict=True):
            assert c / 2 <= d <= c


def test_never_above_the_cap_however_long_it_runs() -> None:
    b = Backoff(3.0, base=0.1)
    delays = [next(b) for _ in range(2000)]  # far beyond 2**1000: no overflow either
    assert max(delays) <= 3.0
    assert min(delays[100:]) >= 1.5


def test_jitter_spreads_many_clients_apart() -> None:
    """Many clients losing one broker at once do not come back in lockstep."""
    firsts = [next(Backoff(60.0, base=8.0)) for _ in range(500)]
    assert min(firsts) >= 4.0 and max(firsts) <= 8.0
    assert statistics.pstdev(firsts) > 0.5
    assert len({round(d, 3) for d in firsts}) > 400


def test_reset_starts_from_the_first_step() -> None:
    b = Backoff(60.0, base=1.0)
    for _ in range(6):
        next(b)
    assert next(b) >= 30.0
    b.reset()
    assert next(b) <= 1.0


def test_iterates() -> None:
    assert len(list(itertools.islice(Backoff(1.0), 5))) == 5


def test_a_base_above_the_cap_starts_at_the_cap() -> None:
    assert all(0.15 <= next(Backoff(0.3, base=1.0)) <= 0.3 for _ in range(100))


@pytest.mark.parametrize(("cap", "base"), [(1.0, 0.0), (1.0, -1.0), (0.0, 0.5)])
def test_nonsense_is_refused(cap: float, base: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Backoff(cap, base=base)
