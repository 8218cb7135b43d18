"""A credential the source refuses, or that cannot be decrypted, needs reconnecting.

Retrying changes nothing, so the connection is marked ``needs_reauth`` (the status an
OAuth2 connection gets when its grant dies): the client's dashboard says to reconnect,
and the operator sees it in `writevue connection list` (and in Dagster, see
``test_orchestration``). Real sandbox over HTTP, real SQLite file.
"""

from __future__ import annotations

import json

from support import (
    add_stripe_connection,
    connection_info,
    new_stripe_key,
    remember_secret,
    run_cli,
)

from dashboard_server.data import load_header
from writevue_pipelines import refresh, registry
from writevue_pipelines.errors import CredentialRejected
from writevue_pipelines.models import AuditEvent, Credential


def _refresh(runtime, *connection_ids: str) -> dict[str, refresh.RefreshOutcome]:
    outcomes = refresh.refresh_connections(runtime, list(connection_ids))
    for connection_id, outcome in outcomes.items():
        if outcome.error is not None:
            refresh.record_failure(runtime, connection_id, outcome.error)
    return outcomes


def test_a_refused_api_key_asks_the_client_to_reconnect(runtime, sandbox, monkeypatch, capsys):
    key = remember_secret("not-a-stripe-key-" + new_stripe_key()[-8:])
    tenant_id, connection_id = add_stripe_connection(runtime, sandbox.url, key)

    outcome = _refresh(runtime, connection_id)[connection_id]

    assert isinstance(outcome.error, CredentialRejected)
    stored = connection_info(runtime, connection_id)
    assert stored.status == "needs_reauth"
    assert stored.last_error.startswith("needs reconnect: ") and key not in stored.last_error
    (status,) = load_header(runtime, tenant_id).sources
    assert status.state == "needs_reconnect"
    assert "Reconnect Stripe" in status.advice and "connect link" in status.advice
    assert "No action needed" not in status.advice
    code, out, _ = run_cli(monkeypatch, capsys, "connection", "list")
    assert code == 0 and "needs reconnect" in out and connection_id in out
    code, out, _ = run_cli(monkeypatch, capsys, "connection", "list", "--json")
    (listed,) = json.loads(out)
    assert listed["status"] == "needs_reauth" and listed["last_error"] == stored.last_error
    with runtime.db.session() as session:
        flagged = session.query(AuditEvent).filter_by(action="connection.needs_reauth").all()
        assert [event.details["connection_id"] for event in flagged] == [connection_id]

    # Refused again: still one audit record, still needs reconnect.
    _refresh(runtime, connection_id)
    assert connection_info(runtime, connection_id).status == "needs_reauth"
    with runtime.db.session() as session:
        assert session.query(AuditEvent).filter_by(action="connection.needs_reauth").count() == 1

    # The operator re-enters the key: a wrong one is refused and changes nothing.
    code, _, err = run_cli(
        monkeypatch, capsys, "connection", "rekey", connection_id, stdin="still-wrong-key"
    )
    assert code != 0 and "Stripe refused the key (HTTP 401); nothing was saved" in err
    assert connection_info(runtime, connection_id).status == "needs_reauth"
    new_key = remember_secret(new_stripe_key())
    code, _, err = run_cli(monkeypatch, capsys, "connection", "rekey", connection_id, stdin=new_key)
    assert code == 0, err
    assert connection_info(runtime, connection_id).status == "active"
    assert _refresh(runtime, connection_id)[connection_id].loaded is not None
    (status,) = load_header(runtime, tenant_id).sources
    assert status.state == "fresh"


def test_a_credential_that_fails_to_decrypt_names_its_connection_and_what_to_do(
    runtime, sandbox, monkeypatch, capsys
):
    tenant_id, healthy = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    _, copied = add_stripe_connection(runtime, sandbox.url, new_stripe_key(), tenant_id=tenant_id)
    with runtime.db.session() as session:
        source = session.get(Credential, (healthy, "api_key"))
        target = session.get(Credential, (copied, "api_key"))
        target.ciphertext = source.ciphertext  # a blob copied from another row
        blob = source.ciphertext

    outcomes = _refresh(runtime, healthy, copied)

    assert outcomes[healthy].loaded is not None  # the other connection is refreshed
    error = outcomes[copied].error
    assert isinstance(error, CredentialRejected)
    message = refresh.safe_error(error)
    assert message.startswith(f"needs reconnect: connection {copied}: ")
    assert "could not be decrypted" in message and "re-enter it" in message
    assert "VaultError" not in message and "see the run's logs" not in message
    assert blob.hex()[:16] not in message
    assert f"`writevue connection rekey {copied}`" in message
    stored = connection_info(runtime, copied)
    assert stored.status == "needs_reauth" and stored.last_error == message
    assert connection_info(runtime, healthy).status == "active"
    # Doing what it says mends it.
    new_key = remember_secret(new_stripe_key())
    code, _, err = run_cli(monkeypatch, capsys, "connection", "rekey", copied, stdin=new_key)
    assert code == 0, err
    assert _refresh(runtime, copied)[copied].loaded is not None


def test_connection_test_says_which_credential_cannot_be_decrypted(runtime, sandbox):
    tenant_id, first = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    _, second = add_stripe_connection(runtime, sandbox.url, new_stripe_key(), tenant_id=tenant_id)
    with runtime.db.session() as session:
        session.get(Credential, (second, "api_key")).ciphertext = session.get(
            Credential, (first, "api_key")
        ).ciphertext

    try:
        refresh.check_connection(runtime, second)
    except CredentialRejected as exc:
        assert f"connection {second}" in str(exc) and "could not be decrypted" in str(exc)
    else:
        raise AssertionError("a credential copied from another row decrypted")
    with runtime.db.session() as session:
        assert registry.get_connection(session, second).status == "active"  # a test changes nothing
