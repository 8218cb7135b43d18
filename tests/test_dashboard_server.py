"""The dashboard server's surface: the gate, the headers, the logs, the static files.

A live link reaches Panel; anything else gets one bare 404 page, and an address that
keeps guessing gets 429. One `writevue serve` process serves the whole module; a test
whose requests fail sends them from its own loopback address, so its failures count
against that address only (the limiter keys on the whole IPv4 address).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import polars as pl
import pytest
from support import add_tenant_with_facts, home_runtime, start_dashboard_server

from dashboard_server.probe import page_and_document_text
from dashboard_server.redaction import scrub, truncate_ip
from writevue_pipelines import invites, links
from writevue_pipelines.models import DashboardLink
from writevue_pipelines.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
REQUIRED_HEADERS = {
    "referrer-policy": "no-referrer",
    "x-robots-tag": "noindex, nofollow",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}
#: what the dashboard server must never load: Dagster (and its definitions), the sandbox,
#: the CLI (the demo included), the developer tools
BANNED = (
    "dagster",
    "writevue_pipelines.defs",
    "writevue_sandbox",
    "writevue_pipelines.cli",
    "writevue_devtools",
)


@dataclass
class Surface:
    runtime: Runtime
    base: str
    log: Path
    tenant_id: str
    link_id: str
    token: str

    def url(self, token: str, tail: str = "") -> str:
        return f"{self.base}/d/{token}{tail}"

    def link(self, **kwargs) -> tuple[links.LinkInfo, str]:
        with self.runtime.db.session() as session:
            return links.create_link(session, self.tenant_id, **kwargs)


def from_address(address: str) -> httpx.Client:
    """A client whose requests come from ``address`` (any 127.x.y.z on Linux)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address))


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    root = tmp_path_factory.mktemp("surface")
    runtime = home_runtime(root)
    settings = runtime.settings
    today = dt.datetime.now(dt.UTC).date()
    facts = pl.DataFrame(
        {"metric": ["charges"], "dimension": [""], "day": [today], "value": [42.0]}
    )
    tenant_id, _ = add_tenant_with_facts(runtime, "Acme Ltd", facts)
    with runtime.db.session() as session:
        link, token = links.create_link(session, tenant_id)
    log = root / "serve.log"
    server, base = start_dashboard_server(settings.home, log)
    try:
        yield Surface(runtime, base, log, tenant_id, link.id, token)
    finally:
        server.stop()
        runtime.close()


# -- the gate ---------------------------------------------------------------------------------


def test_unknown_revoked_and_expired_tokens_get_the_same_bare_404(surface):
    revoked, revoked_token = surface.link()
    expired, expired_token = surface.link(expires_in_days=1)
    with surface.runtime.db.session() as session:
        links.revoke_link(session, revoked.id)
        session.get(DashboardLink, expired.id).expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(
            seconds=1
        )
    bodies = set()
    with from_address("127.0.0.11") as client:  # 18 failures, under the limit of 20
        for token in ("A" * 43, revoked_token, expired_token, surface.token[:-2], "", "%2e%2e"):
            for suffix in ("", "/ws", "/autoload.js"):
                response = client.get(surface.url(token, suffix))
                assert response.status_code == 404, (token, suffix)
                bodies.add(response.content)
    assert len(bodies) == 1
    body = bodies.pop().decode()
    assert "<h1>Not found</h1>" in body  # the page's only heading, what a browser shows
    for word in ("token", "revoked", "expired", "panel", "bokeh", "tornado"):
        assert word not in body.lower()


def test_guesses_are_throttled_but_a_live_link_always_opens(surface):
    with from_address("127.0.0.2") as client:
        statuses = [client.get(surface.url(f"guess{n:040d}")).status_code for n in range(25)]
        assert statuses[:20] == [404] * 20 and statuses[20:] == [429] * 5
        # The same address (an office behind one NAT): the guesser is refused, the client is not.
        assert client.get(surface.url(surface.token)).status_code == 200
        assert client.get(surface.url(surface.token, "/autoload.js")).status_code != 429
        assert client.get(surface.url("G" * 43)).status_code == 429  # a valid link resets nothing
    assert httpx.get(surface.url(surface.token)).status_code == 200  # other addresses are not


def test_a_wrong_invite_gets_the_gates_pages_from_a_budget_of_its_own(surface):
    with surface.runtime.db.session() as session:
        _, invite_token = invites.create_invite(session, surface.tenant_id)
    wrong_invite = f"{surface.base}/connect/{'N' * 43}"
    with from_address("127.0.0.3") as client:
        not_found = client.get(surface.url("W" * 43))
        for _ in range(20):
            response = client.get(wrong_invite)
            assert response.status_code == 404 and response.content == not_found.content
        too_many = client.get(wrong_invite)  # the invite budget is spent…
        assert too_many.status_code == 429 and too_many.headers["retry-after"] == "60"
        # …but a live invite still opens, and the dashboard budget is untouched
        assert client.get(f"{surface.base}/connect/{invite_token}").status_code == 200
        assert client.get(surface.url(surface.token)).status_code == 200
        for _ in range(18):  # 19 link failures in all (with the first): still under the limit
            assert client.get(surface.url("W" * 43)).status_code == 404
        assert client.get(surface.url("W" * 43)).status_code == 404  # the 20th
        assert client.get(surface.url("W" * 43)).status_code == 429
        assert client.get(wrong_invite).content == too_many.content


