"""OAuth2 connections against the sandbox's authorisation server, over real HTTP.

The probe source below is a test connector: a source whose OAuth endpoints are the
sandbox's own and whose one endpoint answers who the bearer token belongs to. The
built-in OAuth sources (GitHub, GA4) have their own tests.

Run as a script (``python tests/test_oauth.py race ...``) this file is the worker of
the cross-process refresh race.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import polars as pl
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from support import (
    SandboxOAuthSource,
    fetch_to_staging,
    register_oauth_source,
    remember_secret,
)

from writevue_pipelines import cli, refresh, registry
from writevue_pipelines.errors import InvalidInput, SourceError
from writevue_pipelines.models import Credential, OAuthState
from writevue_pipelines.oauth import flow
from writevue_pipelines.oauth.endpoints import (
    client_credentials,
    endpoint_url,
    endpoints_for,
    oauth_client,
)
from writevue_pipelines.oauth.flow import (
    begin_authorization,
    complete_authorization,
    parse_callback,
)
from writevue_pipelines.oauth.revocation import revoke_grant
from writevue_pipelines.oauth.tokens import NEEDS_REAUTH, token_source
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import SOURCES
from writevue_pipelines.sources.auth import OAuthSpec
from writevue_pipelines.sources.base import FetchRequest, FetchResult
from writevue_pipelines.sources.http import WriteRefused, get_json, open_client
from writevue_pipelines.vault import Binding
from writevue_sandbox.base import SandboxHandler
from writevue_sandbox.oauth import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    account_for_access_token,
)

CALLBACK = "https://connect.writevue.test/oauth/callback"


class ProbeSource(SandboxOAuthSource):
    """Reads one thing: which sandbox account the connection's access token belongs to."""

    name = "oauth_probe"

    async def fetch(self, client: httpx.AsyncClient, request: FetchRequest) -> FetchResult:
        body, _ = await get_json(
            client, "/_probe/whoami", connection_id=request.connection.id, auth=request.auth
        )
        return FetchResult(pl.DataFrame({"account": [body["account"]]}), None, 1, 0.0)


class WhoAmI(SandboxHandler):
    def get(self) -> None:
        token = self.request.headers.get("Authorization", "").removeprefix("Bearer ")
        account = account_for_access_token(self.application.settings, token)
        if account is None:
            self.count("probe.unauthorised")
            self.write_json(401, {"message": "Bad credentials"})
            return
        self.count("probe.whoami")
        self.write_json(200, {"account": account})


@pytest.fixture
def probe(sandbox, monkeypatch):
    register_oauth_source(monkeypatch, ProbeSource())
    sandbox.app.add_handlers(r".*", [(r"/_probe/whoami", WhoAmI)])
    return sandbox


def _options(sandbox) -> dict[str, str]:
    return {"base_url": sandbox.url, "auth_base_url": sandbox.url}


def _tenant(runtime: Runtime, name: str = "Acme Ltd") -> str:
    with runtime.db.session() as session:
        return registry.add_tenant(session, runtime.keys, name, "ops@acme.test")


def _consent(url: str, login_hint: str | None = None) -> str:
    """What the client's browser does: open the URL, come back to the callback."""
    if login_hint:
        url += f"&login_hint={login_hint}"
    # The browser's own debug log would show the code in the Location header; that is
    # the client's browser talking, not WriteVue, so it is kept out of the leak check.
    browser_log = logging.getLogger("httpcore")
    level = browser_log.level
    browser_log.setLevel(logging.WARNING)
    try:
        response = httpx.get(url, follow_redirects=False)
    finally:
        browser_log.setLevel(level)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    code = parse_qs(urlsplit(location).query).get("code", [""])[0]
    remember_secret(code)
    return location


def _connect(runtime, sandbox, tenant_id: str, login_hint: str | None = None) -> str:
    url = begin_authorization(runtime, tenant_id, "oauth_probe", _options(sandbox), CALLBACK)
    return complete_authorization(runtime, *parse_callback(_consent(url, login_hint)))


