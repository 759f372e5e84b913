"""The sign-in limiter's window and its memory bound (a pure object: no server needed)."""

from __future__ import annotations

from api.auth import SignInLimiter


def test_five_failures_lock_the_name_and_the_address_until_the_window_passes() -> None:
    limiter = SignInLimiter(max_failures=5, window=300)
    for second in range(5):
        assert limiter.retry_after("dr.petrov", "10.0.0.1", now=1000 + second) == 0
        limiter.failed("dr.petrov", "10.0.0.1", now=1000 + second)
    assert limiter.retry_after("dr.petrov", "10.0.0.9", now=1010) > 0  # the name, from anywhere
    assert limiter.retry_after("ref.ivanov", "10.0.0.1", now=1010) > 0  # the address, for any name
    assert limiter.retry_after("ref.ivanov", "10.0.0.9", now=1010) == 0
    assert limiter.retry_after("dr.petrov", "10.0.0.1", now=1301) == 0  # the oldest failure left the window


def test_memory_stays_bounded_under_a_spray_of_names_and_addresses() -> None:
    limiter = SignInLimiter(max_failures=5, window=300, max_tracked=100)
    for i in range(10_000):
        limiter.failed(f"user-{i}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now=1000 + i / 1000)
    assert len(limiter._failures) <= 100
    assert all(len(times) <= 5 for times in limiter._failures.values())
