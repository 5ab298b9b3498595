"""The retry policy: capped exponential backoff with full jitter, and precedence."""

from __future__ import annotations

from pulse_core.policy import RetryPolicy, effective


def test_backoff_ceiling_doubles_per_attempt_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff=2, backoff_max=10)
    # rand() == 1 gives the ceiling; attempts 2..6 wait at most 2, 4, 8, 10, 10 seconds
    assert [policy.delay_before(n, rand=lambda: 1.0) for n in range(2, 7)] == [2, 4, 8, 10, 10]
    # full jitter: anything from zero up to the ceiling
    assert policy.delay_before(5, rand=lambda: 0.0) == 0
    assert policy.delay_before(4, rand=lambda: 0.5) == 4


def test_a_jobs_options_win_over_its_job_types_policy() -> None:
    policy = RetryPolicy(max_retries=5, timeout=30)
    assert effective(policy, max_retries=None, timeout=None) == (5, 30)
    assert effective(policy, max_retries=0, timeout=7) == (0, 7)