def _stored(runtime, connection_id: str) -> dict[str, str]:
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        return registry.get_secrets(session, runtime.keys, connection)


def _tokens(runtime, connection_id: str):
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        secrets = registry.get_secrets(session, runtime.keys, connection)
    return token_source(runtime, connection, secrets)


def _expire(runtime, connection_id: str) -> None:
    """Make the stored access token look expired, as it will be an hour later."""
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        registry.put_secret(
            session, runtime.keys, connection.tenant_id, connection_id, "expires_at", past
        )


def _token_post(sandbox, **form) -> httpx.Response:
    form = {"client_id": SANDBOX_CLIENT_ID, "client_secret": SANDBOX_CLIENT_SECRET, **form}
    return httpx.post(f"{sandbox.url}/oauth/token", data=form)


def test_the_whole_authorisation_dance_and_a_rotating_refresh(runtime, probe, caplog):
    caplog.set_level(logging.DEBUG)
    sandbox = probe
    tenant_id = _tenant(runtime)
    url = begin_authorization(runtime, tenant_id, "oauth_probe", _options(sandbox), CALLBACK)
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{sandbox.url}/oauth/authorize?")
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["client_id"] == ["writevue-sandbox"] and query["scope"] == ["read:probe"]
    assert query["redirect_uri"] == [CALLBACK] and len(query["state"][0]) >= 43
    with runtime.db.session() as session:
        (pending,) = session.query(OAuthState).all()
        verifier = runtime.keys.decrypt_text(
            pending.code_verifier_ct,
            Binding(tenant_id, None, f"oauth.verifier.{pending.state_sha256[:16]}"),
        )
        assert pending.state_sha256 != query["state"][0]  # only its hash is kept
        assert verifier.encode() not in pending.code_verifier_ct

    location = _consent(url)
    assert location.startswith(CALLBACK + "?")
    connection_id = complete_authorization(runtime, *parse_callback(location))
    assert sandbox.counters["oauth.token.authorization_code"] == 1
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        assert (connection.auth_kind, connection.status) == ("oauth2", "active")
        assert connection.options == _options(sandbox)
        assert session.query(OAuthState).count() == 0
    first = _stored(runtime, connection_id)
    assert set(first) == {"access_token", "refresh_token", "expires_at"}
    expires = dt.datetime.fromisoformat(first["expires_at"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=59) < expires <= dt.timedelta(hours=1)

    token = asyncio.run(_tokens(runtime, connection_id).access_token())
    assert token == first["access_token"]
    assert account_for_access_token(sandbox.app.settings, token) == "demo-user"
    assert sandbox.counters["oauth.token.refresh_token"] == 0  # fresh: no refresh

    # A refresh run reads the source with the bearer token over HTTP.
    assert fetch_to_staging(runtime, connection_id).records == 1
    assert sandbox.counters["probe.whoami"] == 1

    _expire(runtime, connection_id)
    new_token = asyncio.run(_tokens(runtime, connection_id).access_token())
    assert sandbox.counters["oauth.token.refresh_token"] == 1
    second = _stored(runtime, connection_id)
    assert new_token == second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert account_for_access_token(sandbox.app.settings, new_token) == "demo-user"

    # At rest, every token is a vault ciphertext, nowhere in plaintext in the file.
    with runtime.db.session() as session:
        rows = session.query(Credential).filter_by(connection_id=connection_id).all()
    assert {row.field for row in rows} == {"access_token", "refresh_token", "expires_at"}
    db_bytes = b"".join(
        p.read_bytes() for p in runtime.settings.home.glob("warehouse.db*") if p.is_file()
    )
    for secret in (first["refresh_token"], second["refresh_token"], new_token, verifier):
        assert secret.encode() not in db_bytes
        assert all(secret.encode() not in row.ciphertext for row in rows)

    # Rotation is real: the old refresh token is dead at the provider.
    reused = _token_post(sandbox, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"

    secrets = [first["access_token"], first["refresh_token"], new_token, verifier]
    secrets += [second["refresh_token"], SANDBOX_CLIENT_SECRET]
    assert not [s for s in secrets if s in caplog.text]


def test_state_is_single_use(runtime, probe):
    tenant_id = _tenant(runtime)
    url = begin_authorization(runtime, tenant_id, "oauth_probe", _options(probe), CALLBACK)
    state, code = parse_callback(_consent(url))
    complete_authorization(runtime, state, code)
    with pytest.raises(InvalidInput, match="already completed or never started") as replay:
        complete_authorization(runtime, state, code)
    assert code not in str(replay.value) and state not in str(replay.value)
    assert probe.counters["oauth.token.authorization_code"] == 1  # the replay never left
    with runtime.db.session() as session:
        assert len(registry.list_connections(session, tenant_id=tenant_id)) == 1


def test_state_expires_after_ten_minutes(runtime, probe, monkeypatch):
    tenant_id = _tenant(runtime)
    url = begin_authorization(runtime, tenant_id, "oauth_probe", _options(probe), CALLBACK)
    with runtime.db.session() as session:
        (pending,) = session.query(OAuthState).all()
        assert pending.expires_at - pending.created_at == dt.timedelta(minutes=10)
    state, code = parse_callback(_consent(url))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10, seconds=1)
    monkeypatch.setattr(flow, "utcnow", lambda: later)
    with pytest.raises(InvalidInput, match="expired"):
        complete_authorization(runtime, state, code)
    assert probe.counters["oauth.token.authorization_code"] == 0
    with runtime.db.session() as session:
        assert session.query(OAuthState).count() == 0  # gone, so it cannot be retried
        assert registry.list_connections(session, tenant_id=tenant_id) == []


def test_the_sandbox_refuses_a_wrong_pkce_verifier_and_a_missing_challenge(probe):
    right = "verifier-" + "v" * 50
    challenge = create_s256_code_challenge(right)  # authlib's, not the sandbox's own
    params = {
        "response_type": "code",
        "client_id": "writevue-test",
        "redirect_uri": CALLBACK,
        "state": "s1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    location = httpx.get(f"{probe.url}/oauth/authorize", params=params).headers["location"]
    code = parse_qs(urlsplit(location).query)["code"][0]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    wrong = _token_post(probe, client_id="writevue-test", code_verifier="x" * 43, **form)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # The code was consumed by the failed attempt; a fresh one with the right verifier works.
    again = _token_post(probe, client_id="writevue-test", code_verifier=right, **form)
    assert again.status_code == 400
    location = httpx.get(f"{probe.url}/oauth/authorize", params=params).headers["location"]
    form["code"] = parse_qs(urlsplit(location).query)["code"][0]
    good = _token_post(probe, client_id="writevue-test", code_verifier=right, **form)
    assert good.status_code == 200 and good.json()["token_type"] == "Bearer"
    remember_secret(good.json()["access_token"])

    params.pop("code_challenge_method")
    plain = httpx.get(f"{probe.url}/oauth/authorize", params=params).headers["location"]
    assert parse_qs(urlsplit(plain).query)["error"] == ["invalid_request"]


def test_invalid_grant_needs_reauth_and_spares_other_connections(runtime, probe):
    tenant_id = _tenant(runtime)
    revoked = _connect(runtime, probe, tenant_id, login_hint="acme__f_revoked")
    healthy = _connect(runtime, probe, tenant_id)
    _expire(runtime, revoked)
    _expire(runtime, healthy)

    results = asyncio.run(refresh.fetch_connections(runtime, [revoked, healthy]))
    assert isinstance(results[revoked], SourceError)
    message = str(results[revoked])
    assert "no longer accepts WriteVue's authorisation" in message and revoked in message
    assert "reconnect" in message
    assert results[healthy].records == 1
    with runtime.db.session() as session:
        dead = registry.get_connection(session, revoked)
        alive = registry.get_connection(session, healthy)
    assert dead.status == NEEDS_REAUTH and dead.last_error == message
    assert alive.status == "active"
    calls = probe.counters["oauth.token.refresh_token"]
    assert calls == 2

    # Until the client reconnects, the provider is not asked again.
    again = asyncio.run(refresh.fetch_connections(runtime, [revoked]))
    assert isinstance(again[revoked], SourceError)
    assert probe.counters["oauth.token.refresh_token"] == calls

    # Reconnecting renews the same connection.
    url = begin_authorization(
        runtime, tenant_id, "oauth_probe", _options(probe), CALLBACK, reconnect=revoked
    )
    assert complete_authorization(runtime, *parse_callback(_consent(url))) == revoked
    with runtime.db.session() as session:
        assert registry.get_connection(session, revoked).status == "active"
    assert fetch_to_staging(runtime, revoked).records == 1


def test_a_token_dead_on_first_use_is_refreshed_once_after_the_401(runtime, probe):
    tenant_id = _tenant(runtime)
    connection_id = _connect(runtime, probe, tenant_id, login_hint="acme__f_expired")
    assert fetch_to_staging(runtime, connection_id).records == 1
    assert probe.counters["probe.unauthorised"] == 1
    assert probe.counters["oauth.token.refresh_token"] == 1
    assert probe.counters["probe.whoami"] == 1


def test_a_busy_token_endpoint_neither_burns_the_code_nor_half_stores(runtime, probe):
    tenant_id = _tenant(runtime)
    # 429: the provider did not act, so the same code is sent again and works.
    _connect(runtime, probe, tenant_id, login_hint="busy__f_429x1")
    assert probe.counters["oauth.token.authorization_code"] == 2
    # 503: it may have acted, so no retry; the state is spent and nothing is stored.
    url = begin_authorization(runtime, tenant_id, "oauth_probe", _options(probe), CALLBACK)
    state, code = parse_callback(_consent(url, login_hint="down__f_5xx1"))
    with pytest.raises(SourceError, match="HTTP 503") as failed:
        complete_authorization(runtime, state, code)
    assert code not in str(failed.value)
    with runtime.db.session() as session:
        assert len(registry.list_connections(session, tenant_id=tenant_id)) == 1
        assert session.query(OAuthState).count() == 0


def test_revoking_the_grant_at_the_provider(runtime, probe):
    tenant_id = _tenant(runtime)
    connection_id = _connect(runtime, probe, tenant_id)
    token = _stored(runtime, connection_id)["access_token"]
    assert account_for_access_token(probe.app.settings, token) == "demo-user"
    assert revoke_grant(runtime, connection_id) is True
    assert probe.counters["oauth.revocations"] == 1
    assert account_for_access_token(probe.app.settings, token) is None
    refresh_token = _stored(runtime, connection_id)["refresh_token"]
    dead = _token_post(probe, grant_type="refresh_token", refresh_token=refresh_token)
    assert dead.json()["error"] == "invalid_grant"


def test_only_the_token_and_revoke_endpoints_may_be_posted_to(probe):
    endpoints = endpoints_for("oauth_probe", _options(probe))

    async def attempt():
        async with oauth_client(endpoints, endpoints.token, httpx.Timeout(5.0)) as client:
            with pytest.raises(WriteRefused):
                await client.post("/v1/charges", data={"amount": "100"})
            with pytest.raises(WriteRefused):
                await client.put("/oauth/token", data={})
            ok = await client.post("/oauth/revoke", data={"token": "unknown"})
            assert ok.status_code == 401  # reached the sandbox: no client credentials
        async with open_client(base_url=probe.url) as plain:
            with pytest.raises(WriteRefused):
                await plain.post("/oauth/token", data={"grant_type": "refresh_token"})

    asyncio.run(attempt())
    assert probe.counters["stripe.write_attempts"] == 0
    assert probe.counters["oauth.token.refresh_token"] == 0


def test_endpoints_on_other_hosts_and_the_sandbox_stand_in():
    google = OAuthSpec(
        base_url="https://accounts.google.com",
        authorize_path="/o/oauth2/v2/auth",
        token_path="https://oauth2.googleapis.com/token",
        revoke_path="https://oauth2.googleapis.com/revoke",
    )
    assert endpoint_url(google, {}, google.authorize_path) == (
        "https://accounts.google.com/o/oauth2/v2/auth"
    )
    assert endpoint_url(google, {}, google.token_path) == "https://oauth2.googleapis.com/token"
    sandbox = {"auth_base_url": "http://127.0.0.1:8765/"}
    assert endpoint_url(google, sandbox, google.authorize_path) == (
        "http://127.0.0.1:8765/o/oauth2/v2/auth"
    )
    assert endpoint_url(google, sandbox, google.revoke_path) == "http://127.0.0.1:8765/revoke"
    assert endpoint_url(google, sandbox, None) is None


def test_client_credentials_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("WRITEVUE_OAUTH_GA4_CLIENT_ID", raising=False)
    monkeypatch.delenv("WRITEVUE_OAUTH_GA4_CLIENT_SECRET", raising=False)
    with pytest.raises(InvalidInput, match="WRITEVUE_OAUTH_GA4_CLIENT_ID"):
        client_credentials("ga4")
    monkeypatch.setenv("WRITEVUE_OAUTH_GA4_CLIENT_ID", "app-id")
    monkeypatch.setenv("WRITEVUE_OAUTH_GA4_CLIENT_SECRET", "app-secret-value")
    creds = client_credentials("ga4")
    assert creds.client_id == "app-id" and "app-secret-value" not in repr(creds)


def test_a_loopback_provider_gets_no_oauth_client_unless_one_is_configured(
    runtime, probe, monkeypatch
):
    monkeypatch.delenv("WRITEVUE_OAUTH_OAUTH_PROBE_CLIENT_ID")
    monkeypatch.delenv("WRITEVUE_OAUTH_OAUTH_PROBE_CLIENT_SECRET")
    tenant_id = _tenant(runtime)
    # The sandbox's token endpoint is on loopback; no client is made up for it.
    assert endpoints_for("oauth_probe", _options(probe)).token.startswith("http://127.0.0.1:")
    with pytest.raises(InvalidInput, match="WriteVue has no OAuth client for oauth_probe; set "):
        begin_authorization(runtime, tenant_id, "oauth_probe", _options(probe), CALLBACK)
    with runtime.db.session() as session:
        assert session.query(OAuthState).count() == 0


def test_bad_starts_are_refused_before_anything_is_stored(runtime, probe):
    tenant_id = _tenant(runtime)
    with pytest.raises(InvalidInput, match="not connected with OAuth2"):
        begin_authorization(runtime, tenant_id, "stripe", {}, CALLBACK)
    with pytest.raises(InvalidInput, match="redirect URI"):
        begin_authorization(runtime, tenant_id, "oauth_probe", _options(probe), "javascript:x")
    with pytest.raises(InvalidInput, match="auth_base_url"):
        begin_authorization(
            runtime, tenant_id, "oauth_probe", {"auth_base_url": "ftp://x"}, CALLBACK
        )
    with pytest.raises(InvalidInput, match="no option"):
        begin_authorization(runtime, tenant_id, "oauth_probe", {"colour": "red"}, CALLBACK)
    with pytest.raises(InvalidInput, match="declined"):
        parse_callback(f"{CALLBACK}?error=access_denied&state=abc")
    with runtime.db.session() as session:
        assert session.query(OAuthState).count() == 0


# -- the refresh race: two processes, one refresh -----------------------------------------


def _race_worker(connection_id: str, barrier: str, name: str) -> None:
    SOURCES[ProbeSource.name] = ProbeSource()
    runtime = Runtime.from_env()
    tokens = _tokens(runtime, connection_id)
    Path(barrier, f"{name}.ready").touch()
    deadline = time.monotonic() + 60
    while not Path(barrier, "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.002)
    token = asyncio.run(tokens.access_token())
    print(hashlib.sha256(token.encode()).hexdigest())


def test_two_processes_refreshing_at_once_make_one_refresh_call(any_runtime, probe, tmp_path):
    runtime = any_runtime
    tenant_id = _tenant(runtime)
    # The token endpoint takes 300 ms for this account, so the two refreshes overlap.
    connection_id = _connect(runtime, probe, tenant_id, login_hint="race__f_latency300")
    old = _stored(runtime, connection_id)
    _expire(runtime, connection_id)

    env = {**os.environ, "WRITEVUE_HOME": str(runtime.settings.home)}
    # The workers import this module, so they need the suite's import path.
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    env.pop("WRITEVUE_DATABASE_URL", None)
    if runtime.settings.database_url_override:
        env["WRITEVUE_DATABASE_URL"] = runtime.settings.database_url_override
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "race", connection_id, str(barrier), name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    deadline = time.monotonic() + 60
    while not all((barrier / f"{n}.ready").exists() for n in ("a", "b")):
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers), [
            w.stderr.read() for w in workers if w.poll() is not None
        ]
        time.sleep(0.01)
    (barrier / "go").touch()
    outputs = [w.communicate(timeout=60) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]

    assert probe.counters["oauth.token.refresh_token"] == 1
    assert probe.counters["oauth.refresh_reuse"] == 0
    new = _stored(runtime, connection_id)
    assert new["access_token"] != old["access_token"]
    assert new["refresh_token"] != old["refresh_token"]
    digest = hashlib.sha256(new["access_token"].encode()).hexdigest()
    assert [out.strip() for out, _ in outputs] == [digest, digest]
    assert account_for_access_token(probe.app.settings, new["access_token"]) == "race__f_latency300"


# -- the command line ----------------------------------------------------------------------


def _cli(monkeypatch, capsys, *args: str, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_authorize_then_complete_from_stdin(runtime, probe, monkeypatch, capsys):
    tenant_id = _tenant(runtime)
    code, out, err = _cli(
        monkeypatch,
        capsys,
        "connection",
        "authorize",
        tenant_id,
        "oauth_probe",
        "--option",
        f"base_url={probe.url}",
        "--option",
        f"auth_base_url={probe.url}",
        "--redirect-uri",
        CALLBACK,
    )
    assert code == 0, err
    url = out.strip().splitlines()[-1]
    location = _consent(url)
    code, out, err = _cli(monkeypatch, capsys, "connection", "complete", stdin=location + "\n")
    assert code == 0, err
    connection_id = out.strip().splitlines()[-1]
    assert _stored(runtime, connection_id)["access_token"]

    # Replaying the same callback: one line, non-zero, nothing new stored.
    code, out, err = _cli(monkeypatch, capsys, "connection", "complete", stdin=location)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "already completed" in err
    secret_code = parse_qs(urlsplit(location).query)["code"][0]
    assert secret_code not in err + out
    with runtime.db.session() as session:
        assert len(registry.list_connections(session, tenant_id=tenant_id)) == 1


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "no code and state"),
        (f"{CALLBACK}?error=access_denied&state=x", "declined"),
        ("code=abc&state=never-issued", "never started"),
    ],
)
def test_cli_complete_refuses_bad_callbacks(runtime, monkeypatch, capsys, stdin, message):
    code, out, err = _cli(monkeypatch, capsys, "connection", "complete", stdin=stdin)
    assert code != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    with runtime.db.session() as session:
        assert registry.list_connections(session) == []


def test_cli_add_points_oauth_sources_to_authorize(runtime, probe, monkeypatch, capsys):
    tenant_id = _tenant(runtime)
    code, _, err = _cli(
        monkeypatch, capsys, "connection", "add", tenant_id, "oauth_probe", stdin="key"
    )
    assert code != 0 and "writevue connection authorize" in err


if __name__ == "__main__" and sys.argv[1:2] == ["race"]:
    _race_worker(*sys.argv[2:5])
