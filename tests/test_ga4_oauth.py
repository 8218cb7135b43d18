"""Google OAuth for GA4, end to end, against the sandbox's Google-shaped endpoints.

The sandbox serves Google's own paths (``/o/oauth2/v2/auth`` with a consent page,
``/token``, ``/revoke``) with Google's behaviour: PKCE checked when a challenge was
sent, single-use codes, refresh answers without a new refresh token, ``invalid_grant``
for a revoked grant, revocation of either token ending the whole grant. The GA4 Data
API in the sandbox accepts only live access tokens issued there.

The first tests speak to those endpoints directly; the rest drive WriteVue through them:
an operator's invite, the client's consent in headless Chromium, refreshes that renew
the access token through ``/token``, erasure revoking the grant at ``/revoke``, and a
grant the user removed turning into "needs reconnect".
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import re
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from support import (
    add_tenant,
    connection_info,
    expire_access_token,
    remember_secret,
    run_cli,
    start_dashboard_server,
    use_sandbox_oauth_client,
)

from dashboard_server.data import load_header
from writevue_devtools.peers import CHROMIUM_ARGS
from writevue_pipelines import invites, refresh, registry, warehouse
from writevue_pipelines.errors import CredentialRejected
from writevue_pipelines.models import AuditEvent
from writevue_pipelines.oauth.revocation import revoke_grant
from writevue_pipelines.privacy import run_erasure
from writevue_sandbox import ga4_data, google_oauth
from writevue_sandbox.oauth import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET

SCOPE = "https://www.googleapis.com/auth/analytics.readonly"
CALLBACK = "https://dash.writevue.test/oauth/callback"
ACCOUNT = google_oauth.DEFAULT_ACCOUNT
PROPERTY = ga4_data.properties_for(ACCOUNT)[0]
QUERY = {
    "dateRanges": [{"startDate": "7daysAgo", "endDate": "today"}],
    "dimensions": [{"name": "date"}],
    "metrics": [{"name": "sessions"}],
}


# -- talking to the sandbox as a browser and a client would ---------------------------------


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _auth_url(base: str, challenge: str | None, **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": SANDBOX_CLIENT_ID,
        "redirect_uri": CALLBACK,
        "scope": SCOPE,
        "state": "st-123",
        "access_type": "offline",
        "prompt": "consent",
    }
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return f"{base}/o/oauth2/v2/auth?{urlencode({**params, **extra})}"


def _quietly(call):
    """The browser's own debug log shows codes in Location headers; keep it out."""
    chatty = logging.getLogger("httpcore")
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        return call()
    finally:
        chatty.setLevel(level)


def _consent(url: str, *, account: str | None = None, decision: str = "allow") -> httpx.Response:
    """Open the consent page, then press Allow (or Cancel) as the user: the 302 back."""
    page = _quietly(lambda: httpx.get(url, follow_redirects=False))
    assert page.status_code == 200, page.text
    assert "text/html" in page.headers["content-type"]
    consent = re.search(r'name="consent" value="([^"]+)"', page.text).group(1)
    form = {"consent": consent, "decision": decision}
    if account is not None:
        form["account"] = account
    action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)
    parts = urlsplit(url)
    answer = _quietly(lambda: httpx.post(f"{parts.scheme}://{parts.netloc}{action}", data=form))
    assert answer.status_code == 302, answer.text
    code = parse_qs(urlsplit(answer.headers["location"]).query).get("code", [""])[0]
    remember_secret(code)
    return answer


def _code(base: str, challenge: str | None, **consent) -> str:
    location = _consent(_auth_url(base, challenge), **consent).headers["location"]
    returned = parse_qs(urlsplit(location).query)
    assert returned["state"] == ["st-123"] and returned["scope"] == [SCOPE]
    return returned["code"][0]


def _token(base: str, **form: str) -> httpx.Response:
    body = {"client_id": SANDBOX_CLIENT_ID, "client_secret": SANDBOX_CLIENT_SECRET, **form}
    answer = _quietly(lambda: httpx.post(f"{base}/token", data=body))
    if answer.status_code == 200:
        for name in ("access_token", "refresh_token"):
            remember_secret(answer.json().get(name, ""))
    return answer


def _exchange(base: str, code: str, verifier: str | None) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    if verifier is not None:
        form["code_verifier"] = verifier
    return _token(base, **form)


def _report(base: str, access_token: str, property_id: str = PROPERTY) -> httpx.Response:
    return httpx.post(
        f"{base}/v1beta/properties/{property_id}:runReport",
        json=QUERY,
        headers={"Authorization": f"Bearer {access_token}"},
    )


def _revoke(base: str, token: str) -> httpx.Response:
    return _quietly(lambda: httpx.post(f"{base}/revoke", data={"token": token}))


# -- the sandbox speaks Google's OAuth2 --------------------------------------------------------


