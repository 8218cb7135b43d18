"""Helpers the tests share: tenants with connections on the sandbox, a dashboard server,
and a test OAuth2 source served by the sandbox's authorisation server."""

from __future__ import annotations

import datetime as dt

import httpx
import polars as pl

from writevue_pipelines import registry
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources.auth import OAuthSpec
from writevue_pipelines.sources.base import FetchRequest, FetchResult, Source


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
        connection_id = stripe_connection(session, runtime, tenant_id, sandbox_url, api_key)
    return tenant_id, connection_id


def stripe_connection(session, runtime: Runtime, tenant_id: str, base_url: str, key: str) -> str:
    """A Stripe API-key connection of the tenant, in the caller's transaction; its id."""
    options, secrets = {"base_url": base_url}, {"api_key": key}
    return registry.add_connection(
        session, runtime.keys, tenant_id, "stripe", "api_key", options, secrets
    )


def add_tenant_with_facts(
    runtime: Runtime, name: str, facts, *, refreshed_at=None
) -> tuple[str, str]:
    """(tenant id, connection id): a tenant whose Stripe connection already holds ``facts``.

    ``facts`` is a polars frame in the warehouse's long format; no source is called.
    """
    from writevue_pipelines import warehouse

    with runtime.db.session() as session:
        tenant_id = registry.add_tenant(session, runtime.keys, name, "ops@client.test")
        connection_id = stripe_connection(
            session,
            runtime,
            tenant_id,
            "http://127.0.0.1:9",
            f"sk_test_{tenant_id.replace('-', '')}",
        )
        connection = registry.get_connection(session, connection_id)
        warehouse.upsert_facts(session, connection, facts, window_start=None)
        registry.record_refresh_result(
            session, connection_id, error=None, at=refreshed_at or dt.datetime.now(dt.UTC)
        )
    return tenant_id, connection_id


def start_dashboard_server(home, log_path, **env: str):
    """`writevue serve` in its own process on a free port: (process, base URL)."""
    import os
    import subprocess
    import sys
    import time

    from writevue_pipelines.demo import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    environ = {
        **os.environ,
        "WRITEVUE_HOME": str(home),
        "WRITEVUE_DASHBOARD_URL": base,
        **env,
    }
    environ.pop("WRITEVUE_DATABASE_URL", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "writevue_pipelines.cli", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/robots.txt", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.3)
        if process.poll() is not None:
            break
    process.kill()
    process.wait(10)
    raise AssertionError(open(log_path).read())


class SandboxOAuthSource(Source):
    """A test connector whose OAuth2 endpoints (with RFC 7009 revocation) are the sandbox's.

    Its fetch reads nothing; subclasses name themselves and read what their test needs.
    """

    name = "sandbox_oauth_probe"
    title = "OAuth probe"
    description = "Test connector for the OAuth2 flow against the sandbox."
    auth_kinds = ("oauth2",)
    default_base_url = "https://probe.example.invalid"
    oauth = OAuthSpec(
        base_url="https://auth.example.invalid",
        authorize_path="/oauth/authorize",
        token_path="/oauth/token",
        revoke_path="/oauth/revoke",
        scopes=("read:probe",),
    )
    metrics = {"seen": "Seen"}

    async def fetch(self, client: httpx.AsyncClient, request: FetchRequest) -> FetchResult:
        return FetchResult(pl.DataFrame({"n": [1]}), None, 0, 0.0)

    def aggregate(self, records: pl.DataFrame) -> pl.DataFrame:
        return pl.DataFrame(
            {"metric": ["seen"], "dimension": [""], "day": [dt.date.today()], "value": [1.0]}
        )
