"""The GitHub source against the GitHub-shaped sandbox over real HTTP on loopback.

Expected values come from the sandbox's own data module, computed here independently
of the connector: what a client would count by reading GitHub's answers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from support import (
    add_connection,
    add_tenant,
    fetch_to_staging,
    remember_secret,
    use_sandbox_oauth_client,
)

from writevue_pipelines import oauth, refresh, registry, warehouse
from writevue_pipelines.errors import InvalidInput, SourceError
from writevue_pipelines.registry import ConnectionInfo
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import FetchRequest, get_source
from writevue_pipelines.sources.http import RetryPolicy, open_client
from writevue_sandbox import github_data

OWNER = "acme-org"
CONNECTION = "33333333-3333-3333-3333-333333333333"
CALLBACK = "http://127.0.0.1:5006/connect/callback"


def _token(plan: str = "") -> str:
    token = remember_secret(f"ghp_{uuid.uuid4().hex}")
    return f"{token}__f_{plan}" if plan else token


def _connection(url: str, owner: str = OWNER, **options) -> ConnectionInfo:
    return ConnectionInfo(
        id=CONNECTION,
        tenant_id="t",
        source="github",
        auth_kind="api_key",
        options={"base_url": url, "owner": owner, **options},
        status="active",
        last_error=None,
        last_refreshed_at=None,
    )


async def _fetch(connection: ConnectionInfo, token: str, start: dt.date):
    source = get_source("github")
    retry = RetryPolicy(base_delay_s=0.001, max_delay_s=0.01)
    async with open_client(
        base_url=connection.options["base_url"], retry=retry, provider=uuid.uuid4().hex
    ) as client:
        auth = source.build_auth(connection, {"api_key": token})
        return await source.fetch(client, FetchRequest(connection, auth, start, None))


def _facts(records) -> dict[tuple[str, str, dt.date], float]:
    facts = get_source("github").aggregate(records)
    return {(m, d, day): v for m, d, day, v in facts.iter_rows()}


def _day(stamp: str) -> dt.date:
    return dt.date.fromisoformat(stamp[:10])


def expected_facts(account: str, owner: str, start: dt.date, now: int) -> dict:
    """What GitHub's answers say, counted per repository and UTC day from ``start`` on."""
    since = dt.datetime.combine(start, dt.time(), dt.UTC)
    since_s = int(since.timestamp())
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    counts: Counter = Counter()
    for repo in github_data.repositories(account, owner):
        name, full = repo["name"], repo["full_name"]
        view = github_data.repository_view(account, owner, repo, now)
        counts[("stars", full, today)] = view["stargazers_count"]
        counts[("forks", full, today)] = view["forks_count"]
        counts[("open_issues", full, today)] = view["open_issues_count"]
        for pull in github_data.all_pulls(account, owner, name, now):
            if _day(pull["created_at"]) >= start:
                counts[("pull_requests_opened", full, _day(pull["created_at"]))] += 1
            if pull["merged_at"] and _day(pull["merged_at"]) >= start:
                counts[("pull_requests_merged", full, _day(pull["merged_at"]))] += 1
        for commit in github_data.list_commits(account, owner, name, now=now, since=since_s):
            counts[("commits", full, _day(commit["commit"]["committer"]["date"]))] += 1
    return {key: float(value) for key, value in counts.items()}


def _add_connection(runtime: Runtime, url: str, token: str, tenant_id: str | None = None, **opts):
    options = get_source("github").validate_options({"base_url": url, "owner": OWNER, **opts})
    return add_connection(
        runtime,
        "github",
        "api_key",
        options,
        {"api_key": token},
        tenant_id=tenant_id,
        name="Octo Ltd",
        email="ops@octo.test",
    )


# -- the sandbox speaks GitHub ---------------------------------------------------------------


