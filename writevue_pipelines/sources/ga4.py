"""Google Analytics 4: daily sessions, users, views and key events from the Data API's runReport.

``runReport`` is a POST, but a documented read-only query: the read-only guard lets it
through for exactly ``/v1beta/properties/{property_id}:runReport`` on the API host
(``allowed_writes``), and nothing else.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import polars as pl

from ..errors import CredentialRejected, InvalidInput, SourceError
from ..registry import ConnectionInfo
from ..warehouse import FACT_SCHEMA
from .auth import OAuthSpec
from .base import FetchRequest, FetchResult, MetricKind, Source
from .http import AllowedWrite, request_json

_PROPERTY_ID = re.compile(r"[0-9]{1,20}")
#: our metric name -> the GA4 API names that carry it (GA4 renamed conversions in 2024)
API_METRICS: dict[str, tuple[str, ...]] = {
    "sessions": ("sessions",),
    "active_users": ("activeUsers",),
    "page_views": ("screenPageViews",),
    "conversions": ("conversions", "keyEvents"),
}
#: the names requested, in order
REQUESTED = ("sessions", "activeUsers", "screenPageViews", "conversions")
RAW_SCHEMA = {
    "day": pl.Date,
    "sessions": pl.Float64,
    "active_users": pl.Float64,
    "page_views": pl.Float64,
    "conversions": pl.Float64,
}


def run_report_path(property_id: str) -> str:
    return f"/v1beta/properties/{property_id}:runReport"


class GA4Source(Source):
    name = "ga4"
    title = "Google Analytics 4"
    description = "Website and app traffic: sessions, active users, views and key events per day."
    auth_kinds = ("oauth2",)
    default_base_url = "https://analyticsdata.googleapis.com"
    options = {
        "base_url": "API root; defaults to https://analyticsdata.googleapis.com",
        "property_id": "the GA4 property id (digits; Admin → Property details)",
    }
    metrics = {
        "sessions": "Sessions",
        "active_users": "Active users",
        "page_views": "Views",
        "conversions": "Key events",
    }
    #: the property's daily totals, without a breakdown (``dimension`` stays None).
    #: Active users are the day's distinct users: counted per day like the others, though
    #: a week's are not the sum of its days'.
    metric_kinds: ClassVar[dict[str, MetricKind]] = dict.fromkeys(metrics, "counter")
    stream = "daily_report"
    # Google's endpoints live on two hosts; the token and revocation URLs are absolute.
    oauth = OAuthSpec(
        base_url="https://accounts.google.com",
        authorize_path="/o/oauth2/v2/auth",
        token_path="https://oauth2.googleapis.com/token",  # noqa: S106 - a URL
        revoke_path="https://oauth2.googleapis.com/revoke",
        scopes=("https://www.googleapis.com/auth/analytics.readonly",),
        # offline + consent: Google only returns a refresh token when both are asked for.
        extra_authorize_params={"access_type": "offline", "prompt": "consent"},
    )
    #: rows per runReport page (GA4 allows up to 250 000)
    page_size = 10_000

    def validate_options(self, options: dict[str, str]) -> dict[str, str]:
        options = super().validate_options(options)
        property_id = str(options.get("property_id") or "").strip()
        if property_id.startswith("properties/"):
            property_id = property_id[len("properties/") :]
        if not _PROPERTY_ID.fullmatch(property_id):
            raise InvalidInput(
                "Source 'ga4' needs the option property_id=DIGITS, the numeric GA4 property id "
                "(Admin → Property details), not the G- measurement id."
            )
        return {**options, "property_id": property_id}

    def property_id(self, connection: ConnectionInfo) -> str:
        property_id = str(connection.options.get("property_id") or "")
        if not _PROPERTY_ID.fullmatch(property_id):
            raise SourceError.of_connection(
                connection.id, "the GA4 property_id option is missing or not digits"
            )
        return property_id

    def allowed_writes(self, connection: ConnectionInfo) -> tuple[AllowedWrite, ...]:
        """The one POST this connection may send: its property's runReport."""
        host = urlsplit(self.base_url(connection)).hostname or ""
        try:
            path = run_report_path(self.property_id(connection))
        except SourceError:
            return ()
        prefix = urlsplit(self.base_url(connection)).path.rstrip("/")
        return (AllowedWrite("POST", host, prefix + path),)

    def account_label(self, connection: ConnectionInfo) -> str:
        prop = connection.options.get("property_id")
        return f"property {prop}" if prop else ""

    async def fetch(self, client: httpx.AsyncClient, request: FetchRequest) -> FetchResult:
        connection = request.connection
        property_id = self.property_id(connection)
        path = run_report_path(property_id)
        query: dict[str, Any] = {
            "dateRanges": [{"startDate": request.window_start.isoformat(), "endDate": "today"}],
            "dimensions": [{"name": "date"}],
            "metrics": [{"name": name} for name in REQUESTED],
            "orderBys": [{"dimension": {"dimensionName": "date"}}],
            "limit": self.page_size,
            "offset": 0,
        }
        rows: list[dict] = []
        requests = 0
        started = time.perf_counter()
        # One row per day: a report that keeps paging past the window's days is looping.
        days = (dt.datetime.now(dt.UTC).date() - request.window_start).days + 2
        while True:
            body = await _post_report(client, path, query, connection=connection, auth=request.auth)
            requests += 1
            page = report_rows(body, connection.id)
            rows.extend(page)
            total = _row_count(body)
            query["offset"] += len(page)
            if not page or query["offset"] >= total:
                break
            if query["offset"] > days:
                raise _drift(
                    connection.id,
                    f"kept paging past the {days} days asked for (rowCount {total}); "
                    "its pagination does not advance",
                )
        records = pl.DataFrame(rows, schema=RAW_SCHEMA, orient="row")
        newest = records["day"].max() if records.height else None
        return FetchResult(
            records=records,
            next_cursor=newest.isoformat() if newest is not None else request.cursor,
            requests=requests,
            latency_s=time.perf_counter() - started,
        )

    def aggregate(self, records: pl.DataFrame) -> pl.DataFrame:
        metrics = list(self.metrics)
        if records.height == 0:
            return pl.DataFrame(schema=FACT_SCHEMA)
        # One row per day already; a day listed twice (paging overlap) is summed once.
        daily = records.group_by("day").agg(pl.col(metrics).max())
        return (
            daily.unpivot(index="day", on=metrics, variable_name="metric", value_name="value")
            .with_columns(pl.lit("").alias("dimension"))
            .select("metric", "dimension", "day", "value")
            .sort("day", "metric")
        )


