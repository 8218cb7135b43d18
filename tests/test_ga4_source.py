"""The GA4 Data API source against the sandbox's runReport over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import httpx
import polars as pl
import pytest
from support import add_connection, fetch_to_staging

from writevue_pipelines import refresh, warehouse
from writevue_pipelines.errors import CredentialRejected, InvalidInput, SourceError
from writevue_pipelines.registry import ConnectionInfo
from writevue_pipelines.sources import FetchRequest, get_source
from writevue_pipelines.sources.ga4 import GA4Source, report_rows, run_report_path
from writevue_pipelines.sources.http import RetryPolicy, WriteRefused, open_client
from writevue_sandbox import ga4_data
from writevue_sandbox.faults import with_faults
from writevue_sandbox.ga4 import static_token

ACCOUNT = "ga4-check"
PROPERTY = ga4_data.properties_for(ACCOUNT)[0]
CONNECTION_ID = "22222222-2222-2222-2222-222222222222"


class StaticTokens:
    """A TokenSource with one fixed token, counting how often it is asked to refresh."""

    def __init__(self, token: str):
        self.token = token
        self.refreshes = 0

    async def access_token(self) -> str:
        return self.token

    async def refreshed(self, rejected: str) -> str:
        self.refreshes += 1
        return self.token


def _connection(url: str, property_id: str = PROPERTY) -> ConnectionInfo:
    return ConnectionInfo(
        id=CONNECTION_ID,
        tenant_id="t",
        source="ga4",
        auth_kind="oauth2",
        options={"base_url": url, "property_id": property_id},
        status="active",
        last_error=None,
        last_refreshed_at=None,
    )


async def _no_sleep(_seconds: float) -> None:
    return None


def _fetch(url, token, start, *, property_id=PROPERTY, page_size=None, tokens=None):
    source = GA4Source()
    if page_size is not None:
        source.page_size = page_size
    connection = _connection(url, property_id)
    tokens = tokens or StaticTokens(token)

    async def run():
        async with open_client(
            base_url=url,
            allow=source.allowed_writes(connection),
            retry=RetryPolicy(sleep=_no_sleep),
        ) as client:
            auth = source.build_auth(connection, {}, tokens)
            return await source.fetch(client, FetchRequest(connection, auth, start, None))

    return asyncio.run(run())


def _expected_days(start: dt.date) -> list[tuple[dt.date, dict]]:
    today = dt.datetime.now(dt.UTC).date()
    return ga4_data.report_days(PROPERTY, start, today, keep_empty=False)


def _report(url, token, body, property_id=PROPERTY):
    return httpx.post(
        f"{url}/v1beta/properties/{property_id}:runReport",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )


QUERY = {
    "dateRanges": [{"startDate": "30daysAgo", "endDate": "today"}],
    "dimensions": [{"name": "date"}],
    "metrics": [{"name": "sessions"}, {"name": "conversions"}],
}


def test_sandbox_answers_in_the_real_report_shape(sandbox):
    answer = _report(sandbox.url, static_token(ACCOUNT), {**QUERY, "limit": 5, "offset": 3})
    assert answer.status_code == 200
    body = answer.json()
    assert body["dimensionHeaders"] == [{"name": "date"}]
    assert [h["name"] for h in body["metricHeaders"]] == ["sessions", "conversions"]
    assert body["metadata"]["currencyCode"] == "USD"
    assert len(body["rows"]) == 5 and body["rowCount"] > 5
    first = body["rows"][0]
    assert len(first["dimensionValues"][0]["value"]) == 8  # YYYYMMDD
    assert all(isinstance(v["value"], str) for row in body["rows"] for v in row["metricValues"])
    everything = _report(sandbox.url, static_token(ACCOUNT), {**QUERY, "limit": 100}).json()
    assert body["rows"] == everything["rows"][3:8]  # offset and limit page the same report


def test_sandbox_speaks_googles_errors(sandbox):
    other = ga4_data.properties_for("someone-else")[0]
    denied = _report(sandbox.url, static_token(ACCOUNT), QUERY, property_id=other)
    assert denied.status_code == 403 and denied.json()["error"]["status"] == "PERMISSION_DENIED"
    bad = _report(sandbox.url, "ya29.not-a-sandbox-token", QUERY)
    assert bad.status_code == 401 and bad.json()["error"]["status"] == "UNAUTHENTICATED"
    assert "invalid_token" in bad.headers["WWW-Authenticate"]
    limited = _report(sandbox.url, static_token(with_faults(ACCOUNT, "429x1")), QUERY)
    assert limited.status_code == 429
    assert limited.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    unknown = _report(sandbox.url, static_token(ACCOUNT), {**QUERY, "metrics": [{"name": "x"}]})
    assert unknown.status_code == 400 and unknown.json()["error"]["status"] == "INVALID_ARGUMENT"
    metadata = httpx.get(
        f"{sandbox.url}/v1beta/properties/{PROPERTY}/metadata",
        headers={"Authorization": f"Bearer {static_token(ACCOUNT)}"},
    ).json()
    assert {"sessions", "keyEvents"} <= {m["apiName"] for m in metadata["metrics"]}


def test_fetch_pages_through_the_report_with_a_small_limit(sandbox):
    start = dt.date.today() - dt.timedelta(days=40)
    result = _fetch(sandbox.url, static_token(ACCOUNT), start, page_size=7)
    expected = _expected_days(start)
    assert result.records.height == len(expected) > 30
    assert result.requests == -(-len(expected) // 7)
    assert sandbox.counters["ga4.run_report"] == result.requests
    got = {row["day"]: row for row in result.records.iter_rows(named=True)}
    for day, metrics in expected:
        assert got[day]["sessions"] == metrics["sessions"]
        assert got[day]["active_users"] == metrics["activeUsers"]
        assert got[day]["page_views"] == metrics["screenPageViews"]
        assert got[day]["conversions"] == metrics["conversions"]
    assert result.next_cursor == max(day for day, _ in expected).isoformat()


def test_aggregation_gives_one_fact_per_metric_and_day(sandbox):
    start = dt.date.today() - dt.timedelta(days=10)
    result = _fetch(sandbox.url, static_token(ACCOUNT), start)
    facts = get_source("ga4").aggregate(result.records)
    value = {(m, d): v for m, dim, d, v in facts.iter_rows()}
    for day, metrics in _expected_days(start):
        assert value[("sessions", day)] == metrics["sessions"]
        assert value[("active_users", day)] == metrics["activeUsers"]
        assert value[("page_views", day)] == metrics["screenPageViews"]
        assert value[("conversions", day)] == metrics["conversions"]
    assert set(facts["dimension"]) == {""}
    assert facts.height == 4 * len(_expected_days(start))


def test_a_short_quota_squeeze_is_retried(sandbox):
    token = static_token(with_faults(ACCOUNT, "429x2"))
    result = _fetch(sandbox.url, token, dt.date.today() - dt.timedelta(days=5))
    assert sandbox.counters["fault.429"] == 2 and result.records.height > 0


def test_an_exhausted_quota_is_a_clean_error(sandbox):
    token = static_token(with_faults(ACCOUNT, "429"))
    with pytest.raises(SourceError) as caught:
        _fetch(sandbox.url, token, dt.date.today() - dt.timedelta(days=5))
    message = str(caught.value)
    assert "quota" in message and "RESOURCE_EXHAUSTED" in message and CONNECTION_ID in message
    assert token not in message
    assert not isinstance(caught.value, CredentialRejected)  # it resets; no reconnect


def test_a_property_the_account_cannot_read_is_a_clean_error(sandbox):
    other = ga4_data.properties_for("someone-else")[0]
    with pytest.raises(SourceError) as caught:
        _fetch(sandbox.url, static_token(ACCOUNT), dt.date.today(), property_id=other)
    assert "PERMISSION_DENIED" in str(caught.value) and other in str(caught.value)
    assert isinstance(caught.value, CredentialRejected)  # the client must grant access


def test_a_bad_token_is_refreshed_once_then_a_clean_error(sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    token = "ya29.a0AfB_not_issued_by_the_sandbox"
    tokens = StaticTokens(token)
    with pytest.raises(SourceError) as caught:
        _fetch(sandbox.url, token, dt.date.today(), tokens=tokens)
    assert tokens.refreshes == 1  # OAuth2BearerAuth refreshed once after the 401
    message = str(caught.value)
    assert "reconnect" in message and "UNAUTHENTICATED" in message
    assert isinstance(caught.value, CredentialRejected)
    assert token not in message and token not in caplog.text and token not in repr(caught.value)


def test_only_this_propertys_run_report_may_be_posted(sandbox):
    source = GA4Source()
    connection = _connection(sandbox.url)
    other = ga4_data.properties_for(ACCOUNT)[1]

    async def post(path):
        async with open_client(
            base_url=sandbox.url, allow=source.allowed_writes(connection)
        ) as client:
            headers = {"Authorization": f"Bearer {static_token(ACCOUNT)}"}
            return await client.post(path, json=QUERY, headers=headers)

    assert asyncio.run(post(run_report_path(PROPERTY))).status_code == 200
    for path in (run_report_path(other), f"/v1beta/properties/{PROPERTY}:batchRunReports"):
        with pytest.raises(WriteRefused):
            asyncio.run(post(path))
    with pytest.raises(WriteRefused):  # and not without the allow-list at all
        asyncio.run(_fetch_without_allowance(sandbox.url))


async def _fetch_without_allowance(url):
    source = GA4Source()
    connection = _connection(url)
    async with open_client(base_url=url) as client:
        auth = source.build_auth(connection, {}, StaticTokens(static_token(ACCOUNT)))
        await source.fetch(client, FetchRequest(connection, auth, dt.date.today(), None))


def _body(metric_headers, rows, dimension_headers=("date",)):
    return {
        "dimensionHeaders": [{"name": n} for n in dimension_headers],
        "metricHeaders": [{"name": n, "type": "TYPE_INTEGER"} for n in metric_headers],
        "rows": [
            {
                "dimensionValues": [{"value": d} for d in dims],
                "metricValues": [{"value": v} for v in values],
                "futureField": {"ignored": True},
            }
            for dims, values in rows
        ],
        "rowCount": len(rows),
        "someNewTopLevelField": 1,
    }


def test_the_report_parser_tolerates_key_events_reordering_and_unknown_fields():
    body = _body(
        ["keyEvents", "engagementRate", "screenPageViews", "activeUsers", "sessions"],
        [
            (["20260102"], ["3", "0.51", "40", "9", "12"]),
            (["20260101"], ["", "0.4", "8", "2", "2"]),
        ],
    )
    rows = report_rows(body, "c")
    assert rows[0] == {
        "day": dt.date(2026, 1, 2),
        "sessions": 12.0,
        "active_users": 9.0,
        "page_views": 40.0,
        "conversions": 3.0,
    }
    assert rows[1]["conversions"] is None  # empty value: no data, not an error
    assert report_rows({"dimensionHeaders": [], "metricHeaders": []}, "c") == []  # empty report


@pytest.mark.parametrize(
    "body, problem",
    [
        (_body(["sessions", "activeUsers", "conversions"], [(["20260101"], ["1", "1", "1"])]),
         "screenPageViews"),
        (_body(["sessions", "activeUsers", "screenPageViews", "conversions"],
               [(["2026-01-01"], ["1", "1", "1", "1"])]), "date or value"),
        (_body(["sessions", "activeUsers", "screenPageViews", "conversions"],
               [(["20260101"], ["1", "many", "1", "1"])]), "date or value"),
        (_body(["sessions", "activeUsers", "screenPageViews", "conversions"],
               [(["20260101"], ["1"])]), "without its date or metric values"),
        (_body(["sessions", "activeUsers", "screenPageViews", "conversions"],
               [(["20260101"], ["1", "1", "1", "1"])], dimension_headers=("country",)),
         "date dimension"),
    ],
)  # fmt: skip
def test_report_drift_is_a_source_error_naming_what_is_missing(body, problem):
    with pytest.raises(SourceError, match=problem):
        report_rows(body, "c")


def test_property_id_is_required_and_digits_only():
    source = get_source("ga4")
    assert source.validate_options({"property_id": "properties/123456789"}) == {
        "property_id": "123456789"
    }
    for bad in ({}, {"property_id": "G-ABC123"}, {"property_id": "12 34"}):
        with pytest.raises(InvalidInput, match="property_id"):
            source.validate_options(bad)
    assert source.auth_kinds == ("oauth2",)
    oauth = source.oauth
    assert httpx.URL(oauth.base_url).join(oauth.token_path) == "https://oauth2.googleapis.com/token"
    assert httpx.URL(oauth.base_url).join(oauth.authorize_path) == (
        "https://accounts.google.com/o/oauth2/v2/auth"
    )
    assert oauth.scopes == ("https://www.googleapis.com/auth/analytics.readonly",)
    assert oauth.extra_authorize_params == {"access_type": "offline", "prompt": "consent"}


def test_no_records_aggregate_to_no_facts():
    source = get_source("ga4")
    facts = source.aggregate(
        pl.DataFrame(
            schema={
                "day": pl.Date,
                "sessions": pl.Float64,
                "active_users": pl.Float64,
                "page_views": pl.Float64,
                "conversions": pl.Float64,
            }
        )
    )
    assert facts.height == 0 and facts.columns == ["metric", "dimension", "day", "value"]


def test_a_refresh_lands_ga4_metrics_in_the_warehouse(runtime, sandbox):
    tenant, connection = add_connection(
        runtime,
        "ga4",
        "oauth2",
        get_source("ga4").validate_options({"base_url": sandbox.url, "property_id": PROPERTY}),
        # A sandbox-only static token that never expires stands in for an OAuth grant.
        {"access_token": static_token(ACCOUNT), "expires_at": ""},
        name="Site Ltd",
        email="ops@site.test",
    )
    fetched = fetch_to_staging(runtime, connection)
    refresh.load_connection(runtime, connection)
    start = dt.date.fromisoformat(fetched.window_start)
    with runtime.db.session() as session:
        facts = warehouse.tenant_facts(session, tenant, start, dt.date.today())
    sessions = {
        day: v
        for m, _, day, v in facts.select("metric", "dimension", "day", "value").iter_rows()
        if m == "sessions"
    }
    assert sessions == {day: m["sessions"] for day, m in _expected_days(start)}
