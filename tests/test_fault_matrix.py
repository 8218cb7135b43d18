"""The fault matrix: every sandbox fault ends in success after retries, or in a clean
failure of that one connection, while the other connections of the same batch are written.

All connections of the matrix refresh together in one batch, as a scheduled run does.
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from support import add_stripe_connection, expire_access_token, use_sandbox_oauth_client

from writevue_pipelines import oauth, refresh, registry, warehouse
from writevue_pipelines.errors import CredentialRejected, SourceError
from writevue_sandbox import SandboxServer
from writevue_sandbox.faults import with_faults

CALLBACK = "http://127.0.0.1:5006/connect/callback"

# fault plan on the credential -> does the refresh succeed?
API_KEY_FAULTS = {
    "latency300": True,
    "429x2": True,  # Retry-After honoured, then success
    "5xx3": True,  # a burst of 503s, retried with backoff
    "timeout1": True,  # one hung request, timed out and retried
    "5xx": False,  # a provider that stays down
    "malformed": False,  # JSON that does not parse
    "truncated": False,  # a page cut in half
}
# login_hint fault plan for OAuth2 grants -> does the refresh succeed?
OAUTH_FAULTS = {
    "expired": True,  # the access token is dead on first use: refreshed once, then fine
    "revoked": False,  # the grant was revoked: at the next refresh the client must reconnect
}


@pytest.fixture
def faulty_sandbox(monkeypatch):
    monkeypatch.setenv("WRITEVUE_HTTP_TIMEOUT_S", "1")
    use_sandbox_oauth_client(monkeypatch, "github")
    monkeypatch.setenv("WRITEVUE_HISTORY_DAYS", "10")
    with SandboxServer(hang_s=2.5) as server:
        yield server


def _github_oauth_connection(runtime, sandbox, tenant: str, plan: str) -> str:
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url, "owner": "acme-org"}
    url = oauth.begin_authorization(runtime, tenant, "github", options, CALLBACK)
    consent = httpx.get(url + f"&login_hint=faulty-{plan}__f_{plan}", follow_redirects=False)
    assert consent.status_code == 302
    return oauth.complete_authorization(runtime, *oauth.parse_callback(consent.headers["location"]))


@pytest.mark.timeout(240)
def test_every_fault_ends_in_retried_success_or_a_clean_failure_of_one_connection(
    home, faulty_sandbox
):
    from writevue_pipelines.home import init_home
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    init_home(Settings.from_env())
    runtime = Runtime(Settings.from_env())
    sandbox = faulty_sandbox
    tenant, clean = add_stripe_connection(runtime, sandbox.url, "sk_test_matrix_clean")
    expected: dict[str, tuple[str, bool]] = {clean: ("clean", True)}
    keys = {}
    for plan, succeeds in API_KEY_FAULTS.items():
        key = with_faults(f"sk_test_matrix_{plan}", plan)
        keys[plan] = key
        _, connection = add_stripe_connection(runtime, sandbox.url, key, tenant_id=tenant)
        expected[connection] = (plan, succeeds)
    for plan, succeeds in OAUTH_FAULTS.items():
        connection = _github_oauth_connection(runtime, sandbox, tenant, plan)
        expected[connection] = (f"oauth {plan}", succeeds)
        if plan == "revoked":
            expire_access_token(runtime, connection)  # an hour later: time to refresh

    # The batch path: fetched concurrently, each loaded as soon as it is staged.
    outcomes = refresh.refresh_connections(runtime, list(expected))

    for connection_id, (plan, succeeds) in expected.items():
        outcome = outcomes[connection_id]
        if succeeds:
            assert outcome.error is None, (plan, outcome.error)
            assert outcome.loaded.facts > 0, plan
            continue
        result = outcome.error
        assert outcome.fetched is None and outcome.loaded is None, plan
        assert isinstance(result, SourceError), (plan, result)
        message = str(result)
        assert connection_id in message, plan
        assert not any(key in message for key in keys.values()), plan
        refresh.record_failure(runtime, connection_id, result)
        with runtime.db.session() as session:
            stored = registry.get_connection(session, connection_id)
            # Only a refused credential needs the client; any other failure is retried.
            refused = isinstance(result, CredentialRejected)
            assert stored.status == ("needs_reauth" if refused else "failing"), plan
            assert stored.last_error == refresh.safe_error(result)
            assert warehouse.connection_fact_count(session, connection_id) == 0

    counters = sandbox.counters
    assert counters["fault.429"] >= 2 and counters["fault.5xx"] >= 3
    assert counters["fault.timeout"] >= 1 and counters["fault.malformed"] >= 1
    with runtime.db.session() as session:
        facts = warehouse.tenant_facts(session, tenant, dt.date(2000, 1, 1), dt.date(2100, 1, 1))
    assert facts.height > 0
    runtime.close()


def test_a_connection_being_erased_in_a_batch_is_not_read_and_the_others_load(home, faulty_sandbox):
    """A connection being erased (its grant about to be revoked) is not read at all, not
    even by a run requested before the erasure began: no request, nothing staged, nothing
    written; the batch's others load. (The load still refuses an erasing connection, for
    an erasure that begins between a fetch and its load.)"""
    from writevue_pipelines.home import init_home
    from writevue_pipelines.models import Connection
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    init_home(Settings.from_env())
    runtime = Runtime(Settings.from_env())
    tenant, kept = add_stripe_connection(runtime, faulty_sandbox.url, "sk_test_batch_kept")
    _, erasing = add_stripe_connection(
        runtime, faulty_sandbox.url, "sk_test_batch_erasing", tenant_id=tenant
    )
    with runtime.db.session() as session:
        session.get(Connection, erasing).status = registry.ERASING

    outcomes = refresh.refresh_connections(runtime, [erasing, kept])

    assert list(outcomes) == [erasing, kept]
    assert outcomes[kept].error is None and outcomes[kept].loaded.facts > 0
    failed = outcomes[erasing]
    assert failed.fetched is None and failed.loaded is None  # never read
    assert isinstance(failed.error, refresh.NotRefreshed)
    assert not (runtime.settings.staging_dir / erasing).exists()
    with runtime.db.session() as session:
        assert warehouse.connection_fact_count(session, erasing) == 0
        assert warehouse.connection_fact_count(session, kept) == outcomes[kept].loaded.facts
    runtime.close()
