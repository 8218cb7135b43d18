"""The client's dashboard as a product: its numbers, its periods, its export, its link's life.

One `writevue serve` process serves the whole module (starting one costs seconds);
each test adds the tenants and links it needs to the same warehouse.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from support import (
    SandboxOAuthSource,
    add_stripe_connection,
    add_tenant_with_facts,
    fetch_to_staging,
    home_runtime,
    new_stripe_key,
    register_oauth_source,
    remember_secret,
    sandbox_oauth_client,
    start_dashboard_server,
)

from dashboard_server.data import (
    FactCache,
    Period,
    load_dashboard,
)
from dashboard_server.gate import LinkResolver
from dashboard_server.headers import session_cookie
from dashboard_server.probe import page_and_document_text
from dashboard_server.render import dashboard_html
from writevue_pipelines import invites, links, refresh, registry
from writevue_pipelines.models import ConnectInvite, Connection, DashboardLink, Fact, OAuthState
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import get_source

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TODAY = dt.datetime.now(dt.UTC).date()


def daily_facts(days: int, charges: float, gross: float) -> pl.DataFrame:
    """Payments and USD gross volume per day for ``days`` days up to today; distinct per tenant."""
    day_list = [TODAY - dt.timedelta(days=i) for i in range(days)]
    return pl.DataFrame(
        {
            "metric": ["charges"] * days + ["gross_volume"] * days,
            "dimension": [""] * days + ["usd"] * days,
            "day": day_list * 2,
            "value": [float(charges + i % 7) for i in range(days)]
            + [gross + i for i in range(days)],
        }
    )


# What the test itself inserted, and what a client must therefore see: plain sums over the
# inserted rows, never the dashboard's own aggregation.
ACME_FACTS = daily_facts(400, 10, 1000.25)
GLOBEX_FACTS = daily_facts(400, 500, 77777.75)


def period_totals(facts: pl.DataFrame, start: dt.date, end: dt.date) -> dict[str, float]:
    """Per metric, the sum of the inserted values from ``start`` to ``end``."""
    totals: dict[str, float] = {}
    for metric, _dimension, day, value in facts.iter_rows():
        if start <= day <= end:
            totals[metric] = totals.get(metric, 0.0) + value
    return totals


def card_texts(facts: pl.DataFrame, days: int) -> dict[str, str]:
    """The exact figure of each card for the last ``days`` days (shown on hover and focus,
    and to screen readers): payments as a whole number, USD gross volume with cents."""
    totals = period_totals(facts, TODAY - dt.timedelta(days=days - 1), TODAY)
    return {
        "charges": f"{totals['charges']:,.0f}",
        "gross_volume": f"${totals['gross_volume']:,.2f}",
    }


def csv_figures(text: str) -> set[tuple[str, str, str, float]]:
    """(day, metric, dimension, value) of each row of an exported CSV; duplicates fail."""
    rows = [
        (r["day"], r["metric"], r["dimension"], float(r["value"]))
        for r in csv.DictReader(io.StringIO(text))
    ]
    assert len(rows) == len(set(rows)), rows
    return set(rows)


def inserted_figures(facts: pl.DataFrame, start: dt.date, end: dt.date) -> set:
    """The rows of ``facts`` from ``start`` to ``end``, as ``csv_figures`` reads them."""
    return {
        (str(day), metric, dimension, value)
        for metric, dimension, day, value in facts.iter_rows()
        if start <= day <= end
    }


@dataclass
class World:
    runtime: Runtime
    base: str
    log: Path
    acme: str
    acme_token: str
    globex: str
    globex_token: str

    def url(self, token: str, query: str = "") -> str:
        return f"{self.base}/d/{token}{query}"

    def link(self, tenant_id: str, **kwargs) -> tuple[links.LinkInfo, str]:
        with self.runtime.db.session() as session:
            return links.create_link(session, tenant_id, **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboards")
    runtime = home_runtime(root)
    settings = runtime.settings
    acme, _ = add_tenant_with_facts(runtime, "Acme Ltd", ACME_FACTS)
    globex, _ = add_tenant_with_facts(runtime, "Globex Corp", GLOBEX_FACTS)
    with runtime.db.session() as session:
        _, acme_token = links.create_link(session, acme)
        _, globex_token = links.create_link(session, globex)
    log = root / "serve.log"
    server, base = start_dashboard_server(
        settings.home, log, WRITEVUE_DASHBOARD_REFRESH_S="1", **sandbox_oauth_client("ga4")
    )
    try:
        yield World(runtime, base, log, acme, acme_token, globex, globex_token)
    finally:
        server.stop()
        runtime.close()


# -- what the client sees ------------------------------------------------------------------


def test_cards_compare_the_period_with_the_one_before(world):
    data = load_dashboard(world.runtime, world.acme, days=7)
    charges = next(k for k in data.kpis if k.metric == "charges")
    # day i (0 = today) is worth 10 + i % 7: any 7 consecutive days sum to 10*7 + 21
    assert charges.value == 91
    # Today is not over: the six whole days (days 6..1 ago) are compared day for day with
    # the week before's first six (days 13..8 ago).
    assert charges.previous == sum(10 + i % 7 for i in range(8, 14)) == 81
    assert charges.text == "91" and charges.change_text == "+0.0% vs previous period (whole days)"
    gross = next(k for k in data.kpis if k.metric == "gross_volume")
    assert gross.value == sum(1000.25 + i for i in range(7))
    assert gross.previous == sum(1000.25 + i for i in range(8, 14))
    assert (gross.text, gross.exact_text) == ("$7k", "$7,022.75") and gross.change < 0


def test_dashboard_data_reads_one_tenant_and_compares_periods(runtime, sandbox):
    tenant_id, connection_id = add_stripe_connection(
        runtime, sandbox.url, "sk_test_acme_data_003", name="Acme Ltd", email="003@client.test"
    )
    fetch_to_staging(runtime, connection_id)  # a real refresh, from the Stripe sandbox
    refresh.load_connection(runtime, connection_id)
    data = load_dashboard(runtime, tenant_id, days=30)
    assert data.tenant_name == "Acme Ltd"
    assert [s.state for s in data.sources] == ["fresh"]
    assert {k.metric for k in data.kpis} == set(get_source("stripe").metrics)
    # What the refresh wrote, read back row by row from the facts table and summed here.
    with runtime.db.session() as session:
        loaded = session.execute(
            select(Fact.day, Fact.value).where(
                Fact.tenant_id == tenant_id, Fact.metric == "charges"
            )
        ).all()
    start = TODAY - dt.timedelta(days=29)
    shown = sum(value for day, value in loaded if start <= day <= TODAY)
    # compared: the 29 whole days with the previous period's first 29
    before_start = start - dt.timedelta(days=30)
    before = sum(
        value for day, value in loaded if before_start <= day < before_start + dt.timedelta(29)
    )
    charges = next(k for k in data.kpis if k.metric == "charges")
    assert shown > 0 and before > 0
    assert charges.value == pytest.approx(shown) and charges.previous == pytest.approx(before)
    assert charges.exact_text == f"{shown:,.0f}"
    assert charges.change_text.endswith("vs previous period (whole days)")


def test_one_warehouse_query_per_view_and_a_cache_keyed_by_tenant_and_refresh(world):
    from sqlalchemy import event

    fact_queries = []

    def count(_conn, _cursor, statement, *_args):
        if "FROM facts" in statement:
            fact_queries.append(statement)

    event.listen(world.runtime.db.engine, "before_cursor_execute", count)
    try:
        cache = FactCache()
        period = Period.last(30, TODAY)
        first = load_dashboard(world.runtime, world.acme, period=period, cache=cache)
        assert len(fact_queries) == 1
        load_dashboard(world.runtime, world.acme, period=period, cache=cache)
        assert len(fact_queries) == 1 and len(cache) == 1  # served from the cache
        other = load_dashboard(world.runtime, world.globex, period=period, cache=cache)
        assert len(fact_queries) == 2 and len(cache) == 2 and other.tenant_name == "Globex Corp"
        assert set(other.series["value"]).isdisjoint(first.series["value"])
        with world.runtime.db.session() as session:  # a refresh makes cached facts stale
            connection = session.query(Connection).filter_by(tenant_id=world.acme).one()
            registry.record_refresh_result(session, connection.id, error=None)
        load_dashboard(world.runtime, world.acme, period=period, cache=cache)
        assert len(fact_queries) == 3
    finally:
        event.remove(world.runtime.db.engine, "before_cursor_execute", count)


def test_the_page_shows_cards_charts_table_and_export_of_the_period(world):
    data = load_dashboard(world.runtime, world.acme, days=30)
    page = dashboard_html(data)
    for kpi in data.kpis:
        assert kpi.text in page and kpi.change_text in page
    assert page.count('<svg class="wv-chart-svg"') == 2 and 'data-days="30"' in page
    assert "<table" in page and "Previous period" in page
    assert f"?format=csv&amp;from={data.start}&amp;to={data.end}" in page
    tv = dashboard_html(data, tv=True)
    assert "wv-tv" in tv and "format=csv" not in tv


def test_a_chart_draws_every_day_of_the_period_and_a_counters_quiet_days_as_zero(runtime):
    period = Period(dt.date(2026, 1, 1), dt.date(2026, 1, 10))
    facts = pl.DataFrame(
        {
            "metric": ["charges"] * 2,
            "dimension": [""] * 2,
            "day": [dt.date(2026, 1, 1), dt.date(2026, 1, 10)],
            "value": [5.0, 10.0],
        }
    )
    tenant, _ = add_tenant_with_facts(runtime, "Acme Ltd", facts)
    page = dashboard_html(load_dashboard(runtime, tenant, period=period))
    assert page.count('<svg class="wv-chart-svg"') == 1
    points = page.split('points="')[1].split('"')[0].split()
    assert len(points) == 10
    assert points[0].split(",")[1] != points[-1].split(",")[1]
    assert "01 Jan 2026: 5" in page and "05 Jan 2026: 0" in page


def test_the_websocket_document_holds_this_tenants_numbers_only(world):
    status, text = page_and_document_text(world.url(world.acme_token))
    assert status == 200
    for figure in card_texts(ACME_FACTS, 30).values():
        assert figure in text
    assert "Acme Ltd" in text and "Globex" not in text and "77,7" not in text


def test_csv_export_is_exactly_the_period_shown(world):
    start, end = TODAY - dt.timedelta(days=9), TODAY - dt.timedelta(days=3)
    response = httpx.get(world.url(world.acme_token, f"?format=csv&from={start}&to={end}"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    assert response.headers["cache-control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 14 and {r["day"] for r in rows} == {
        str(start + dt.timedelta(days=i)) for i in range(7)
    }
    assert csv_figures(response.text) == inserted_figures(ACME_FACTS, start, end)
    bad = httpx.get(world.url(world.acme_token, "?format=csv&from=yesterday"))
    assert bad.status_code == 400


# -- the link's life -------------------------------------------------------------------------


def test_rotating_a_link_kills_the_old_token(world):
    link, old = world.link(world.acme)
    with world.runtime.db.session() as session:
        rotated, new = links.rotate_link(session, link.id)
    remember_secret(new)
    assert rotated.id == link.id
    assert httpx.get(world.url(old)).status_code == 404
    assert httpx.get(world.url(new)).status_code == 200
    with world.runtime.db.session() as session:
        assert session.get(DashboardLink, link.id).last_used_at is not None


def test_unknown_revoked_and_expired_tokens_take_the_same_time(world):
    """One query path for all three; compared loosely (medians), never a hard threshold."""
    revoked, revoked_token = world.link(world.acme)
    expired, expired_token = world.link(world.acme, expires_in_days=1)
    with world.runtime.db.session() as session:
        links.revoke_link(session, revoked.id)
        session.get(DashboardLink, expired.id).expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(
            seconds=1
        )
    resolve = LinkResolver(world.runtime)
    tokens = {"unknown": "U" * 43, "revoked": revoked_token, "expired": expired_token}
    timings: dict[str, list[float]] = {kind: [] for kind in tokens}
    for _ in range(60):
        for kind, token in tokens.items():
            started = time.perf_counter()
            assert resolve(token) is None
            timings[kind].append(time.perf_counter() - started)
    medians = {kind: statistics.median(values) for kind, values in timings.items()}
    assert max(medians.values()) < 3 * min(medians.values()) + 0.002, medians


def test_cookies_are_session_cookies_httponly_and_samesite():
    hardened = session_cookie(
        "_xsrf=abc; expires=Wed, 01 Jan 2031 00:00:00 GMT; Max-Age=9; Path=/", secure=True
    )
    assert hardened == "_xsrf=abc; Path=/; HttpOnly; SameSite=Lax; Secure"
    assert "Secure" not in session_cookie("a=b", secure=False)


#: Loaded at start-up by a server started with its folder on PYTHONPATH: Tornado then sets a
#: cookie that would persist for 30 days (it does so for the XSRF cookie once a user is set)
#: with no HttpOnly or SameSite of its own, so only the server's cookie rewrite can fix it.
PERSISTENT_COOKIE_PROBE = """
from pathlib import Path

