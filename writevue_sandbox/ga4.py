"""GA4 Data API-shaped endpoints: ``runReport`` (a read-only POST) and ``metadata``.

Answers use the real shapes: ``dimensionHeaders``/``metricHeaders``, rows whose values
are all strings, ``rowCount``, ``limit``/``offset`` paging, and Google's error JSON
(``{"error": {"code", "message", "status"}}``) for 400 INVALID_ARGUMENT, 401
UNAUTHENTICATED, 403 PERMISSION_DENIED (a property the account cannot read) and 429
RESOURCE_EXHAUSTED (the ``429`` fault knob).

Bearer tokens accepted:

- access tokens issued by the sandbox's OAuth2 servers while unexpired and unrevoked: its
  Google endpoints (``writevue_sandbox/google_oauth.py``, the way a GA4 connection reaches
  it; such a token needs an Analytics scope, else 403 PERMISSION_DENIED "insufficient
  authentication scopes") or its generic one (``writevue_sandbox/oauth.py``);
- for the sandbox only, static test tokens ``ya29.sandbox-<account>`` (optionally with a
  fault plan, ``ya29.sandbox-acme__f_429x2``), so tests of the GA4 source do not need
  the OAuth flow. Google never issues such tokens.
"""

from __future__ import annotations

import datetime as dt
import json

from . import ga4_data, google_oauth
from .base import SandboxHandler
from .faults import SEPARATOR

#: a token from the sandbox's Google endpoints needs one of these (others are not checked)
ANALYTICS_SCOPES = {
    "https://www.googleapis.com/auth/analytics.readonly",
    "https://www.googleapis.com/auth/analytics",
}
STATIC_TOKEN_PREFIX = "ya29.sandbox-"  # noqa: S105 - a prefix, not a credential
MAX_LIMIT = 250_000
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def static_token(account: str) -> str:
    """A sandbox-only bearer token for ``account`` (see the module docstring)."""
    return f"{STATIC_TOKEN_PREFIX}{account}"


def google_error(status: int, message: str) -> dict:
    return {
        "error": {
            "code": status,
            "message": message,
            "status": GOOGLE_STATUS.get(status, "UNKNOWN"),
        }
    }


class GoogleHandler(SandboxHandler):
    def write_json(self, status: int, body) -> None:
        # Shared faults answer {"message": ...}; Google wraps every error the same way.
        if status >= 400 and not (isinstance(body, dict) and "error" in body):
            message = body.get("message", "") if isinstance(body, dict) else ""
            body = google_error(status, message)
        super().write_json(status, body)

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish(json.dumps(google_error(status_code, self._reason)))

    async def authorise(self) -> str | None:
        """The account behind the bearer token, after faults; None when already answered."""
        header = self.request.headers.get("Authorization", "")
        token = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
        credential = None
        if token.startswith(STATIC_TOKEN_PREFIX) and len(token) > len(STATIC_TOKEN_PREFIX):
            credential = token[len(STATIC_TOKEN_PREFIX) :]
        elif token:
            credential = _issued_token_account(self.application.settings, token)
        if credential is None:
            self.count("ga4.unauthenticated")
            self.set_header(
                "WWW-Authenticate",
                'Bearer realm="https://accounts.google.com/", error="invalid_token"',
            )
            self.write_json(
                401,
                google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access "
                    "token, login cookie or other valid authentication credential.",
                ),
            )
            return None
        scopes = google_oauth.scopes_of_access_token(self.application.settings, token)
        if scopes is not None and not scopes & ANALYTICS_SCOPES:
            self.count("ga4.insufficient_scope")
            self.write_json(
                403, google_error(403, "Request had insufficient authentication scopes.")
            )
            return None
        if await self.apply_faults(credential, scope="ga4"):
            return None
        return credential.split(SEPARATOR, 1)[0]

    def property_refused(self, account: str, property_id: str) -> bool:
        if not property_id.isdigit():
            self.write_json(400, google_error(400, f"Invalid property ID: {property_id}"))
            return True
        if property_id not in ga4_data.properties_for(account):
            self.count("ga4.permission_denied")
            self.write_json(
                403,
                google_error(
                    403,
                    "User does not have sufficient permissions for this property. To learn "
                    "more about Property ID, see https://developers.google.com/analytics/"
                    "devguides/reporting/data/v1/property-id.",
                ),
            )
            return True
        return False