def report_rows(body: Any, connection_id: str) -> list[dict]:
    """A runReport answer's rows as {day, metric…}, found by header name, not position."""
    if not isinstance(body, dict):
        raise _drift(connection_id, "answered with something other than a report object")
    dimension_names = [
        h.get("name") for h in body.get("dimensionHeaders") or [] if isinstance(h, dict)
    ]
    metric_names = [h.get("name") for h in body.get("metricHeaders") or [] if isinstance(h, dict)]
    rows = body.get("rows") or []
    if not isinstance(rows, list):
        raise _drift(connection_id, "answered with rows that are not a list")
    if not rows:
        return []
    if "date" not in dimension_names:
        raise _drift(connection_id, "answered without the date dimension")
    date_at = dimension_names.index("date")
    positions: dict[str, int] = {}
    for ours, names in API_METRICS.items():
        found = [metric_names.index(name) for name in names if name in metric_names]
        if not found:
            raise _drift(connection_id, f"answered without the metric {names[0]!r}")
        positions[ours] = found[0]
    out = []
    for row in rows:
        try:
            dimensions = row["dimensionValues"]
            values = row["metricValues"]
            day = dt.datetime.strptime(str(dimensions[date_at]["value"]), "%Y%m%d").date()
            record: dict[str, Any] = {"day": day}
            for ours, index in positions.items():
                record[ours] = _metric_value(values[index].get("value"))
        except (KeyError, IndexError, TypeError, AttributeError):
            raise _drift(
                connection_id, "answered a row without its date or metric values"
            ) from None
        except ValueError:
            raise _drift(
                connection_id, "answered a row with a date or value GA4 never sends"
            ) from None
        out.append(record)
    return out


def _metric_value(raw: Any) -> float | None:
    # GA4 sends values as strings ("123", "0.52"); an absent value is no data, not zero.
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise ValueError(raw)
    return float(raw)


def _row_count(body: dict) -> int:
    try:
        return int(body.get("rowCount") or 0)
    except (TypeError, ValueError):
        return 0


def _drift(connection_id: str, problem: str) -> SourceError:
    return SourceError.of_connection(connection_id, f"GA4 runReport {problem}")


async def _post_report(
    client: httpx.AsyncClient,
    path: str,
    query: dict,
    *,
    connection: ConnectionInfo,
    auth: httpx.Auth,
) -> Any:
    """POST one runReport query; Google's error JSON tells a missing permission from an
    exhausted quota."""
    endpoint = f"GA4 {path}"
    body, _ = await request_json(
        client,
        "POST",
        path,
        connection_id=connection.id,
        json_body=query,
        auth=auth,
        endpoint=endpoint,
        error_for_status=lambda status, document: _google_error(
            connection, endpoint, status, document
        ),
    )
    return body


def _google_error(
    connection: ConnectionInfo, endpoint: str, status: int, document: Any
) -> SourceError:
    """One sentence for Google's error JSON. Only its status enum is quoted, never its text."""
    error = document.get("error") if isinstance(document, dict) else None
    error = error if isinstance(error, dict) else {}
    google_status = str(error.get("status") or "")
    message = str(error.get("message") or "").lower()
    property_id = connection.options.get("property_id")
    if status == 429 or google_status == "RESOURCE_EXHAUSTED" or "quota" in message:
        text = (
            f"{endpoint}: the GA4 quota for property {property_id} is exhausted (HTTP {status} "
            "RESOURCE_EXHAUSTED); the next refresh carries on once it resets"
        )
    elif status == 401:
        text = (
            f"{endpoint} refused the access token (HTTP 401 "
            f"{google_status or 'UNAUTHENTICATED'}); reconnect Google Analytics"
        )
    elif status == 403:
        text = (
            f"{endpoint}: the Google account cannot read GA4 property {property_id} "
            f"(HTTP 403 {google_status or 'PERMISSION_DENIED'}); grant it access in GA4, "
            "or reconnect with an account that has it"
        )
    elif status == 400:
        text = (
            f"{endpoint} rejected the report request (HTTP 400 "
            f"{google_status or 'INVALID_ARGUMENT'}); check the property_id option"
        )
    else:
        text = f"{endpoint} answered HTTP {status} {google_status}".rstrip()
    # A refused token or a missing permission needs the client; retrying changes nothing.
    quota = "RESOURCE_EXHAUSTED" in text
    kind = CredentialRejected if status in (401, 403) and not quota else SourceError
    return kind.of_connection(connection.id, text, status=status)