from dashboard_server import connect, headers

connect.ConnectHandler.get_current_user = lambda self: "someone"
headers.XSRF_COOKIE_KWARGS.clear()
Path({canary!r}).write_text("loaded")
"""


def test_the_server_turns_a_cookie_that_would_persist_into_a_session_cookie(world, tmp_path):
    probe, canary = tmp_path / "probe", tmp_path / "probe-loaded"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PERSISTENT_COOKIE_PROBE.format(canary=str(canary)))
    server, base = start_dashboard_server(
        world.runtime.settings.home, tmp_path / "serve.log", PYTHONPATH=str(probe)
    )
    try:
        token = _invite(world, sources=["stripe"])
        page = httpx.get(f"{base}/connect/{token}")
    finally:
        server.stop()
    assert canary.read_text() == "loaded"  # the server ran with the persistent cookie
    assert page.status_code == 200
    (cookie,) = page.headers.get_list("set-cookie")
    flags = sorted(part.strip() for part in cookie.split(";")[1:])
    assert cookie.startswith("_xsrf=") and flags == ["HttpOnly", "Path=/", "SameSite=Lax"]


# -- the connect page ----------------------------------------------------------------------


def _invite(world, **kwargs) -> str:
    with world.runtime.db.session() as session:
        _info, token = invites.create_invite(session, world.acme, **kwargs)
    return remember_secret(token)


def _form(client: httpx.Client, url: str) -> tuple[str, httpx.Response]:
    page = client.get(url)
    assert page.status_code == 200, page.text
    return page.text.split('name="_xsrf" value="')[1].split('"')[0], page


def _own_page(world) -> httpx.Client:
    """A client whose form posts come from the server's own page, as a browser's do."""
    return httpx.Client(headers={"Origin": world.base})


def test_an_invite_takes_an_api_key_once(world, sandbox):
    token = _invite(world, sources=["stripe"], options={"stripe": {"base_url": sandbox.url}})
    url = f"{world.base}/connect/{token}"
    with _own_page(world) as client:
        xsrf, page = _form(client, url)
        assert "Stripe" in page.text and 'type="password"' in page.text
        cookie = page.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert "expires" not in cookie.lower() and "max-age" not in cookie.lower()
        key = remember_secret("rk_test_" + "k" * 24)
        assert 'name="referrer" content="same-origin"' in page.text
        form = {"action": "api_key", "source": "stripe", "api_key": key}
        assert client.post(url, data=form).status_code == 403  # no XSRF token
        done = client.post(url, data={**form, "_xsrf": xsrf})
        assert done.status_code == 200 and "connected" in done.text
        assert client.get(url).status_code == 404  # spent
    with world.runtime.db.session() as session:
        invite = (
            session.query(ConnectInvite).filter_by(token_sha256=invites.hash_token(token)).one()
        )
        connection = registry.get_connection(session, invite.connection_id)
        assert connection.tenant_id == world.acme and connection.options["base_url"]
        assert registry.get_secrets(session, world.runtime.keys, connection) == {"api_key": key}
    log = world.log.read_text()
    assert token not in log and f"<invite:{invite.id}>" in log


def test_a_refused_key_shows_the_form_again_and_the_invite_still_works(world, sandbox):
    token = _invite(world, sources=["stripe"], options={"stripe": {"base_url": sandbox.url}})
    url = f"{world.base}/connect/{token}"
    with _own_page(world) as client:
        xsrf, _ = _form(client, url)
        form = {"action": "api_key", "source": "stripe", "_xsrf": xsrf}
        refused = client.post(url, data={**form, "api_key": "not-a-stripe-key"})
        assert refused.status_code == 400
        assert "Stripe refused that key" in refused.text and "Thank you" not in refused.text
        assert 'role="alert"' in refused.text and 'type="password"' in refused.text
        assert "not-a-stripe-key" not in refused.text
        assert client.get(url).status_code == 200  # not spent
        done = client.post(url, data={**form, "api_key": remember_secret(new_stripe_key())})
        assert done.status_code == 200 and "Thank you" in done.text
        assert client.get(url).status_code == 404
    with world.runtime.db.session() as session:
        invite = (
            session.query(ConnectInvite).filter_by(token_sha256=invites.hash_token(token)).one()
        )
        assert session.query(Connection).filter_by(tenant_id=world.acme).count() >= 1
        assert registry.get_connection(session, invite.connection_id).source == "stripe"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/connect"},
        {},  # neither: not a browser on our page
    ],
    ids=["foreign-origin", "opaque-origin", "foreign-referer", "no-origin"],
)
def test_the_connect_form_refuses_a_post_from_another_origin(world, sandbox, headers):
    token = _invite(world, sources=["stripe"], options={"stripe": {"base_url": sandbox.url}})
    url = f"{world.base}/connect/{token}"
    with httpx.Client() as client:
        xsrf, _ = _form(client, url)
        form = {"action": "api_key", "source": "stripe", "_xsrf": xsrf}
        forged = client.post(url, data={**form, "api_key": new_stripe_key()}, headers=headers)
        assert forged.status_code == 403 and "Not found" in forged.text
        assert forged.headers["referrer-policy"] == "no-referrer"
        assert client.get(url).status_code == 200  # nothing was connected
        # The same form from the server's own page (by its Referer, without an Origin).
        own = client.post(url, data={**form, "api_key": new_stripe_key()}, headers={"Referer": url})
        assert own.status_code == 200 and "Thank you" in own.text


def test_two_oauth_flows_from_one_invite_make_one_connection(world, sandbox):
    from writevue_sandbox.oauth import AuthorizeHandler, TokenHandler

    # The sandbox's authorisation server at Google's paths, as the server process asks for.
    sandbox.app.add_handlers(
        r".*", [(r"/o/oauth2/v2/auth", AuthorizeHandler), (r"/token", TokenHandler)]
    )
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url, "property_id": "123456"}
    token = _invite(world, sources=["ga4"], options={"ga4": options})
    url = f"{world.base}/connect/{token}"
    with world.runtime.db.session() as session:
        before = session.query(Connection).filter_by(tenant_id=world.acme).count()
    callbacks = []
    with _own_page(world) as client:
        xsrf, _ = _form(client, url)
        for _ in range(2):  # two tabs
            started = client.post(url, data={"action": "oauth", "source": "ga4", "_xsrf": xsrf})
            assert started.status_code == 200
            authorize = started.text.split("url=")[1].split('"')[0].replace("&amp;", "&")
            consent = httpx.get(authorize, follow_redirects=False)
            remember_secret(parse_qs(urlsplit(consent.headers["location"]).query)["code"][0])
            callbacks.append(consent.headers["location"])
        first = client.get(callbacks[0])
        assert first.status_code == 200 and "Thank you" in first.text
        assert client.get(url).status_code == 404  # spent by the first
        second = client.get(callbacks[1])
        assert second.status_code == 400 and "already used" in second.text
    with world.runtime.db.session() as session:
        assert session.query(Connection).filter_by(tenant_id=world.acme).count() == before + 1


def test_the_connect_page_sends_the_client_to_the_provider_and_back(world, sandbox):
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url, "property_id": "123456"}
    token = _invite(world, sources=["ga4"], options={"ga4": options})
    url = f"{world.base}/connect/{token}"
    with _own_page(world) as client:
        xsrf, page = _form(client, url)
        assert "Sign in with Google Analytics 4" in page.text
        started = client.post(url, data={"action": "oauth", "source": "ga4", "_xsrf": xsrf})
        assert started.status_code == 200
        authorize = started.text.split("url=")[1].split('"')[0].replace("&amp;", "&")
        query = parse_qs(urlsplit(authorize).query)
        assert authorize.startswith(sandbox.url)
        assert query["redirect_uri"] == [f"{world.base}/oauth/callback"]
        assert query["code_challenge_method"] == ["S256"]
        with world.runtime.db.session() as session:
            invite = (
                session.query(ConnectInvite).filter_by(token_sha256=invites.hash_token(token)).one()
            )
            state = session.get(OAuthState, invites.hash_token(query["state"][0]))
            assert state.invite_id == invite.id  # completing this flow spends the invite
            assert invite.spent_at is None  # spent only when the provider sends them back
        declined = client.get(f"{world.base}/oauth/callback?error=access_denied")
        assert declined.status_code == 400 and "did not grant" in declined.text
        unknown = client.get(f"{world.base}/oauth/callback?state={'s' * 43}&code=abc")
        assert unknown.status_code == 400 and "start again" in unknown.text.lower()


class InviteProbe(SandboxOAuthSource):
    name = "invite_probe"


def test_completing_the_providers_round_trip_spends_the_invite(world, sandbox, monkeypatch):
    register_oauth_source(monkeypatch, InviteProbe())
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url}
    token = _invite(world, sources=[InviteProbe.name], options={InviteProbe.name: options})
    callback = "https://dash.writevue.test/oauth/callback"
    authorize = invites.start_oauth(world.runtime, token, InviteProbe.name, callback)
    consent = httpx.get(authorize, follow_redirects=False)
    assert consent.status_code == 302
    returned = parse_qs(urlsplit(consent.headers["location"]).query)
    remember_secret(returned["code"][0])
    connection_id = invites.finish_oauth(world.runtime, returned["state"][0], returned["code"][0])
    with world.runtime.db.session() as session:
        assert invites.resolve_invite(session, token) is None
        invite = (
            session.query(ConnectInvite).filter_by(token_sha256=invites.hash_token(token)).one()
        )
        assert invite.connection_id == connection_id and invite.spent_at is not None
        connection = registry.get_connection(session, connection_id)
        assert (connection.tenant_id, connection.auth_kind) == (world.acme, "oauth2")


def test_expired_and_unknown_invites_get_the_404_page(world):
    token = _invite(world, sources=["stripe"])
    with world.runtime.db.session() as session:
        row = session.query(ConnectInvite).filter_by(token_sha256=invites.hash_token(token)).one()
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    for candidate in (token, "N" * 43):
        response = httpx.get(f"{world.base}/connect/{candidate}")
        assert response.status_code == 404 and "Not found" in response.text
        assert response.headers["referrer-policy"] == "no-referrer"


# -- tenant isolation, as a property ---------------------------------------------------------


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tenants=st.lists(
        st.lists(
            st.tuples(st.sampled_from(["charges", "new_customers"]), st.integers(1, 6)),
            min_size=1,
            max_size=3,
            unique=True,
        ),
        min_size=2,
        max_size=3,
    )
)
def test_each_link_sees_only_its_own_tenants_values(world, tenants):
    made = []
    for rows in tenants:
        # Values unique across the whole test run: 9-digit numbers with a random stem.
        stem = int.from_bytes(__import__("os").urandom(3), "big") % 900_000 + 100_000
        facts = pl.DataFrame(
            {
                "metric": [m for m, _ in rows],
                "dimension": [""] * len(rows),
                "day": [TODAY - dt.timedelta(days=ago) for _, ago in rows],
                "value": [float(stem * 1000 + n) for n in range(len(rows))],
            }
        )
        tenant_id, _ = add_tenant_with_facts(world.runtime, f"Tenant {stem}", facts)
        _link, token = world.link(tenant_id)
        made.append(
            (token, {f"{v:,.0f}" for v in facts["value"]}, {str(v) for v in facts["value"]})
        )
    for index, (token, shown, exported) in enumerate(made):
        others_shown = set().union(*(m[1] for i, m in enumerate(made) if i != index))
        others_exported = set().union(*(m[2] for i, m in enumerate(made) if i != index))
        status, document = page_and_document_text(world.url(token))
        assert status == 200
        page = httpx.get(world.url(token)).text
        export = httpx.get(
            world.url(token, f"?format=csv&from={TODAY - dt.timedelta(days=29)}&to={TODAY}")
        ).text
        assert shown & {t for t in shown if t in document}  # its own values are there
        for text in (document, page):
            assert not [v for v in others_shown if v in text]
        values = {float(row["value"]) for row in csv.DictReader(io.StringIO(export))}
        assert {float(v) for v in exported} <= values
        assert not {float(v) for v in others_exported} & values


# -- in a real browser -----------------------------------------------------------------------


def _card_value(page, metric: str) -> str:
    """The card's exact figure: what hover and focus show (the card itself is compact)."""
    value = page.locator(f'.wv-card[data-metric="{metric}"] .wv-card-value').first
    return value.get_attribute("title")