def _issued_token_account(settings: dict, token: str) -> str | None:
    try:
        from .oauth import account_for_access_token
    except ImportError:  # the sandbox OAuth server is optional for these endpoints
        return None
    return account_for_access_token(settings, token)


class RunReportHandler(GoogleHandler):
    async def post(self, property_id: str) -> None:
        account = await self.authorise()
        if account is None or self.property_refused(account, property_id):
            return
        self.count("ga4.run_report")
        try:
            request = json.loads(self.request.body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("the request body must be a JSON object")
            query = _parse_query(request)
        except ValueError as exc:
            self.write_json(400, google_error(400, str(exc)))
            return
        start, end, dimensions, metrics, limit, offset, keep_empty = query
        days = ga4_data.report_days(property_id, start, end, keep_empty=keep_empty)
        body: dict = {
            "dimensionHeaders": [{"name": name} for name in dimensions],
            "metricHeaders": [
                {"name": name, "type": ga4_data.METRIC_TYPES[name]} for name in metrics
            ],
            "metadata": {"currencyCode": "USD", "timeZone": "Etc/UTC"},
            "kind": "analyticsData#runReport",
        }
        if days:
            # Like GA4, an empty report has neither rows nor rowCount.
            body["rows"] = [
                {
                    "dimensionValues": [{"value": day.strftime("%Y%m%d")}],
                    "metricValues": [{"value": _value(values[name])} for name in metrics],
                }
                for day, values in days[offset : offset + limit]
            ]
            body["rowCount"] = len(days)
        if request.get("returnPropertyQuota"):
            body["propertyQuota"] = {
                "tokensPerDay": {"consumed": 1, "remaining": 199_999},
                "tokensPerHour": {"consumed": 1, "remaining": 39_999},
            }
        self.write_json(200, body)


def _value(number: float) -> str:
    # GA4 sends every metric value as a string; integers without a decimal point.
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def _parse_query(request: dict):
    today = dt.datetime.now(dt.UTC).date()
    ranges = request.get("dateRanges") or []
    if not isinstance(ranges, list) or len(ranges) != 1 or not isinstance(ranges[0], dict):
        raise ValueError("The sandbox supports exactly one date range.")
    start = ga4_data.parse_date(str(ranges[0].get("startDate", "")), today)
    end = ga4_data.parse_date(str(ranges[0].get("endDate", "")), today)
    if start is None or end is None:
        raise ValueError("Invalid date range: use YYYY-MM-DD, today, yesterday or NdaysAgo.")
    if start > end:
        raise ValueError("Invalid date range: startDate is after endDate.")
    dimensions = [
        d.get("name") if isinstance(d, dict) else None for d in request.get("dimensions") or []
    ]
    for name in dimensions:
        if name not in ga4_data.DIMENSIONS:
            raise ValueError(f"Field {name} is not a valid dimension.")
    if dimensions != ["date"]:
        raise ValueError("The sandbox reports by the date dimension only.")
    metrics = [m.get("name") if isinstance(m, dict) else None for m in request.get("metrics") or []]
    if not metrics:
        raise ValueError("At least one metric is required.")
    for name in metrics:
        if name not in ga4_data.METRIC_TYPES:
            raise ValueError(f"Field {name} is not a valid metric.")
    try:
        # int64 fields arrive as JSON numbers or strings.
        limit = int(request.get("limit", 10_000))
        offset = int(request.get("offset", 0))
    except (TypeError, ValueError):
        raise ValueError("limit and offset must be integers.") from None
    if not 0 < limit <= MAX_LIMIT or offset < 0:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}; offset must not be negative.")
    return start, end, dimensions, metrics, limit, offset, bool(request.get("keepEmptyRows"))


class MetadataHandler(GoogleHandler):
    async def get(self, property_id: str) -> None:
        account = await self.authorise()
        if account is None or self.property_refused(account, property_id):
            return
        self.count("ga4.metadata")
        self.write_json(
            200,
            {
                "name": f"properties/{property_id}/metadata",
                "dimensions": [
                    {"apiName": "date", "uiName": "Date", "category": "Time"},
                ],
                "metrics": [
                    {"apiName": name, "uiName": name, "type": kind}
                    for name, kind in ga4_data.METRIC_TYPES.items()
                ],
            },
        )


def routes() -> list:
    return [
        (r"/v1beta/properties/([^/:]+):runReport", RunReportHandler),
        (r"/v1beta/properties/([^/:]+)/metadata", MetadataHandler),
    ]
