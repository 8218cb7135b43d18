"""A connect invite is one-time: it makes at most one connection, and only with a working key.

Each test runs on a SQLite file and on the PostgreSQL server (``any_runtime``), with the
sandbox provider over real HTTP; the concurrent ones race real threads through the real
transactions, so the interleavings are whatever the databases allow.
"""

from __future__ import annotations

import threading
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from support import (
    SandboxOAuthSource,
    add_tenant,
    new_stripe_key,
    register_oauth_source,
    remember_secret,
)

from writevue_pipelines import invites
from writevue_pipelines.errors import InvalidInput, SourceError
from writevue_pipelines.models import AuditEvent, ConnectInvite, Connection, Credential

CALLBACK = "https://dash.writevue.test/oauth/callback"


class InviteRaceProbe(SandboxOAuthSource):
    name = "invite_race_probe"


@pytest.fixture
def probe(monkeypatch, sandbox):
    register_oauth_source(monkeypatch, InviteRaceProbe())
    return sandbox


def _invite(runtime, sandbox, tenant_id: str) -> str:
    options = {
        InviteRaceProbe.name: {"base_url": sandbox.url, "auth_base_url": sandbox.url},
        "stripe": {"base_url": sandbox.url},
    }
    with runtime.db.session() as session:
        _, token = invites.create_invite(
            session, tenant_id, sources=[InviteRaceProbe.name, "stripe"], options=options
        )
    return remember_secret(token)


def _consented(runtime, token: str) -> tuple[str, str]:
    """(state, code): one OAuth2 flow started from the invite, the client's consent given."""
    authorize = invites.start_oauth(runtime, token, InviteRaceProbe.name, CALLBACK)
    consent = httpx.get(authorize, follow_redirects=False)
    assert consent.status_code == 302
    returned = parse_qs(urlsplit(consent.headers["location"]).query)
    return returned["state"][0], remember_secret(returned["code"][0])


def _race(calls) -> tuple[list, list[BaseException]]:
    """Run the calls at once on threads; (results, errors)."""
    barrier = threading.Barrier(len(calls))
    results, errors, lock = [], [], threading.Lock()

    def one(call):
        barrier.wait()
        try:
            value = call()
        except BaseException as exc:  # collected, and asserted on by the test
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=one, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results, errors


def _connections(runtime, tenant_id: str) -> list[Connection]:
    with runtime.db.session() as session:
        return session.query(Connection).filter_by(tenant_id=tenant_id).all()


def _invite_row(runtime, token: str) -> ConnectInvite:
    with runtime.db.session() as session:
        return session.query(ConnectInvite).filter_by(token_sha256=invites.hash_token(token)).one()


def test_concurrent_oauth_completions_from_one_invite_make_one_connection(any_runtime, probe):
    tenant_id = add_tenant(any_runtime)
    token = _invite(any_runtime, probe, tenant_id)
    flows = [_consented(any_runtime, token) for _ in range(4)]  # four tabs, say

    results, errors = _race(
        [lambda s=state, c=code: invites.finish_oauth(any_runtime, s, c) for state, code in flows]
    )

    assert len(results) == 1, errors
    assert len(errors) == 3 and all(isinstance(e, InvalidInput) for e in errors), errors
    assert all("already used" in str(e) for e in errors)
    (connection,) = _connections(any_runtime, tenant_id)
    assert connection.id == results[0]
    invite = _invite_row(any_runtime, token)
    assert invite.spent_at is not None and invite.connection_id == connection.id
    with any_runtime.db.session() as session:
        assert invites.resolve_invite(session, token) is None
        # The losers stored no tokens: every credential belongs to the one connection.
        assert {c.connection_id for c in session.query(Credential)} == {connection.id}
        added = session.query(AuditEvent).filter_by(action="connection.added_by_invite").all()
        assert [a.details["connection_id"] for a in added] == [connection.id]


def test_a_flow_completed_after_an_api_key_spent_the_invite_creates_nothing(any_runtime, probe):
    tenant_id = add_tenant(any_runtime)
    token = _invite(any_runtime, probe, tenant_id)
    state, code = _consented(any_runtime, token)

    key = remember_secret(new_stripe_key())
    by_key = invites.connect_with_api_key(any_runtime, token, "stripe", key)
    with pytest.raises(InvalidInput, match="already used"):
        invites.finish_oauth(any_runtime, state, code)

    assert [c.id for c in _connections(any_runtime, tenant_id)] == [by_key]
    assert _invite_row(any_runtime, token).connection_id == by_key


def test_concurrent_api_keys_on_one_invite_make_one_connection(any_runtime, probe):
    tenant_id = add_tenant(any_runtime)
    token = _invite(any_runtime, probe, tenant_id)
    keys = [remember_secret(new_stripe_key()) for _ in range(4)]

    results, errors = _race(
        [
            lambda k=key: invites.connect_with_api_key(any_runtime, token, "stripe", k)
            for key in keys
        ]
    )

    assert len(results) == 1, errors
    assert len(errors) == 3 and all(isinstance(e, InvalidInput) for e in errors), errors
    assert [c.id for c in _connections(any_runtime, tenant_id)] == results


def test_a_refused_key_saves_nothing_and_the_invite_still_works(any_runtime, probe):
    tenant_id = add_tenant(any_runtime)
    token = _invite(any_runtime, probe, tenant_id)

    with pytest.raises(InvalidInput) as refused:
        invites.connect_with_api_key(any_runtime, token, "stripe", "not-a-stripe-key")

    assert "Stripe refused that key" in str(refused.value)
    assert "not-a-stripe-key" not in str(refused.value)
    assert _connections(any_runtime, tenant_id) == []
    with any_runtime.db.session() as session:
        assert invites.resolve_invite(session, token) is not None
    # The client pastes the right key next, on the same invite.
    good = invites.connect_with_api_key(any_runtime, token, "stripe", new_stripe_key())
    assert [c.id for c in _connections(any_runtime, tenant_id)] == [good]


def test_an_unreachable_source_is_not_a_refused_key(any_runtime):
    tenant_id = add_tenant(any_runtime)
    with any_runtime.db.session() as session:
        _, token = invites.create_invite(
            session,
            tenant_id,
            sources=["stripe"],
            options={"stripe": {"base_url": "http://127.0.0.1:9"}},  # nothing listens
        )

    with pytest.raises(SourceError) as failed:
        invites.connect_with_api_key(any_runtime, token, "stripe", new_stripe_key())

    assert "could not reach Stripe" in str(failed.value)
    assert "refused" not in str(failed.value)
    assert _connections(any_runtime, tenant_id) == []
    with any_runtime.db.session() as session:
        assert invites.resolve_invite(session, token) is not None


def test_a_failed_code_exchange_leaves_the_invite_usable(any_runtime, probe):
    tenant_id = add_tenant(any_runtime)
    token = _invite(any_runtime, probe, tenant_id)
    state, _code = _consented(any_runtime, token)

    with pytest.raises(SourceError):
        invites.finish_oauth(any_runtime, state, "not-the-code-the-provider-sent")

    assert _connections(any_runtime, tenant_id) == []
    state, code = _consented(any_runtime, token)
    connection_id = invites.finish_oauth(any_runtime, state, code)
    assert _invite_row(any_runtime, token).connection_id == connection_id
