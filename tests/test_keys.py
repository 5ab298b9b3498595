"""Key shapes are collision-free by construction: different parts never make one key."""

from __future__ import annotations

import itertools

from redis import Redis

from pulse_core import keys

JOB_TYPES = ["a", "a:tenant:b", "a:tenant", "b", "a%3Atenant%3Ab", "x:y", "a:tenant:b:tenant:c"]
TENANTS = [None, "b", "c", "tenant"]


def test_a_job_type_holding_the_separator_cannot_pose_as_another_family_member() -> None:
    # given jobTypes that hold ':' (allowed by the jobType pattern) and tenant scopes
    built = {
        (job_type, tenant): keys.concurrency(job_type, tenant)
        for job_type, tenant in itertools.product(JOB_TYPES, TENANTS)
    }
    # then no two (jobType, tenant) pairs share a key: "a:tenant:b" for all is not "a" for tenant b
    assert len(set(built.values())) == len(built)
    assert keys.concurrency("a:tenant:b") != keys.concurrency("a", "b")
    # and a part without ':' or '%' keeps its plain name (existing keys are unchanged)
    assert keys.concurrency("diag.echo", "acme") == "pulse:slots:diag.echo:tenant:acme"
    assert keys.job("0b5c8f0e-3b3e-4f7e-9c43-1c1f2b7a9d10") == "pulse:job:0b5c8f0e-3b3e-4f7e-9c43-1c1f2b7a9d10"


def test_every_family_escapes_its_parts() -> None:
    # given a part that imitates another family's suffix
    sly = "x:jobs"
    # then the tenant-scoped families stay apart whatever the id holds
    assert keys.tenant_jobs(sly) != keys.tenant_jobs("x")
    assert keys.tenant_dead_letters("x:dead") != keys.tenant_dead_letters("x")
    assert keys.idempotency("x:idem:y", "d") != keys.idempotency("x", "y:idem:d")
    assert keys.active("q:x") != keys.active("q")
    assert keys.ready("q:x", "t") != keys.ready("q", "x:t")
    assert keys.job("a:b") != keys.job("a") and keys.job("a:b").count(":") == 2


def test_slots_of_a_colon_job_type_and_a_tenant_scope_are_separate_in_redis(redis: Redis) -> None:
    # given the global run-slot set of jobType "a:tenant:b" with a holder in it
    redis.delete(keys.concurrency("a:tenant:b"), keys.concurrency("a", "b"))
    redis.zadd(keys.concurrency("a:tenant:b"), {"job-1": 1})
    # then tenant b's slots of jobType "a" are still empty
    assert redis.zcard(keys.concurrency("a", "b")) == 0
    redis.delete(keys.concurrency("a:tenant:b"))
