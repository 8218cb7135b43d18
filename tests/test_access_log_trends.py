"""Log files hold IP, browser, referrer, platform, time, clicks — only for aggregate trends.

One real Chromium session on a dashboard (load, change the period, download the
CSV) must leave anonymised access lines and nothing else: no token and no full
client address in any file under WRITEVUE_HOME or in the server's own log. The
roll-up turns the lines into trend tables that hold counts only, and erasure still
finds nothing of a tenant afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import MetaData, inspect, select
from support import add_stripe_connection, home_runtime, remember_secret, start_dashboard_server

from dashboard_server.access_log import (
    AccessLog,
    Visitor,
    access_line,
    browser_family,
    platform_name,
    referrer_domain,
)
from writevue_devtools.peers import CHROMIUM_ARGS
from writevue_pipelines import links, registry
from writevue_pipelines.errors import NotFound
from writevue_pipelines.models import TrendInteraction, TrendView
from writevue_pipelines.privacy import run_erasure
from writevue_pipelines.privacy.scope import owned_tables
from writevue_pipelines.privacy.trends import (
    access_log_file,
    access_log_files,
    expire_access_logs,
    pending_days,
    roll_up,
)
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings

CLIENT_IP, CLIENT_NETWORK = "127.0.0.1", "127.0.0.0"
FIELDS = ["time", "link", "ip", "browser", "platform", "referrer", "event"]
INBOUND_REFERER = "https://news.example.com/a/private/path?who=someone"
TREND_TABLES = ("trend_views", "trend_interactions")


def read_events(log_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(log_dir.glob("access-*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def trend_rows(runtime: Runtime) -> tuple[list[tuple], list[tuple]]:
    with runtime.db.session() as session:
        views = session.execute(
            select(TrendView.day, TrendView.dimension, TrendView.value, TrendView.views).order_by(
                TrendView.day, TrendView.dimension, TrendView.value
            )
        ).all()
        days = session.execute(
            select(
                TrendInteraction.day,
                TrendInteraction.views,
                TrendInteraction.interactions,
                TrendInteraction.exports,
                TrendInteraction.interactions_per_view,
            ).order_by(TrendInteraction.day)
        ).all()
    return [tuple(r) for r in views], [tuple(r) for r in days]


def summed(view_rows: list[tuple]) -> Counter:
    """(dimension, value) -> views over every day."""
    totals: Counter = Counter()
    for _day, dimension, value, views in view_rows:
        totals[dimension, value] += views
    return totals


# -- what one line may say -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "browser", "platform"),
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36",
            "Chrome",
            "Windows",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
            "Edge",
            "Windows",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/17.4 Safari/605.1.15",
            "Safari",
            "macOS",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
            "Safari",
            "iOS",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.6367.82 Mobile Safari/537.36",
            "Chrome",
            "Android",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
            "Firefox",
            "Linux",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36 OPR/110.0.0.0",
            "Other",
            "Linux",
        ),
        ("curl/8.5.0", "Other", "Other"),
        (None, "Other", "Other"),
    ],
)
def test_a_user_agent_becomes_a_browser_family_and_a_platform_only(user_agent, browser, platform):
    assert (browser_family(user_agent), platform_name(user_agent)) == (browser, platform)


def test_a_referrer_is_kept_as_its_domain_only():
    assert referrer_domain(INBOUND_REFERER) == "news.example.com"
    assert referrer_domain("http://User:pw@Intranet.Example.org:8443/x#y") == "intranet.example.org"
    assert referrer_domain("http://192.168.20.17/wiki/Jane") == "192.168.20.0"
    assert referrer_domain("http://[2001:db8:1:2::9]/") == "2001:db8:1::"
    for nothing in (None, "", "android-app://com.example", "not a url", "https://exa mple.com/"):
        assert referrer_domain(nothing) is None


def test_an_access_line_has_exactly_the_allowed_fields():
    visitor = Visitor.from_request(
        "203.0.113.77", {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0"}
    )
    line = access_line("view", "link-1", visitor, dt.datetime(2026, 1, 2, 3, 4, 5, 678, dt.UTC))
    assert json.loads(line) == {
        "time": "2026-01-02T03:04:05Z",
        "link": "link-1",
        "ip": "203.0.113.0",
        "browser": "Firefox",
        "platform": "Linux",
        "referrer": None,
        "event": "view",
    }
    with pytest.raises(ValueError):
        access_line("download-everything", "link-1", visitor, dt.datetime.now(dt.UTC))


def test_only_a_live_links_page_load_and_csv_download_are_events():
    from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

    from dashboard_server.request_log import page_event

    def request(method: str, uri: str, link_id: str | None = "link-1") -> HTTPServerRequest:
        made = HTTPServerRequest(
            start_line=RequestStartLine(method, uri, "HTTP/1.1"),
            headers=HTTPHeaders({"Host": "dash.writevue.test"}),
        )
        if link_id:
            made.writevue_link_id = link_id
        return made

    assert page_event(request("GET", "/d/tok"), 200) == "view"
    assert page_event(request("GET", "/d/tok?tv=1"), 200) == "view"
    assert page_event(request("GET", "/d/tok?format=csv&from=a&to=b"), 200) == "export"
    assert page_event(request("GET", "/d/tok/ws"), 101) is None
    assert page_event(request("GET", "/d/tok/autoload.js"), 200) is None
    assert page_event(request("HEAD", "/d/tok"), 200) is None
    assert page_event(request("GET", "/d/tok?format=csv"), 400) is None
    assert page_event(request("GET", "/d/unknown", link_id=None), 404) is None
    assert page_event(request("GET", "/assets/theme.css", link_id=None), 200) is None


_WRITER = """
import datetime as dt, sys, threading
from pathlib import Path
from dashboard_server.access_log import AccessLog, Visitor

