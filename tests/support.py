"""Helpers the tests share: a tenant with a Stripe connection on the sandbox."""

from __future__ import annotations

from writevue_pipelines import registry
from writevue_pipelines.runtime import Runtime


def add_stripe_connection(
    runtime: Runtime,
    sandbox_url: str,
    api_key: str,
    *,
    tenant_id: str | None = None,
    name: str = "Acme Ltd",
    email: str = "ops@acme.test",
) -> tuple[str, str]:
    """(tenant id, connection id); a new tenant unless one is given."""
    with runtime.db.session() as session:
        if tenant_id is None:
            tenant_id = registry.add_tenant(session, runtime.keys, name, email)
        connection_id = registry.add_connection(
            session,
            runtime.keys,
            tenant_id,
            "stripe",
            "api_key",
            {"base_url": sandbox_url},
            {"api_key": api_key},
        )
    return tenant_id, connection_id