def test_sandbox_pages_with_link_headers_and_counts_the_rate_limit(sandbox):
    token = _token()
    headers = {"Authorization": f"token {token}", "Accept": "application/vnd.github+json"}
    first = httpx.get(f"{sandbox.url}/users/{OWNER}/repos?per_page=2", headers=headers)
    assert first.status_code == 200 and len(first.json()) == 2
    assert first.headers["x-ratelimit-limit"] == "5000"
    assert first.headers["x-ratelimit-remaining"] == "4999"
    assert int(first.headers["x-ratelimit-reset"]) > time.time()
    assert first.headers["x-ratelimit-resource"] == "core"
    nxt = first.links["next"]["url"]
    assert parse_qs(urlsplit(nxt).query) == {"per_page": ["2"], "page": ["2"]}
    second = httpx.get(nxt, headers=headers)
    assert second.headers["x-ratelimit-remaining"] == "4998"
    assert not {r["id"] for r in first.json()} & {r["id"] for r in second.json()}
    assert "prev" in second.links
    bad = httpx.get(f"{sandbox.url}/users/{OWNER}", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"
    user_as_org = httpx.get(f"{sandbox.url}/orgs/alice/repos", headers=headers)
    assert user_as_org.status_code == 404


# -- fetching and counting -----------------------------------------------------------------------


def test_fetch_pages_through_everything_and_every_metric_matches_github(sandbox):
    token = _token()
    start = dt.date.today() - dt.timedelta(days=14)
    result = asyncio.run(_fetch(_connection(sandbox.url), token, start))
    now = int(time.time())
    expected = expected_facts(github_data.account_for_token(token), OWNER, start, now)
    assert _facts(result.records) == expected
    busy = github_data.repositories(github_data.account_for_token(token), OWNER)[0]
    assert (
        sum(v for (m, d, _), v in expected.items() if d == busy["full_name"] and m == "commits")
        > 100
    )
    # More than one page of pull requests and of commits for the busy repository.
    repos = len(github_data.repositories(github_data.account_for_token(token), OWNER))
    assert sandbox.counters["github.pulls"] > repos
    assert sandbox.counters["github.commits"] > repos
    assert result.requests == sum(
        sandbox.counters[f"github.{kind}"] for kind in ("users", "repos", "pulls", "commits")
    )
    newest = max(
        dt.datetime.fromtimestamp(at, dt.UTC)
        for metric, at in zip(result.records["metric"], result.records["at"], strict=True)
        if metric in ("commits", "pull_requests_opened", "pull_requests_merged")
    )
    assert result.next_cursor == newest.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_user_and_an_organisation_are_both_read(sandbox):
    token = _token()
    account = github_data.account_for_token(token)
    start = dt.date.today() - dt.timedelta(days=2)
    for owner, owner_type in (("alice", "auto"), ("octo-labs", "auto"), ("octo-labs", "org")):
        connection = _connection(sandbox.url, owner, owner_type=owner_type)
        result = asyncio.run(_fetch(connection, token, start))
        repos = {r for r in result.records["repo"]}
        assert repos == {r["full_name"] for r in github_data.repositories(account, owner)}
    with pytest.raises(SourceError, match="answered HTTP 404"):
        asyncio.run(_fetch(_connection(sandbox.url, "alice", owner_type="org"), token, start))
    with pytest.raises(SourceError, match="GitHub has no user or organisation 'missing-owner'"):
        asyncio.run(_fetch(_connection(sandbox.url, "missing-owner"), token, start))


def test_options_need_an_owner_login():
    source = get_source("github")
    with pytest.raises(InvalidInput, match="owner=LOGIN"):
        source.validate_options({})
    with pytest.raises(InvalidInput, match="owner=LOGIN"):
        source.validate_options({"owner": "acme/../x"})
    with pytest.raises(InvalidInput, match="owner_type"):
        source.validate_options({"owner": "acme", "owner_type": "team"})
    assert source.validate_options({"owner": "acme"})["owner_type"] == "auto"
    assert source.default_base_url == "https://api.github.com"


def test_refresh_is_incremental_from_the_stored_cursor(runtime, sandbox):
    token = _token()
    _, connection_id = _add_connection(runtime, sandbox.url, token)
    first = fetch_to_staging(runtime, connection_id)
    history = dt.date.today() - dt.timedelta(days=runtime.settings.history_days)
    assert first.window_start == history.isoformat()
    refresh.load_connection(runtime, connection_id)
    with runtime.db.session() as session:
        cursor = registry.get_cursor(session, connection_id, "activity")
        stored = {
            (m, d, day): v
            for m, d, day, v in warehouse.tenant_facts(
                session,
                registry.get_connection(session, connection_id).tenant_id,
                history,
                dt.date.today(),
            ).iter_rows()
        }
    assert cursor == first.next_cursor
    account = github_data.account_for_token(token)
    assert stored == expected_facts(account, OWNER, history, int(time.time()))

    second = fetch_to_staging(runtime, connection_id)
    lookback = dt.timedelta(days=runtime.settings.lookback_days)
    assert second.window_start == (dt.date.fromisoformat(cursor[:10]) - lookback).isoformat()
    assert second.requests < first.requests and second.records < first.records


# -- failures stay with their connection ----------------------------------------------------------


def test_a_bad_token_is_a_clean_error_for_that_connection_only(runtime, sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    good_token = _token()
    bad_token = remember_secret(f"wrong_prefix_{uuid.uuid4().hex}")
    tenant, good = _add_connection(runtime, sandbox.url, good_token, owner_type="org")
    _, bad = _add_connection(runtime, sandbox.url, bad_token, tenant)
    results = asyncio.run(refresh.fetch_connections(runtime, [good, bad]))
    assert not isinstance(results[good], Exception)
    error = results[bad]
    assert isinstance(error, SourceError) and error.connection_id == bad
    assert str(error) == (
        f"connection {bad}: /users/acme-org refused the credentials (HTTP 401); "
        "reconnect the source"
    )
    assert sandbox.counters["github.unauthorised"] == 1
    for secret in (good_token, bad_token):
        assert secret not in str(error) and secret not in caplog.text


def test_drift_is_tolerated_and_a_missing_field_fails_only_its_connection(runtime, sandbox):
    token = _token()
    start = dt.date.today() - dt.timedelta(days=5)
    clean = asyncio.run(_fetch(_connection(sandbox.url), token, start))
    # Same account (the fault plan does not change it): unknown fields, numeric strings,
    # null authors and null author dates must give exactly the same facts.
    drifted = asyncio.run(_fetch(_connection(sandbox.url), f"{token}__f_drift", start))
    assert _facts(drifted.records) == _facts(clean.records)

    tenant, fine = _add_connection(runtime, sandbox.url, _token())
    _, broken = _add_connection(runtime, sandbox.url, _token("missing"), tenant)
    results = asyncio.run(refresh.fetch_connections(runtime, [fine, broken]))
    assert not isinstance(results[fine], Exception)
    assert isinstance(results[broken], SourceError) and results[broken].connection_id == broken
    assert "lacks the required field 'created_at'" in str(results[broken])


def test_a_spent_rate_limit_pauses_the_fetch_instead_of_failing_it(sandbox):
    token = _token()
    start = dt.date.today() - dt.timedelta(days=1)
    unlimited = asyncio.run(_fetch(_connection(sandbox.url), token, start))
    budget = unlimited.requests - 3  # the fetch runs out of budget before it is done
    started = time.perf_counter()
    limited = asyncio.run(
        _fetch(_connection(sandbox.url), f"{token}__f_limit{budget},window1", start)
    )
    elapsed = time.perf_counter() - started
    assert _facts(limited.records) == _facts(unlimited.records)
    assert limited.requests >= unlimited.requests > budget
    assert elapsed >= 0.5  # it waited for the reset


def test_an_oauth_grant_reads_github(runtime, sandbox, monkeypatch):
    use_sandbox_oauth_client(monkeypatch, "github")
    tenant = add_tenant(runtime, "Octo Ltd", "ops@octo.test")
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url, "owner": OWNER}
    url = oauth.begin_authorization(runtime, tenant, "github", options, CALLBACK)
    assert urlsplit(url).path == "/login/oauth/authorize"  # GitHub's own path
    consent = httpx.get(url + "&login_hint=octo-user", follow_redirects=False)
    assert consent.status_code == 302
    connection_id = oauth.complete_authorization(
        runtime, *oauth.parse_callback(consent.headers["location"])
    )
    results = asyncio.run(refresh.fetch_connections(runtime, [connection_id]))
    summary = results[connection_id]
    assert not isinstance(summary, Exception), summary
    refresh.load_connection(runtime, connection_id)
    start = dt.date.fromisoformat(summary.window_start)
    with runtime.db.session() as session:
        stored = {
            (m, d, day): v
            for m, d, day, v in warehouse.tenant_facts(
                session, tenant, start, dt.date.today()
            ).iter_rows()
        }
    assert stored == expected_facts("octo-user", OWNER, start, int(time.time()))

    # Erasure ends the grant at GitHub (DELETE /applications/{client_id}/grant).
    from writevue_sandbox.oauth import account_for_access_token

    with runtime.db.session() as session:
        secrets = registry.get_secrets(
            session, runtime.keys, registry.get_connection(session, connection_id)
        )
    assert account_for_access_token(sandbox.app.settings, secrets["access_token"]) == "octo-user"
    assert oauth.revoke_grant(runtime, connection_id) is True
    assert sandbox.counters["oauth.revocations"] == 1
    assert account_for_access_token(sandbox.app.settings, secrets["access_token"]) is None


def test_a_next_link_to_another_host_is_not_followed(sandbox):
    from writevue_sandbox.base import SandboxHandler

    class ForeignLink(SandboxHandler):
        def get(self, owner: str) -> None:
            self.count("foreign.first_page")
            other = f"http://localhost:{sandbox.port}/elsewhere/orgs/{owner}/repos?page=2"
            self.set_header("Link", f'<{other}>; rel="next"')
            self.write_json(200, [{"full_name": f"{owner}/x", "stargazers_count": 1}])

    sandbox.app.add_handlers(r".*", [(r"/proxy/orgs/([^/]+)/repos", ForeignLink)])
    connection = _connection(f"{sandbox.url}/proxy", owner_type="org")
    with pytest.raises(SourceError, match="pointed its next page at another host"):
        asyncio.run(_fetch(connection, _token(), dt.date.today()))
    assert sandbox.counters["foreign.first_page"] == 1