def test_google_consent_code_exchange_and_a_refresh_that_keeps_the_refresh_token(sandbox):
    verifier, challenge = _pkce()
    code = _code(sandbox.url, challenge)

    issued = _exchange(sandbox.url, code, verifier)

    assert issued.status_code == 200, issued.text
    assert issued.headers["cache-control"].startswith("no-cache, no-store")
    tokens = issued.json()
    assert tokens["token_type"] == "Bearer" and tokens["scope"] == SCOPE
    assert tokens["expires_in"] == 3599
    assert tokens["access_token"].startswith("ya29.") and tokens["refresh_token"].startswith("1//")
    assert _report(sandbox.url, tokens["access_token"]).status_code == 200

    renewed = _token(sandbox.url, grant_type="refresh_token", refresh_token=tokens["refresh_token"])

    assert renewed.status_code == 200, renewed.text
    body = renewed.json()
    assert "refresh_token" not in body  # Google keeps the refresh token it issued
    assert body["access_token"] != tokens["access_token"] and body["expires_in"] == 3599
    assert _report(sandbox.url, body["access_token"]).status_code == 200
    again = _token(sandbox.url, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert again.status_code == 200  # the same refresh token works again: no rotation
    assert sandbox.counters["google.token.refresh_token"] == 2


def test_without_offline_access_google_issues_no_refresh_token(sandbox):
    verifier, challenge = _pkce()
    location = _consent(_auth_url(sandbox.url, challenge, access_type="online"))
    code = parse_qs(urlsplit(location.headers["location"]).query)["code"][0]
    issued = _exchange(sandbox.url, code, verifier)
    assert issued.status_code == 200 and "refresh_token" not in issued.json()


def test_the_ga4_api_wants_an_analytics_scope_on_a_google_token(sandbox):
    verifier, challenge = _pkce()
    location = _consent(_auth_url(sandbox.url, challenge, scope="openid email"))
    code = parse_qs(urlsplit(location.headers["location"]).query)["code"][0]
    tokens = _exchange(sandbox.url, code, verifier).json()
    refused = _report(sandbox.url, tokens["access_token"])
    assert refused.status_code == 403
    assert refused.json()["error"]["status"] == "PERMISSION_DENIED"
    assert "insufficient authentication scopes" in refused.json()["error"]["message"]


def test_a_pkce_mismatch_and_a_reused_code_are_invalid_grant(sandbox):
    verifier, challenge = _pkce()
    code = _code(sandbox.url, challenge)

    wrong = _exchange(sandbox.url, code, _pkce()[0])
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_grant", "error_description": "Invalid code verifier."}
    # The code was spent by the failed attempt: the right verifier comes too late.
    late = _exchange(sandbox.url, code, verifier)
    assert late.status_code == 400 and late.json()["error"] == "invalid_grant"

    code = _code(sandbox.url, challenge)
    missing = _exchange(sandbox.url, code, None)
    assert missing.json() == {
        "error": "invalid_grant",
        "error_description": "Missing code verifier.",
    }

    code = _code(sandbox.url, challenge)
    assert _exchange(sandbox.url, code, verifier).status_code == 200
    reused = _exchange(sandbox.url, code, verifier)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"

    # No challenge at the start: a verifier at the end is refused, as Google does.
    plain_code = _code(sandbox.url, None)
    extra = _exchange(sandbox.url, plain_code, verifier)
    assert extra.json() == {
        "error": "invalid_grant",
        "error_description": "code_verifier or verifier is not needed.",
    }


def test_revoking_either_token_ends_the_grant_and_refresh_says_invalid_grant(sandbox):
    for which in ("refresh_token", "access_token"):
        verifier, challenge = _pkce()
        tokens = _exchange(sandbox.url, _code(sandbox.url, challenge), verifier).json()

        revoked = _revoke(sandbox.url, tokens[which])

        assert revoked.status_code == 200 and revoked.json() == {}
        assert _report(sandbox.url, tokens["access_token"]).status_code == 401
        refused = _token(
            sandbox.url, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
        )
        assert refused.status_code == 400
        assert refused.json() == {
            "error": "invalid_grant",
            "error_description": "Token has been expired or revoked.",
        }
        again = _revoke(sandbox.url, tokens["refresh_token"])
        assert again.status_code == 400 and again.json()["error"] == "invalid_token"
    assert [r["via"] for r in google_oauth.revocations(sandbox.app.settings)] == [
        "refresh_token",
        "access_token",
    ]


def test_the_consent_page_refuses_bad_requests_and_a_cancel_is_access_denied(sandbox):
    _, challenge = _pkce()
    unknown = httpx.get(_auth_url(sandbox.url, challenge, client_id="someone-else"))
    assert unknown.status_code == 401 and "invalid_client" in unknown.text
    no_scope = httpx.get(_auth_url(sandbox.url, challenge, scope=""))
    assert no_scope.status_code == 400 and "Missing required parameter: scope" in no_scope.text
    bad_redirect = httpx.get(_auth_url(sandbox.url, challenge, redirect_uri="javascript:x"))
    assert bad_redirect.status_code == 400 and "redirect_uri" in bad_redirect.text

    cancelled = _consent(_auth_url(sandbox.url, challenge), decision="cancel")
    returned = parse_qs(urlsplit(cancelled.headers["location"]).query)
    assert returned == {"error": ["access_denied"], "state": ["st-123"]}

    verifier, challenge = _pkce()
    code = _code(sandbox.url, challenge)
    wrong_secret = httpx.post(
        f"{sandbox.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": CALLBACK,
            "client_id": SANDBOX_CLIENT_ID,
            "client_secret": "not-the-secret",
        },
    )
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"