at = dt.datetime(2026, 2, 3, 12, 0, tzinfo=dt.UTC)
log = AccessLog(Path(sys.argv[1]), clock=lambda: at)
visitor = Visitor("198.51.100.0", "Firefox", "Linux", "x" * 60 + ".example.com")

def write(n):
    for i in range(int(sys.argv[3])):
        log.record("interaction", f"{sys.argv[2]}-{n}-{i:05d}-" + "L" * 40, visitor)

threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_lines_from_several_processes_and_threads_never_interleave(tmp_path):
    processes, per_thread = 4, 400
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), f"p{p}", str(per_thread)])
        for p in range(processes)
    ]
    assert [w.wait(60) for w in writers] == [0] * processes
    lines = access_log_file(tmp_path, dt.date(2026, 2, 3)).read_text().splitlines()
    assert len(lines) == processes * 4 * per_thread
    links_seen = [json.loads(line)["link"] for line in lines]  # every line parses whole
    assert len(set(links_seen)) == len(lines)


# -- one real browser session ----------------------------------------------------------------


@dataclass
class Session:
    runtime: Runtime
    home: Path
    server_log: Path
    base: str
    token: str
    link_id: str
    tenant_id: str
    events: list[dict]


@pytest.fixture(scope="module")
def session(tmp_path_factory, chromium_path):
    from playwright.sync_api import expect, sync_playwright

    root = tmp_path_factory.mktemp("trends")
    runtime = home_runtime(root)
    settings = runtime.settings
    with runtime.db.session() as db:
        tenant_id = registry.add_tenant(db, runtime.keys, "Trendy Ltd", "ops@trendy.test")
        link, token = links.create_link(db, tenant_id)
    server_log = root / "serve.log"
    server, base = start_dashboard_server(settings.home, server_log)
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
            try:
                context = chromium.new_context(accept_downloads=True)
                page = context.new_page()
                page.goto(f"{base}/d/{token}", referer=INBOUND_REFERER)
                period = page.locator(".wv-period")
                period.wait_for(timeout=30_000)
                before = period.inner_text()
                page.get_by_role("button", name="7 days").click()
                expect(period).not_to_have_text(before, timeout=15_000)
                with page.expect_download() as download:
                    page.get_by_text("Download these figures (CSV)").click()
                assert Path(download.value.path()).read_text().startswith('"day",')
                context.close()
            finally:
                chromium.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events = read_events(settings.log_dir)
            if {e["event"] for e in events} >= {"view", "interaction", "export"}:
                break
            time.sleep(0.1)
        yield Session(runtime, settings.home, server_log, base, token, link.id, tenant_id, events)
    finally:
        server.stop()
        runtime.close()


