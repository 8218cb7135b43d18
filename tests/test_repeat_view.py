"""A repeat view of a dashboard costs the page and its document, nothing more.

Every file a page names (scripts, stylesheets, icons, the logo; in the page and in its
document) is named by its version, so a browser keeps it; the page, anything unversioned
and anything under a version that is not the file's stay ``no-store``. The document
travels deflated to a client that offers it, as browsers do, and a session's first page
reads the tenant's header once. One `writevue serve` process serves the module.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import polars as pl
import pytest
from support import add_tenant_with_facts, home_runtime, start_dashboard_server

from dashboard_server.probe import Message, models, run_sync, session_token, socket_url
from writevue_pipelines import links

IMMUTABLE = "public, max-age=31536000, immutable"
#: what the dashboard waits for in a browser: the document idle, the charts drawn
IDLE = "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("repeat-view")
    runtime = home_runtime(root)
    today = dt.datetime.now(dt.UTC).date()
    days = [today - dt.timedelta(days=i) for i in range(40)]
    facts = pl.DataFrame(
        {
            "metric": ["charges"] * len(days),
            "dimension": [""] * len(days),
            "day": days,
            "value": [100.0 + i for i in range(len(days))],
        }
    )
    tenant_id, _ = add_tenant_with_facts(runtime, "Acme Ltd", facts)
    with runtime.db.session() as session:
        _, token = links.create_link(session, tenant_id)
    server, base = start_dashboard_server(runtime.settings.home, root / "serve.log")
    try:
        yield runtime, tenant_id, f"{base}/d/{token}"
    finally:
        server.stop()
        runtime.close()


def pulled(url: str, *, deflate: bool = False):
    """(the page, the document's message, the extensions the socket agreed to), the socket
    offering per-message deflate as browsers do, or not."""
    import json
    import uuid

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    page = httpx.get(url, timeout=60)
    assert page.status_code == 200

    async def pull():
        socket = await websocket_connect(
            HTTPRequest(socket_url(url), request_timeout=60),
            subprotocols=["bokeh", session_token(page.text)],
            compression_options={} if deflate else None,
        )
        try:
            for _ in range(3):  # the ACK: header, metadata, content
                await socket.read_message()
            header = {"msgid": uuid.uuid4().hex, "msgtype": "PULL-DOC-REQ"}
            for frame in (header, {}, {}):
                await socket.write_message(json.dumps(frame))
            reply = [json.loads(await socket.read_message()) for _ in range(3)]
            assert reply[0]["msgtype"] == "PULL-DOC-REPLY"
            return Message(reply[0], reply[2]), socket.headers.get("Sec-WebSocket-Extensions", "")
        finally:
            socket.close()

    document, extensions = run_sync(pull())
    return page, document, extensions


def named_files(page_url: str, page: str, document) -> set[str]:
    """Every file the page and its document name: scripts, stylesheets, icons, images."""
    names = set(re.findall(r'<(?:script|link|img)\b[^>]*?\b(?:src|href)="([^"]+)"', page))
    for sheet in models(document.content, "ImportedStyleSheet"):
        names.add(sheet["attributes"]["url"])
    for markup in models(document.content, "HTML"):
        text = html.unescape(markup["attributes"]["text"])
        names.update(re.findall(r'<img\b[^>]*?\bsrc="([^"]+)"', text))
    return {urljoin(page_url, html.unescape(name)) for name in names}


def test_every_file_a_page_names_is_named_by_its_version_and_kept(served):
    _, _, url = served
    page, document, _ = pulled(url)
    assert page.headers["cache-control"] == "no-store"  # it carries the session
    files = named_files(url, page.text, document)
    assert any("/assets/theme.css" in name for name in files), files
    assert any("/assets/logo.svg" in name for name in files), files
    assert not [name for name in files if "es-module-shims" in name]  # no ESM component here
    for name in sorted(files):
        response = httpx.get(name, timeout=60)
        assert response.status_code == 200, name
        assert response.headers["cache-control"] == IMMUTABLE, name


def test_a_file_under_any_other_name_is_not_kept(served):
    _, _, url = served
    base = url.split("/d/")[0]
    page, document, _ = pulled(url)
    named = next(name for name in named_files(url, page.text, document) if "theme.css" in name)
    theme = parse_qs(urlsplit(named).query).get("v", ["none"])[0]
    for path in (
        "/assets/theme.css",
        "/assets/theme.css?v=" + "0" * 32,  # a version that is not the file's content
        f"/assets/theme.css?v={theme}&v={theme}",
        f"/assets/theme.css?v={theme}&x=1",
        "/static/extensions/panel/css/button.css",
        "/static/extensions/panel/css/button.css?v=0.0.1",  # not this server's Panel
        "/static/js/bokeh.min.js?v=0000000000",
    ):
        response = httpx.get(base + path, timeout=60)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-store", path
    # the same file under its own version is kept
    kept = httpx.get(f"{base}/assets/theme.css?v={theme}", timeout=60)
    assert kept.headers["cache-control"] == IMMUTABLE


def test_the_document_travels_deflated_to_a_client_that_offers_it(served):
    _, _, url = served
    _, document, extensions = pulled(url, deflate=True)
    assert extensions.startswith("permessage-deflate")
    assert "Acme Ltd" in document.text()
    _, plain, none = pulled(url)  # a client that offers nothing gets it plain
    assert none == "" and "Acme Ltd" in plain.text()


def test_no_parameter_doc_is_shown_as_a_tooltip(served):
    _, _, url = served
    _, document, _ = pulled(url)
    tips = [tip["attributes"].get("content") for tip in models(document.content, "Tooltip")]
    assert tips == []


def test_a_repeat_view_fetches_the_page_and_nothing_else(served, browser):
    _, _, url = served
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        urls: dict[str, str] = {}
        fetched: list[str] = []

        def sent(event: dict) -> None:
            urls[event["requestId"]] = event["request"]["url"]

        def finished(event: dict) -> None:
            # bytes over the network: nothing for what the browser's cache served
            url = urls.get(event["requestId"], "")
            if event.get("encodedDataLength", 0) > 0 and url.startswith("http"):
                fetched.append(url)

        cdp.on("Network.requestWillBeSent", sent)
        cdp.on("Network.loadingFinished", finished)
        for _ in range(2):
            fetched.clear()
            page.goto(url)
            page.wait_for_function(IDLE, timeout=60_000)
            page.locator("svg.wv-chart-svg").first.wait_for(timeout=60_000)
            page.wait_for_timeout(300)
        assert fetched == [url]
    finally:
        context.close()


def test_a_sessions_first_page_reads_the_tenant_once(served, monkeypatch):
    from dashboard_server import tenant_data
    from dashboard_server.app import Dashboard

    runtime, tenant_id, _ = served
    reads = []
    real = tenant_data.load_header

    def counted(*args, **kwargs):
        reads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(tenant_data, "load_header", counted)
    source = tenant_data.TenantData(runtime, tenant_id, lambda: True)
    view = Dashboard(source)
    assert len(reads) == 1 and "Acme Ltd" in view._content.object
    view.range = "7"  # every later page reads it again
    assert len(reads) == 2