# -- GA4 connected through Google's OAuth, end to end -----------------------------------------


def _ga4_options(sandbox) -> dict[str, str]:
    return {"base_url": sandbox.url, "auth_base_url": sandbox.url, "property_id": PROPERTY}


def _stored(runtime, connection_id: str) -> dict[str, str]:
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        return registry.get_secrets(session, runtime.keys, connection)


def _refresh(runtime, connection_id: str) -> refresh.RefreshOutcome:
    outcome = refresh.refresh_connections(runtime, [connection_id])[connection_id]
    if outcome.error is not None:
        refresh.record_failure(runtime, connection_id, outcome.error)
    return outcome


def _sessions(runtime, tenant_id: str, start: dt.date) -> dict[dt.date, float]:
    with runtime.db.session() as session:
        facts = warehouse.tenant_facts(session, tenant_id, start, dt.date.today())
    return {day: v for m, _, day, v in facts.iter_rows() if m == "sessions"}


def _expected_sessions(start: dt.date) -> dict[dt.date, float]:
    days = ga4_data.report_days(PROPERTY, start, dt.date.today(), keep_empty=False)
    return {day: metrics["sessions"] for day, metrics in days}


def _consent_in_chromium(chromium_path: str, invite_url: str, sandbox_url: str) -> list[str]:
    """The client: the connect page, Google's consent page, and back; the callback URLs.

    Playwright's loop runs on this thread while it is open, so it is closed before the
    test goes on to refresh (which runs a loop of its own).
    """
    from playwright.sync_api import sync_playwright

    callbacks: list[str] = []
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        page = chromium.new_page()
        page.on(
            "request",
            lambda r: callbacks.append(r.url) if "/oauth/callback" in r.url else None,
        )
        try:
            page.goto(invite_url)
            page.get_by_role("button", name="Sign in with Google Analytics 4").click()
            page.get_by_text("wants to access your Google Account").wait_for(timeout=30_000)
            assert page.url.startswith(f"{sandbox_url}/o/oauth2/v2/auth?")
            assert "See and download your Google Analytics data" in page.content()
            page.get_by_role("button", name="Allow").click()
            page.get_by_text("Thank you").wait_for(timeout=30_000)
        finally:
            for url in callbacks:
                remember_secret(parse_qs(urlsplit(url).query).get("code", [""])[0])
            chromium.close()
    return callbacks


