"""Where a job goes: its queue (by tenant and jobType) and its priority.

**Queue.** Resolved once, when the job is accepted, and stored in the job (its
document shows it). Precedence, first match wins:

1. ``[tenants.<id>.job_types."<jobType>"] queue`` — tenant x jobType;
2. ``[job_types."<jobType>"] queue`` — the jobType, for every tenant;
3. ``[tenants.<id>] queue`` — the tenant's dedicated queue;
4. ``[defaults] queue`` — the shared queue (default ``PULSE_DEFAULT_QUEUE``, "pulse").

**Fair order.** Every queue is one broker queue. On a shared queue, tenants take turns
(weighted fair order) through the dispatcher (``pulse_core.store.dispatch``), not the
broker: jobs wait in Pulse's ready sets and the broker queue is kept short.

**Priority.** ``options.priority`` 0-9, higher runs sooner, default 5: it orders a
tenant's own waiting jobs (see ``pulse_core.broker.celery_app.broker_priority`` for how
each broker honours it among the messages already on a queue).
"""

from __future__ import annotations

from pulse_core.tenants import TenantsConfig


def shared_queue(config: TenantsConfig, fallback: str) -> str:
    """The shared queue: ``[defaults] queue``, else ``fallback`` (``PULSE_DEFAULT_QUEUE``)."""
    return config.default_queue or fallback


def resolve_queue(config: TenantsConfig, tenant_id: str, job_type: str, fallback: str) -> str:
    """The queue of ``tenant_id``'s ``job_type`` jobs (precedence in the module docstring)."""
    tenant = config.tenants.get(tenant_id)
    if tenant is not None:
        rule = tenant.job_types.get(job_type)
        if rule is not None and rule.queue:
            return rule.queue
    rule = config.job_types.get(job_type)
    if rule is not None and rule.queue:
        return rule.queue
    if tenant is not None and tenant.queue:
        return tenant.queue
    return shared_queue(config, fallback)


def tenant_queues(config: TenantsConfig, tenant_id: str, fallback: str) -> list[str]:
    """The queues the tenant's own settings name: its queue (or the shared one), then its
    tenant x jobType queues. Queues routed by jobType for everyone are not included."""
    tenant = config.tenants[tenant_id]
    found = [tenant.queue or shared_queue(config, fallback)]
    found += [rule.queue for rule in tenant.job_types.values() if rule.queue]
    return list(dict.fromkeys(found))


def configured_queues(config: TenantsConfig, fallback: str) -> list[str]:
    """Every queue the routing config names: the shared one, tenants', jobTypes' and
    tenant x jobType queues."""
    found = [shared_queue(config, fallback)]
    found += [rule.queue for rule in config.job_types.values() if rule.queue]
    for tenant in config.tenants.values():
        found += [tenant.queue] if tenant.queue else []
        found += [rule.queue for rule in tenant.job_types.values() if rule.queue]
    return list(dict.fromkeys(found))
