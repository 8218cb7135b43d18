"""The dashboard server: a live link shows the client's numbers, anything else a bare 404."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support import add_stripe_connection

from writevue_devtools.peers import CHROMIUM_ARGS
from dashboard_server.data import headline_texts, load_dashboard
from dashboard_server.probe import page_and_document_text
from dashboard_server.redaction import scrub, truncate_ip
from writevue_pipelines import links, refresh
from writevue_pipelines.demo import free_port
from writevue_pipelines.models import DashboardLink
from writevue_pipelines.sources import get_source

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
REQUIRED_HEADERS = {
    "referrer-policy": "no-referrer",
    "x-robots-tag": "noindex, nofollow",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}


class Tenant:
    def __init__(self, runtime, sandbox, name: str, key: str):
        self.id, self.connection = add_stripe_connection(
            runtime, sandbox.url, key, name=name, email=f"{key[-6:]}@client.test"
        )
        refresh.fetch_connection(runtime, self.connection)
        refresh.load_connection(runtime, self.connection)
        with runtime.db.session() as session:
            self.link, self.token = links.create_link(session, self.id)


@pytest.fixture
def served(runtime, sandbox, tmp_path):
    """Two tenants with data, and `writevue serve` in its own process on a free port."""
    acme = Tenant(runtime, sandbox, "Acme Ltd", "sk_test_acme_dash_001")
    globex = Tenant(runtime, sandbox, "Globex Corp", "sk_test_globex_dash_002")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "writevue_pipelines.cli", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/robots.txt", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        process.kill()
        raise AssertionError(log_path.read_text())
    yield {"base": base, "acme": acme, "globex": globex, "log": log_path, "runtime": runtime}
    process.terminate()
    process.wait(20)


def test_a_live_link_shows_its_clients_numbers_and_no_one_elses(served):
    runtime, acme, globex = served["runtime"], served["acme"], served["globex"]
    status, text = page_and_document_text(f"{served['base']}/d/{acme.token}")
    assert status == 200
    figures = headline_texts(runtime, acme.id)
    assert figures and all(figure in text for figure in figures)
    assert "Acme Ltd" in text and "Globex" not in text
    # Money figures ("12,345.67 USD") are distinctive enough to search for in the document.
    theirs = [f for f in headline_texts(runtime, globex.id) if " " in f and f not in figures]
    assert theirs and not [f for f in theirs if f in text]


def test_unknown_revoked_and_expired_tokens_get_the_same_bare_404(served):
    runtime, acme = served["runtime"], served["acme"]
    with runtime.db.session() as session:
        _revoked, revoked_token = links.create_link(session, acme.id)
        links.revoke_link(session, _revoked.id)
        expired, expired_token = links.create_link(session, acme.id, expires_in_days=1)
        session.get(DashboardLink, expired.id).expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(
            seconds=1
        )
    bodies = set()
    for token in ("A" * 43, revoked_token, expired_token, acme.token[:-2], "", "%2e%2e"):
        for suffix in ("", "/ws", "/autoload.js"):
            response = httpx.get(f"{served['base']}/d/{token}{suffix}")
            assert response.status_code == 404, (token, suffix)
            bodies.add(response.content)
    assert len(bodies) == 1
    body = bodies.pop().decode().lower()
    assert "not found" in body
    for word in ("token", "revoked", "expired", "panel", "bokeh", "tornado"):
        assert word not in body


def test_every_response_carries_the_security_headers(served):
    acme = served["acme"]
    for path in (
        f"/d/{acme.token}",
        "/d/nope-nope-nope-nope",
        "/static/js/bokeh.min.js",
        "/assets/theme.css",
        "/robots.txt",
        "/",
    ):
        response = httpx.get(served["base"] + path)
        for name, value in REQUIRED_HEADERS.items():
            assert response.headers.get(name) == value, (path, name)
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
        assert "http" not in csp  # no third-party origin anywhere in the policy


def test_robots_txt_disallows_dashboards(served):
    robots = httpx.get(served["base"] + "/robots.txt")
    assert robots.status_code == 200 and "Disallow: /d/" in robots.text


def test_the_token_never_reaches_the_access_log(served):
    acme = served["acme"]
    page_and_document_text(f"{served['base']}/d/{acme.token}")
    httpx.get(f"{served['base']}/d/{'B' * 43}")
    time.sleep(0.5)
    log = served["log"].read_text()
    assert f"<link:{acme.link.id}>" in log
    assert acme.token not in log and "B" * 43 not in log
    assert "127.0.0.1" not in log.replace("http://127.0.0.1", "")  # only truncated addresses


def test_repeated_failures_from_one_address_are_rate_limited(served):
    statuses = [httpx.get(f"{served['base']}/d/guess{n:040d}").status_code for n in range(25)]
    assert statuses[0] == 404 and statuses[-1] == 429
    assert httpx.get(f"{served['base']}/d/{served['acme'].token}").status_code == 429


def test_ip_truncation_and_log_scrubbing():
    assert truncate_ip("203.0.113.77") == "203.0.113.0"
    assert truncate_ip("2001:db8:abcd:12:1:2:3:4") == "2001:db8:abcd::"
    assert truncate_ip("::ffff:198.51.100.9") == "198.51.100.0"
    assert truncate_ip("garbage") == "-"
    text = scrub("GET /d/secretTokenValue123/ws from 203.0.113.77")
    assert "secretTokenValue123" not in text and "203.0.113.77" not in text


def test_dashboard_data_reads_one_tenant_and_compares_periods(runtime, sandbox):
    acme = Tenant(runtime, sandbox, "Acme Ltd", "sk_test_acme_data_003")
    data = load_dashboard(runtime, acme.id, days=30)
    assert data.tenant_name == "Acme Ltd"
    assert [s.state for s in data.sources] == ["fresh"]
    assert {k.metric for k in data.kpis} == set(get_source("stripe").metrics)
    charges = next(k for k in data.kpis if k.metric == "charges")
    assert charges.value == data.series.filter(data.series["metric"] == "charges")["value"].sum()
    assert charges.previous > 0 and charges.change_text.endswith("vs previous period")


@pytest.mark.browser
def test_the_dashboard_renders_in_chromium_from_its_own_origin_only(served, chromium_path):
    from playwright.sync_api import sync_playwright

    runtime, acme = served["runtime"], served["acme"]
    url = f"{served['base']}/d/{acme.token}"
    origins, errors = set(), []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path,
            args=CHROMIUM_ARGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # blob: URLs (es-module-shims) carry their creator's origin after the prefix.
            page.on(
                "request",
                lambda request: origins.add(
                    "/".join(request.url.removeprefix("blob:").split("/", 3)[:3])
                ),
            )
            page.on(
                "console",
                lambda message: errors.append(message.text) if message.type == "error" else None,
            )
            page.goto(url)
            for figure in headline_texts(runtime, acme.id):
                page.get_by_text(figure, exact=True).first.wait_for(timeout=30_000)
            # Charts are SVG inside Panel's shadow roots; locators pierce them.
            page.locator("svg.wv-chart-svg").first.wait_for(timeout=30_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-stripe.png"), full_page=True)
            dashboard_errors = list(errors)
            page.goto(f"{served['base']}/d/{'C' * 43}")
            assert "Not found" in page.content()
        finally:
            browser.close()
    assert origins <= {served["base"], served["base"].replace("http", "ws")}, origins
    assert not dashboard_errors, dashboard_errors


def test_static_files_are_compressed_once_and_never_stored(served):
    from bokeh.util.paths import bokehjs_path

    expected = (Path(bokehjs_path()) / "js" / "bokeh.min.js").read_bytes()
    for _ in range(2):  # compressed on the first request, the same bytes replayed after
        response = httpx.get(
            served["base"] + "/static/js/bokeh.min.js", headers={"Accept-Encoding": "gzip"}
        )
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["cache-control"] == "no-store"
        assert response.content == expected
    plain = httpx.get(served["base"] + "/static/js/bokeh.min.js", headers={"Accept-Encoding": ""})
    assert "content-encoding" not in plain.headers and plain.content == expected