@pytest.mark.browser
def test_in_chromium_the_connect_form_passes_its_origin_check(world, browser, sandbox):
    # Under the site-wide no-referrer policy Chromium would post `Origin: null`; the
    # form page's same-origin policy makes it send the real origin to this server only.
    token = _invite(world, sources=["stripe"], options={"stripe": {"base_url": sandbox.url}})
    context = browser.new_context()
    page = context.new_page()
    sent = []
    page.on("request", lambda r: sent.append(r.headers) if r.method == "POST" else None)
    try:
        page.goto(f"{world.base}/connect/{token}")
        page.locator('input[name="api_key"]').fill(remember_secret(new_stripe_key()))
        page.get_by_role("button", name="Connect with a key").click()
        page.get_by_text("Thank you").wait_for(timeout=30_000)
        (headers,) = sent
        assert headers["origin"] == world.base
    finally:
        context.close()
    with world.runtime.db.session() as session:
        assert invites.resolve_invite(session, token) is None


@pytest.mark.browser
def test_in_chromium_cards_charts_range_csv_and_only_its_own_origin(world, browser):
    origins, errors = set(), []
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.on(
        "request", lambda r: origins.add("/".join(r.url.removeprefix("blob:").split("/", 3)[:3]))
    )
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(world.url(world.acme_token))
        expected = card_texts(ACME_FACTS, 30)
        page.locator(".wv-card").first.wait_for(timeout=30_000)
        assert {m: _card_value(page, m) for m in expected} == expected
        assert page.locator("svg.wv-chart-svg").count() == 2
        assert page.locator('svg.wv-chart-svg[data-days="30"]').count() == 2
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        page.get_by_role("button", name="7 days").click()
        seven = card_texts(ACME_FACTS, 7)
        page.locator('svg.wv-chart-svg[data-days="7"]').first.wait_for(timeout=15_000)
        assert {m: _card_value(page, m) for m in seven} == seven != expected

        with page.expect_download() as download_info:
            page.get_by_text("Download these figures (CSV)").click()
        downloaded = Path(download_info.value.path()).read_text()
        week = inserted_figures(ACME_FACTS, TODAY - dt.timedelta(days=6), TODAY)
        assert csv_figures(downloaded) == week

        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 400, width
    finally:
        context.close()
    assert origins <= {world.base, world.base.replace("http", "ws")}, origins
    assert not errors, errors