# -- every response ---------------------------------------------------------------------------


def test_every_response_carries_the_security_headers(surface):
    with from_address("127.0.0.12") as client:
        for path in (
            f"/d/{surface.token}",
            "/d/nope-nope-nope-nope",
            "/static/js/bokeh.min.js",
            "/assets/theme.css",
            "/robots.txt",
            "/",
        ):
            response = client.get(surface.base + path)
            for name, value in REQUIRED_HEADERS.items():
                assert response.headers.get(name) == value, (path, name)
            csp = response.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
            assert "http" not in csp  # no third-party origin anywhere in the policy


def test_robots_txt_disallows_dashboards(surface):
    robots = httpx.get(surface.base + "/robots.txt")
    assert robots.status_code == 200 and "Disallow: /d/" in robots.text


def test_static_files_are_compressed_once_and_never_stored(surface):
    from bokeh.util.paths import bokehjs_path

    expected = (Path(bokehjs_path()) / "js" / "bokeh.min.js").read_bytes()
    for _ in range(2):  # compressed on the first request, the same bytes replayed after
        response = httpx.get(
            surface.base + "/static/js/bokeh.min.js", headers={"Accept-Encoding": "gzip"}
        )
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["cache-control"] == "no-store"
        assert response.content == expected
    plain = httpx.get(surface.base + "/static/js/bokeh.min.js", headers={"Accept-Encoding": ""})
    assert "content-encoding" not in plain.headers and plain.content == expected


# -- what is written down ---------------------------------------------------------------------


def test_the_token_never_reaches_the_access_log(surface):
    unknown = "B" * 43
    page_and_document_text(surface.url(surface.token))  # the page and its websocket
    httpx.get(surface.url(surface.token, "?format=csv&from=2026-01-01&to=2026-01-02"))
    with from_address("127.0.0.13") as client:
        client.get(surface.url(unknown))
    time.sleep(0.5)
    log = surface.log.read_text()
    assert f"/d/<link:{surface.link_id}>/ws (" in log and "/d/<invalid> (" in log
    assert surface.token not in log and unknown not in log
    assert "127.0.0.1" not in log.replace("http://127.0.0.1", "")  # only truncated addresses


def test_ip_truncation_and_log_scrubbing():
    assert truncate_ip("203.0.113.77") == "203.0.113.0"
    assert truncate_ip("2001:db8:abcd:12:1:2:3:4") == "2001:db8:abcd::"
    assert truncate_ip("::ffff:198.51.100.9") == "198.51.100.0"
    assert truncate_ip("garbage") == "-"
    text = scrub("GET /d/secretTokenValue123/ws from 203.0.113.77")
    assert "secretTokenValue123" not in text and "203.0.113.77" not in text


# -- what the server is made of ---------------------------------------------------------------


def test_the_dashboard_server_loads_no_dagster_sandbox_or_cli():
    every_module = (
        "import importlib, pkgutil, sys, dashboard_server\n"
        "for module in pkgutil.iter_modules(dashboard_server.__path__):\n"
        "    importlib.import_module('dashboard_server.' + module.name)\n"
        "print('\\n'.join(sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", every_module], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "dashboard_server.server" in loaded
    assert not [
        name
        for name in loaded
        if any(name == banned or name.startswith((banned + ".", banned + "_")) for banned in BANNED)
    ]


def test_a_repeat_view_fetches_no_bundle_again_and_the_page_is_never_stored(surface):
    """Bokeh's and Panel's bundles are public library code named by their version (``?v=``):
    a browser may keep them (a repeat view then loads ~30 KB, not ~1 MB); the page, which
    carries the session, and anything unversioned stay ``no-store``."""
    import re

    page = httpx.get(f"{surface.base}/d/{surface.token}")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    bundles = [  # relative to /d/<token>: ../static/… is /static/…
        "/" + url.replace("&amp;", "&").removeprefix("../").lstrip("/")
        for url in re.findall(r'(?:src|href)="([^"]+)"', page.text)
        if url.removeprefix("../").lstrip("/").startswith("static/")
    ]
    versioned = [url for url in bundles if re.search(r"[?&]v=[0-9a-f]{6,}", url)]
    assert versioned, bundles  # the page names its bundles by version
    for url in versioned:
        response = httpx.get(surface.base + url)
        assert response.status_code == 200, url
        cache = response.headers["cache-control"]
        assert "immutable" in cache and "max-age=31536000" in cache, (url, cache)
        for name, value in REQUIRED_HEADERS.items():  # everything else as on every response
            if name != "cache-control":
                assert response.headers.get(name) == value, (url, name)
    # the same file without its version, or under a made-up one, is not kept
    plain = httpx.get(f"{surface.base}/static/js/bokeh.min.js")
    assert plain.headers["cache-control"] == "no-store"
    wrong = httpx.get(f"{surface.base}/static/js/bokeh.min.js?v=0000000000")
    assert wrong.headers["cache-control"] == "no-store"