@pytest.mark.browser
def test_a_browser_session_logs_a_view_an_interaction_and_an_export(session):
    events = session.events
    assert Counter(e["event"] for e in events) == {"view": 1, "interaction": 1, "export": 1}
    for event in events:
        assert list(event) == FIELDS
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["time"])
        assert event["link"] == session.link_id
        assert event["ip"] == CLIENT_NETWORK
        assert (event["browser"], event["platform"]) == ("Chrome", "Linux")
    by_kind = {e["event"]: e for e in events}
    assert by_kind["view"]["referrer"] == "news.example.com"  # from elsewhere: domain only
    assert by_kind["export"]["referrer"] is None  # the page itself sends no Referer


@pytest.mark.browser
def test_no_token_and_no_full_ip_in_any_file_after_a_browser_session(session):
    assert session.events
    leaks = []
    for path in sorted(session.home.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for needle in (session.token, CLIENT_IP, "HeadlessChrome", "/private/path"):
            if needle.encode() in data:
                leaks.append(f"{path.relative_to(session.home)}: {needle[:4]}…")
    assert not leaks, leaks
    # The server's own log names its listening address (127.0.0.1:<port>): that is the
    # server, not the client, so it is taken out before searching for the client's.
    server_log = session.server_log.read_text()
    assert session.token not in server_log and "<link:" in server_log
    address = session.base.removeprefix("http://")
    assert CLIENT_IP not in server_log.replace(address, "<server>"), server_log[-2000:]


@pytest.mark.browser
def test_roll_up_counts_the_session_and_is_idempotent(session):
    # Normally one day; a session across midnight UTC has its lines in two files.
    days = sorted(access_log_files(session.runtime.settings.log_dir))
    reports = [roll_up(session.runtime, day) for day in days]
    assert sum(r.views for r in reports) == 1
    assert sum(r.interactions for r in reports) == 1 and sum(r.exports for r in reports) == 1
    first = trend_rows(session.runtime)
    # The one view from news.example.com is under the threshold: counted, as "(other)".
    assert summed(first[0]) == {
        ("browser", "Chrome"): 1,
        ("platform", "Linux"): 1,
        ("referrer_domain", "(other)"): 1,
    }
    for day in days:
        roll_up(session.runtime, day)
    assert trend_rows(session.runtime) == first
    assert pending_days(session.runtime) == []


@pytest.mark.browser
def test_trend_tables_hold_no_ip_no_link_and_no_tenant(session):
    for day in access_log_files(session.runtime.settings.log_dir):
        roll_up(session.runtime, day, min_referrer_views=1)
    engine = session.runtime.db.engine
    schema = inspect(engine)
    for table in TREND_TABLES:
        columns = [c["name"] for c in schema.get_columns(table)]
        assert not [c for c in columns if re.search(r"ip|link|tenant|connection|token|user", c)]
        assert schema.get_foreign_keys(table) == []
    live = MetaData()
    live.reflect(bind=engine, only=list(TREND_TABLES))
    with engine.connect() as conn:
        values = [
            str(value)
            for table in live.sorted_tables
            for row in conn.execute(table.select())
            for value in row
        ]
    assert values and "news.example.com" in values
    forbidden = {session.link_id, session.tenant_id, CLIENT_IP, CLIENT_NETWORK}
    assert not [v for v in values if any(f in v for f in forbidden)]
    assert not {t.name for t in owned_tables()} & set(TREND_TABLES)


# -- the roll-up, from a log written by hand ---------------------------------------------------


HAND_MADE = [
    '{"time":"2026-03-01T00:00:01Z","link":"a","ip":"198.51.100.0","browser":"Chrome","platform":"Windows","referrer":null,"event":"view"}',
    '{"time":"2026-03-01T00:00:09Z","link":"a","ip":"198.51.100.0","browser":"Chrome","platform":"Windows","referrer":null,"event":"interaction"}',
    '{"time":"2026-03-01T00:00:12Z","link":"a","ip":"198.51.100.0","browser":"Chrome","platform":"Windows","referrer":null,"event":"interaction"}',
    '{"time":"2026-03-01T00:00:20Z","link":"a","ip":"198.51.100.0","browser":"Chrome","platform":"Windows","referrer":null,"event":"export"}',
    '{"time":"2026-03-01T08:10:00Z","link":"b","ip":"203.0.113.0","browser":"Firefox","platform":"Linux","referrer":"mail.example.net","event":"view"}',
    '{"time":"2026-03-01T08:20:00Z","link":"b","ip":"203.0.113.0","browser":"Safari","platform":"iOS","referrer":"mail.example.net","event":"view"}',
    '{"time":"2026-03-01T09:00:00Z","link":"c","ip":"2001:db8:1::","browser":"Netscape","platform":"BeOS","referrer":"jane-doe.example.org","event":"view"}',
    '{"time":"2026-03-01T09:00:05Z","link":"c","ip":"2001:db8:1::","browser":"Netscape","platform":"BeOS","referrer":"jane-doe.example.org","event":"interaction"}',
    '{"event":"teleport"}',
    "not json at all",
    '{"time":"2026-03-01T23:59:59Z","link":"d","ip":"19',  # a torn last line
]
DAY = dt.date(2026, 3, 1)


def test_roll_up_of_a_hand_made_log_counts_by_hand(any_runtime):
    runtime = any_runtime
    runtime.settings.log_dir.mkdir(parents=True, exist_ok=True)
    path = access_log_file(runtime.settings.log_dir, DAY)
    path.write_text("\n".join(HAND_MADE) + "\n")
    report = roll_up(runtime, DAY, min_referrer_views=2)
    assert (report.views, report.interactions, report.exports) == (4, 3, 1)
    assert (report.lines_read, report.skipped, report.files) == (11, 3, 1)
    views, days = trend_rows(runtime)
    assert views == [
        (DAY, "browser", "Chrome", 1),
        (DAY, "browser", "Firefox", 1),
        (DAY, "browser", "Other", 1),
        (DAY, "browser", "Safari", 1),
        (DAY, "platform", "Linux", 1),
        (DAY, "platform", "Other", 1),
        (DAY, "platform", "Windows", 1),
        (DAY, "platform", "iOS", 1),
        (DAY, "referrer_domain", "(none)", 1),
        # jane-doe.example.org: one view, under the threshold of 2, so not named
        (DAY, "referrer_domain", "(other)", 1),
        (DAY, "referrer_domain", "mail.example.net", 2),
    ]
    assert days == [(DAY, 4, 3, 1, 0.75)]
    assert "\n".join(report.lines()).startswith("2026-03-01: 4 views, 3 interactions")

    # More lines for the day (a late file from another host): a rerun replaces, never adds.
    other_host = path.with_name("access-2026-03-01.web2.jsonl")
    other_host.write_text(HAND_MADE[0] + "\n")
    roll_up(runtime, DAY, min_referrer_views=2)
    roll_up(runtime, DAY, min_referrer_views=2)
    views, days = trend_rows(runtime)
    assert days == [(DAY, 5, 3, 1, 0.6)]
    assert (DAY, "browser", "Chrome", 2) in views and len(views) == 11


def test_a_day_without_logs_rolls_up_as_zero(runtime):
    report = roll_up(runtime, dt.date(2026, 4, 1))
    assert (report.views, report.files) == (0, 0)
    assert trend_rows(runtime) == ([], [(dt.date(2026, 4, 1), 0, 0, 0, 0.0)])


# -- retention of the raw logs -----------------------------------------------------------------


def test_raw_logs_go_after_the_retention_once_rolled_up(runtime):
    assert (
        Settings.from_env({"WRITEVUE_ACCESS_LOG_RETENTION_DAYS": "7"}).access_log_retention_days
        == 7
    )
    assert runtime.settings.access_log_retention_days == 30
    today = dt.date(2026, 5, 31)
    log_dir = runtime.settings.log_dir
    visitor = Visitor("198.51.100.0", "Chrome", "macOS", None)
    ages = (45, 40, 31, 30, 1, 0)
    for age in ages:
        at = dt.datetime.combine(today - dt.timedelta(days=age), dt.time(12), dt.UTC)
        AccessLog(log_dir, clock=lambda at=at: at).record("view", "link-x", visitor)
    old, older, oldest = (today - dt.timedelta(days=age) for age in (31, 40, 45))
    roll_up(runtime, older)
    roll_up(runtime, oldest)
    changed = access_log_file(log_dir, oldest)  # a line arrived after its roll-up
    with changed.open("a") as handle:
        handle.write(changed.read_text())
    os.utime(changed, (time.time() + 5, time.time() + 5))

    report = expire_access_logs(runtime, today=today)
    assert (report.removed_files, report.kept_files) == (3, 3)
    assert report.rolled_up == (oldest, old)  # nothing lost: rolled up before removal
    left = sorted(p.name for p in log_dir.glob("access-*.jsonl"))
    assert left == [access_log_file(log_dir, today - dt.timedelta(days=a)).name for a in (30, 1, 0)]
    _views, days = trend_rows(runtime)
    assert {d: v for d, v, *_ in days} == {oldest: 2, older: 1, old: 1}
    with pytest.raises(ValueError):
        expire_access_logs(runtime, keep_days=0, today=today)


# -- erasure is still proven with access logs and trends in place -------------------------------


def test_erasure_leaves_nothing_of_the_tenant_in_logs_or_trends(runtime):
    tenant_id, connection_id = add_stripe_connection(
        runtime, "https://stripe.sandbox.invalid", remember_secret("sk_test_trends_" + "t" * 24)
    )
    with runtime.db.session() as db:
        link, _token = links.create_link(db, tenant_id)
    log = AccessLog(runtime.settings.log_dir)
    visitor = Visitor.from_request("192.0.2.44", {"User-Agent": "Mozilla/5.0 Firefox/125.0"})
    for event in ("view", "interaction", "export"):
        log.record(event, link.id, visitor)
    log.record("view", "00000000-0000-4000-8000-000000000000", visitor)  # another tenant's
    for day in access_log_files(runtime.settings.log_dir):
        roll_up(runtime, day, min_referrer_views=1)

    report = run_erasure(runtime, tenant_id)
    assert report.ok, report.lines()
    # The tenant's raw access lines went with it; the other tenant's line stayed.
    assert report.removed["access_log_lines"] == 3
    raw = "".join(
        p.read_text() for ps in access_log_files(runtime.settings.log_dir).values() for p in ps
    )
    assert link.id not in raw and "00000000-0000-4000-8000-000000000000" in raw
    assert not set(report.verification.rows) & set(TREND_TABLES)
    assert not set(report.removed) & set(TREND_TABLES)  # aggregates of everyone, kept
    views, days = trend_rows(runtime)
    assert sum(d[1] for d in days) == 2  # rolled up before the erasure: aggregates of all
    assert summed(views)[("browser", "Firefox")] == 2
    with runtime.db.session() as db, pytest.raises(NotFound):
        registry.get_connection(db, connection_id)