@pytest.mark.browser
def test_in_chromium_tv_mode_refreshes_by_itself(world, browser):
    initech = daily_facts(10, 3, 100.0)
    tenant_id, connection_id = add_tenant_with_facts(world.runtime, "Initech", initech)
    _link, token = world.link(tenant_id)
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    try:
        page.goto(world.url(token, "?tv=1"))
        page.locator(".wv-tv .wv-card").first.wait_for(timeout=30_000)
        before = _card_value(page, "charges")
        assert page.get_by_text("Download these figures (CSV)").count() == 0
        with world.runtime.db.session() as session:  # a refresh lands new figures
            connection = registry.get_connection(session, connection_id)
            from writevue_pipelines import warehouse

            warehouse.upsert_facts(
                session,
                connection,
                pl.DataFrame(
                    {"metric": ["charges"], "dimension": [""], "day": [TODAY], "value": [5000.0]}
                ),
                window_start=None,
            )
            registry.record_refresh_result(session, connection_id, error=None)
        # Today's payments are 5,000 now instead of 3: the other nine days are unchanged.
        charges = period_totals(initech, TODAY - dt.timedelta(days=29), TODAY)["charges"]
        expected = f"{charges - 3 + 5000:,.0f}"
        assert before == f"{charges:,.0f}" and expected != before
        page.locator(f'.wv-card-value[title="{expected}"]').wait_for(timeout=15_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard-tv.png"))
    finally:
        page.close()


@pytest.mark.browser
def test_in_chromium_an_open_page_of_a_revoked_link_stops_updating(world, browser):
    link, token = world.link(world.globex)
    page = browser.new_page()
    try:
        page.goto(world.url(token))
        page.locator(".wv-card").first.wait_for(timeout=30_000)
        with world.runtime.db.session() as session:
            links.revoke_link(session, link.id)
        page.get_by_text("This link no longer works").wait_for(timeout=15_000)
        assert page.locator(".wv-card").count() == 0
    finally:
        page.close()


# -- what keeps the server cheap ------------------------------------------------------------


def test_a_page_is_rendered_once_per_tenant_period_and_refresh(world):
    from sqlalchemy import event

    from dashboard_server.tenant_data import TenantData

    fact_queries = []

    def count(_conn, _cursor, statement, *_args):
        if "FROM facts" in statement:
            fact_queries.append(statement)

    hooli = daily_facts(40, 7, 300.0)
    tenant_id, connection_id = add_tenant_with_facts(world.runtime, "Hooli", hooli)
    source = TenantData(world.runtime, tenant_id, alive=lambda: True)
    period = Period.last(7, TODAY)
    event.listen(world.runtime.db.engine, "before_cursor_execute", count)
    try:
        first = source.page(period, tv=False)
        assert source.page(period, tv=False) == first and len(fact_queries) == 1
        assert source.page(period, tv=True) != first  # TV mode: a page of its own, same facts
        assert len(fact_queries) == 1
        assert all(text in first for text in card_texts(hooli, 7).values()) and "Hooli" in first
        with world.runtime.db.session() as session:  # a refresh: the next view reads anew
            registry.record_refresh_result(session, connection_id, error=None)
        source.page(period, tv=False)
        assert len(fact_queries) == 2
    finally:
        event.remove(world.runtime.db.engine, "before_cursor_execute", count)


class Document:
    """A Bokeh document as the ticker sees it: it only queues callbacks."""

    def __init__(self):
        self.queued = []

    def add_next_tick_callback(self, callback):
        self.queued.append(callback)


def test_open_dashboards_tick_until_their_session_ends_and_are_not_kept_for_it():
    import gc

    from dashboard_server.ticker import Ticker

    class View:
        gone = False

        def tick(self):
            pass

    ticker = Ticker()  # not started: run_due is driven by hand here
    documents, views = [Document(), Document(), Document()], [View(), View(), View()]
    for n in range(3):
        ticker.add(f"session-{n}", documents[n], views[n], period_s=60)
    ticker.run_due(now=time.monotonic() + 30)
    assert not any(d.queued for d in documents)  # not due yet
    ticker.run_due(now=time.monotonic() + 61)
    assert all(len(d.queued) == 1 for d in documents)

    ticker.session_destroyed(type("Context", (), {"id": "session-0"})())
    views[1].gone = True  # its link died: no more ticks
    del views[2], documents[2]
    gc.collect()  # the ticker held the third session's view and document only weakly
    ticker.run_due(now=time.monotonic() + 200)
    assert len(ticker) == 0
    assert [len(d.queued) for d in documents] == [1, 1]


def test_the_ticker_ends_views_whose_link_the_sweep_reports_gone():
    from dashboard_server.ticker import Ticker

    class View:
        gone = False

        def __init__(self):
            self.ended_with = None

        def tick(self):
            pass

        def end(self, page):
            self.ended_with = page

    asked: list[set[str]] = []
    dead: dict[str, str] = {}

    def sweep(links_open: set[str]) -> dict[str, str]:
        asked.append(links_open)
        if dead.get("fail"):
            raise RuntimeError("warehouse unreachable")
        return {link: page for link, page in dead.items() if link in links_open}

    ticker = Ticker(sweep=sweep)
    documents, views = [Document(), Document()], [View(), View()]
    ticker.add("s0", documents[0], views[0], period_s=60, link="hash-a")
    ticker.add("s1", documents[1], views[1], period_s=60, link="hash-b")
    ticker.run_due()
    assert asked == [{"hash-a", "hash-b"}] and not any(d.queued for d in documents)
    dead["fail"] = "x"
    ticker.run_due()  # a failed sweep ends nothing; the next second asks again
    assert len(ticker) == 2
    del dead["fail"]
    dead["hash-b"] = "gone page"
    ticker.run_due()  # only the second view's link is gone; it ends, before its period
    assert not documents[0].queued and len(documents[1].queued) == 1
    documents[1].queued[0]()
    assert views[1].ended_with == "gone page" and len(ticker) == 1


def test_a_provider_not_set_up_tells_the_client_plainly_and_the_operator_what_to_set(
    world, sandbox
):
    # The server has WriteVue's OAuth client for GA4 only: GitHub's sign-in cannot start.
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url, "owner": "acme"}
    token = _invite(world, sources=["github"], options={"github": options})
    url = f"{world.base}/connect/{token}"
    with _own_page(world) as client:
        xsrf, _page = _form(client, url)
        answer = client.post(url, data={"action": "oauth", "source": "github", "_xsrf": xsrf})
    assert answer.status_code == 400
    # the client is told it is not set up and whom to ask, not the server's variables
    assert "not set up" in answer.text
    assert "WRITEVUE_OAUTH" not in answer.text and "CLIENT_ID" not in answer.text
    # the operator reads what to set in the server's log
    assert "WRITEVUE_OAUTH_GITHUB_CLIENT_ID" in world.log.read_text()