@pytest.mark.browser
def test_ga4_connect_in_chromium_refresh_token_renewal_and_revocation_at_erasure(
    runtime, home, sandbox, chromium_path, monkeypatch, capsys, tmp_path
):
    use_sandbox_oauth_client(monkeypatch, "ga4")
    server, base = start_dashboard_server(
        home,
        tmp_path / "serve.log",
        WRITEVUE_OAUTH_GA4_CLIENT_ID=SANDBOX_CLIENT_ID,
        WRITEVUE_OAUTH_GA4_CLIENT_SECRET=SANDBOX_CLIENT_SECRET,
    )
    try:
        monkeypatch.setenv("WRITEVUE_DASHBOARD_URL", base)
        tenant_id = add_tenant(runtime, "Site Ltd", "ops@site.test")
        # The operator invites the client to connect GA4, its options pointing at the sandbox.
        options = [f"--option=ga4.{k}={v}" for k, v in _ga4_options(sandbox).items()]
        code, out, err = run_cli(
            monkeypatch, capsys, "connection", "invite", tenant_id, "--source", "ga4", *options
        )
        assert code == 0, err
        invite_url = out.strip().splitlines()[-1]
        remember_secret(invite_url.rsplit("/", 1)[1])

        # The client: the connect page, Google's consent page, and back.
        callbacks = _consent_in_chromium(chromium_path, invite_url, sandbox.url)
        assert callbacks and callbacks[0].startswith(f"{base}/oauth/callback?")
    finally:
        server.stop()

    with runtime.db.session() as session:
        (connection,) = registry.list_connections(session, tenant_id=tenant_id)
        assert invites.resolve_invite(session, invite_url.rsplit("/", 1)[1]) is None
    assert (connection.source, connection.auth_kind, connection.status) == (
        "ga4",
        "oauth2",
        "active",
    )
    assert sandbox.counters["google.consent.allow"] == 1
    assert sandbox.counters["google.token.authorization_code"] == 1
    first = _stored(runtime, connection.id)
    assert first["refresh_token"].startswith("1//") and first["access_token"].startswith("ya29.")

    # A refresh reads GA4 with that access token and loads its facts.
    outcome = _refresh(runtime, connection.id)
    assert outcome.error is None and outcome.loaded is not None
    start = dt.date.fromisoformat(outcome.fetched.window_start)
    assert _sessions(runtime, tenant_id, start) == _expected_sessions(start)
    assert sandbox.counters["google.token.refresh_token"] == 0

    # An hour later the access token has expired, at Google and in WriteVue's records:
    # the next refresh renews it through /token and keeps Google's refresh token.
    assert google_oauth.expire_access_tokens(sandbox.app.settings, ACCOUNT) >= 1
    expire_access_token(runtime, connection.id)
    assert _report(sandbox.url, first["access_token"]).status_code == 401
    assert _refresh(runtime, connection.id).error is None
    assert sandbox.counters["google.token.refresh_token"] == 1
    second = _stored(runtime, connection.id)
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] == first["refresh_token"]

    # Expired at Google while WriteVue still thinks it fresh: the 401 renews it too.
    google_oauth.expire_access_tokens(sandbox.app.settings, ACCOUNT)
    assert _refresh(runtime, connection.id).error is None
    assert sandbox.counters["google.token.refresh_token"] == 2
    third = _stored(runtime, connection.id)
    assert third["access_token"] != second["access_token"]
    assert _report(sandbox.url, third["access_token"]).status_code == 200

    # Erasure revokes the grant at Google's /revoke.
    report = run_erasure(runtime, tenant_id)

    assert report.ok
    (revocation,) = google_oauth.revocations(sandbox.app.settings)
    assert revocation["account"] == ACCOUNT and revocation["via"] == "refresh_token"
    assert _report(sandbox.url, third["access_token"]).status_code == 401
    dead = _token(sandbox.url, grant_type="refresh_token", refresh_token=third["refresh_token"])
    assert dead.json()["error"] == "invalid_grant"


def test_a_grant_the_user_removed_at_google_needs_reconnect(runtime, sandbox, monkeypatch):
    use_sandbox_oauth_client(monkeypatch, "ga4")
    tenant_id = add_tenant(runtime, "Site Ltd", "ops@site.test")
    with runtime.db.session() as session:
        _, token = invites.create_invite(
            session, tenant_id, sources=["ga4"], options={"ga4": _ga4_options(sandbox)}
        )
    remember_secret(token)
    authorize = invites.start_oauth(runtime, token, "ga4", CALLBACK)
    query = parse_qs(urlsplit(authorize).query)
    assert query["access_type"] == ["offline"] and query["prompt"] == ["consent"]
    assert query["scope"] == [SCOPE] and query["code_challenge_method"] == ["S256"]
    returned = parse_qs(urlsplit(_consent(authorize).headers["location"]).query)
    connection_id = invites.finish_oauth(runtime, returned["state"][0], returned["code"][0])
    assert _refresh(runtime, connection_id).error is None

    # The user removes WriteVue's access in their Google Account; an hour passes.
    assert google_oauth.remove_access(sandbox.app.settings, ACCOUNT) == 1
    expire_access_token(runtime, connection_id)
    outcome = _refresh(runtime, connection_id)

    assert isinstance(outcome.error, CredentialRejected)
    assert sandbox.counters["google.token.invalid_grant"] == 1
    stored = connection_info(runtime, connection_id)
    assert stored.status == "needs_reauth"
    assert stored.last_error.startswith("needs reconnect: ")
    assert "no longer accepts WriteVue's authorisation" in stored.last_error
    assert "ask the client to reconnect" in stored.last_error
    (status,) = load_header(runtime, tenant_id).sources
    assert status.state == "needs_reconnect" and "Google Analytics 4" in status.advice
    with runtime.db.session() as session:
        flagged = session.query(AuditEvent).filter_by(action="connection.needs_reauth").all()
        assert [event.details["connection_id"] for event in flagged] == [connection_id]
    # Refreshing again asks Google nothing more.
    _refresh(runtime, connection_id)
    assert sandbox.counters["google.token.refresh_token"] == 1

    # Google answers 400 invalid_token for a grant already gone: that is not a failure.
    assert revoke_grant(runtime, connection_id) is True
    assert sandbox.counters["google.revoke"] == 1
    assert run_erasure(runtime, tenant_id).ok
