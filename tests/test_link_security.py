"""The link is the lock: what a link grants, tried as an attacker would on loopback.

Real `writevue serve` processes, real HTTP and websocket clients, headless Chromium.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import math
import random
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import polars as pl
import pytest
from support import add_tenant_with_facts, remember_secret, run_writevue, start_dashboard_server
from tornado.httpclient import HTTPClientError

from dashboard_server.gate import NOT_FOUND_HTML
from dashboard_server.probe import (
    DocumentSocket,
    Message,
    models,
    run_sync,
    session_token,
    socket_url,
)
from writevue_pipelines import links
from writevue_pipelines.home import init_home
from writevue_pipelines.models import DashboardLink
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings

TODAY = dt.datetime.now(dt.UTC).date()
GONE = "This link no longer works"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
#: a module that leaves a file behind when imported; the server may never import it
CANARY_MODULE = "writevue_import_canary"


def facts(days: int, charges: float) -> pl.DataFrame:
    day_list = [TODAY - dt.timedelta(days=i) for i in range(days)]
    return pl.DataFrame(
        {
            "metric": ["charges"] * days,
            "dimension": [""] * days,
            "day": day_list,
            "value": [charges + i for i in range(days)],
        }
    )


@dataclass
class Tenants:
    runtime: Runtime
    base: str
    log: Path
    server_pid: int
    canary: Path
    acme: str
    acme_token: str
    globex: str
    globex_token: str

    def url(self, token: str, tail: str = "") -> str:
        return f"{self.base}/d/{token}{tail}"

    def link(self, tenant_id: str, **kwargs) -> tuple[links.LinkInfo, str]:
        with self.runtime.db.session() as session:
            return links.create_link(session, tenant_id, **kwargs)

    def session_secret(self) -> str:
        return remember_secret(self.runtime.settings.session_secret_file.read_text().strip())


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    root = tmp_path_factory.mktemp("linklock")
    settings = Settings.from_env({"WRITEVUE_HOME": str(root / "home")})
    init_home(settings)
    runtime = Runtime(settings)
    acme, _ = add_tenant_with_facts(runtime, "Acme Ltd", facts(400, 11.0))
    globex, _ = add_tenant_with_facts(runtime, "Globex Corp", facts(400, 90_001.0))
    with runtime.db.session() as session:
        _, acme_token = links.create_link(session, acme)
        _, globex_token = links.create_link(session, globex)
    modules = root / "modules"
    modules.mkdir()
    canary = root / "canary-imported"
    (modules / f"{CANARY_MODULE}.py").write_text(
        f"from pathlib import Path\nPath({str(canary)!r}).write_text('imported')\n"
    )
    log = root / "serve.log"
    # The default refresh period (60 s): revocation must not wait for it.
    server, base = start_dashboard_server(settings.home, log, PYTHONPATH=str(modules))
    try:
        yield Tenants(
            runtime,
            base,
            log,
            server.process.pid,
            canary,
            acme,
            acme_token,
            globex,
            globex_token,
        )
    finally:
        server.stop()
        runtime.close()


def page(url: str, **kwargs) -> tuple[httpx.Response, str]:
    """A dashboard page and the session token it embeds."""
    response = httpx.get(url, timeout=60, **kwargs)
    assert response.status_code == 200, response.status_code
    return response, session_token(response.text)


async def document(ws_url: str, token: str) -> str | None:
    """The document a websocket hands out for ``token``, or None if it refuses."""
    try:
        socket = await DocumentSocket.open(ws_url, token)
    except HTTPClientError as refused:
        assert refused.code == 404, refused.code
        return None
    except ConnectionError:
        return None
    try:
        return (await socket.pull()).text()
    except ConnectionError:
        return None
    finally:
        socket.close()


def range_picker(pulled: Message) -> tuple[str, int]:
    """(model id, index of "7 days") of the dashboard's period picker."""
    picker = next(models(pulled.content, "RadioButtonGroup"))
    return picker["id"], picker["attributes"]["labels"].index("7 days")


def seven_day_figures(messages: list[Message]) -> bool:
    """Did the server send a 7-day dashboard (its HTML arrives escaped, as a model's text)?"""
    return any("data-days=&quot;7&quot;" in message.text() for message in messages)


# -- a session belongs to the link that opened it -------------------------------------------


def test_a_session_token_is_refused_under_another_links_path(tenants):
    _, acme_session = page(tenants.url(tenants.acme_token))

    async def attempt():
        own = await document(socket_url(tenants.url(tenants.acme_token)), acme_session)
        borrowed = await document(socket_url(tenants.url(tenants.globex_token)), acme_session)
        return own, borrowed

    own, borrowed = run_sync(attempt())
    assert own is not None and "Acme Ltd" in own  # the page's own socket works
    assert borrowed is None  # under Globex's link: refused before any document


def test_a_session_of_a_rotated_link_is_refused_under_its_new_token(tenants):
    link, old_token = tenants.link(tenants.acme)
    _, old_session = page(tenants.url(old_token))
    with tenants.runtime.db.session() as session:
        _, new_token = links.rotate_link(session, link.id)
    remember_secret(new_token)
    new_socket = socket_url(tenants.url(new_token))
    assert run_sync(document(new_socket, old_session)) is None  # same link id, old token
    _, new_session = page(tenants.url(new_token))
    assert "Acme Ltd" in (run_sync(document(new_socket, new_session)) or "")


def test_a_client_cannot_choose_or_borrow_a_session_id(tenants):
    _, acme_session = page(tenants.url(tenants.acme_token))
    from bokeh.util.token import generate_jwt_token, get_session_id

    acme_id = get_session_id(acme_session)
    attempts = [
        (tenants.globex_token, {"params": {"bokeh-session-id": acme_id}}),
        (tenants.acme_token, {"params": {"bokeh-session-id": acme_id}}),
        (tenants.acme_token, {"params": {"bokeh-session-id": "chosen-by-the-client"}}),
        (tenants.globex_token, {"headers": {"Bokeh-Session-Id": acme_id}}),
        (tenants.globex_token, {"params": {"bokeh-token": acme_session}}),
    ]
    attempts.append(
        (
            tenants.globex_token,
            {"content": f"bokeh-session-id={acme_id}".encode(), "headers": FORM},
        )
    )
    for token, request in attempts:
        for tail in ("", "/autoload.js"):
            response = httpx.request("GET", tenants.url(token, tail), timeout=60, **request)
            assert response.status_code == 404, (tail, request)
            assert response.content == NOT_FOUND_HTML
    made_up = generate_jwt_token("chosen-by-the-client", signed=False, extra_payload={})
    forged = generate_jwt_token(acme_id, secret_key=b"x" * 32, signed=True, extra_payload={})
    acme_socket = socket_url(tenants.url(tenants.acme_token))
    for token in (made_up, forged):
        assert run_sync(document(acme_socket, token)) is None


def test_sessions_are_signed_with_a_secret_kept_like_the_keys(tenants):
    from bokeh.util.token import check_token_signature

    secret_file = tenants.runtime.settings.session_secret_file
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = tenants.session_secret()
    assert len(secret) >= 43  # 256 bits
    _, token = page(tenants.url(tenants.acme_token))
    assert check_token_signature(token, secret_key=secret.encode(), signed=True)
    assert not check_token_signature(token, secret_key=b"another secret" * 3, signed=True)
    command_line = Path(f"/proc/{tenants.server_pid}/cmdline").read_bytes()
    assert secret.encode() not in command_line
    environment = Path(f"/proc/{tenants.server_pid}/environ").read_bytes()
    assert secret.encode() not in environment


def test_rotating_the_session_secret_asks_open_pages_to_reload(tenants):
    before = tenants.session_secret()
    _, old_session = page(tenants.url(tenants.acme_token))
    acme_socket = socket_url(tenants.url(tenants.acme_token))

    async def rotate_while_open():
        socket = await DocumentSocket.open(acme_socket, old_session)
        try:
            await socket.pull()
            rotated = await asyncio.to_thread(
                run_writevue, tenants.runtime.settings.home, "keys", "rotate-session-secret"
            )
            started = time.monotonic()
            seen = await socket.updates(2.5)
            told = [m for m in seen if "Reload" in m.text()]
            return rotated, bool(told), time.monotonic() - started
        finally:
            socket.close()

    rotated, told, _ = run_sync(rotate_while_open())
    assert rotated.returncode == 0, rotated.stderr
    after = tenants.session_secret()
    assert after != before and after not in rotated.stdout + rotated.stderr
    assert stat.S_IMODE(tenants.runtime.settings.session_secret_file.stat().st_mode) == 0o600
    assert told  # the open page was told to reload, within 2.5 s of the command's end
    assert run_sync(document(acme_socket, old_session)) is None  # the old token is dead
    _, new_session = page(tenants.url(tenants.acme_token))  # a reload works
    assert "Acme Ltd" in (run_sync(document(acme_socket, new_session)) or "")


# -- revocation reaches open pages ----------------------------------------------------------


def _end_link(runtime: Runtime, link_id: str, how: str) -> None:
    with runtime.db.session() as session:
        if how == "revoke":
            links.revoke_link(session, link_id)
        elif how == "rotate":
            remember_secret(links.rotate_link(session, link_id)[1])
        else:
            row = session.get(DashboardLink, link_id)
            row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=1)


@pytest.mark.parametrize("how", ["revoke", "rotate", "expire"])
def test_an_open_session_says_the_link_no_longer_works_within_two_seconds(tenants, how):
    link, token = tenants.link(tenants.globex, expires_in_days=1)
    _, session = page(tenants.url(token))

    async def end_while_open():
        socket = await DocumentSocket.open(socket_url(tenants.url(token)), session)
        try:
            await socket.pull()
            _end_link(tenants.runtime, link.id, how)
            started = time.monotonic()
            while (left := 2.0 - (time.monotonic() - started)) > 0:
                try:
                    message = await socket.receive(left)
                except TimeoutError:
                    return None
                if message is None:
                    return None
                if GONE in message.text():
                    return time.monotonic() - started
            return None
        finally:
            socket.close()

    took = run_sync(end_while_open())
    assert took is not None and took < 2.0, took


def test_no_figure_leaves_the_server_once_the_link_is_revoked(tenants):
    link, token = tenants.link(tenants.globex)
    _, session = page(tenants.url(token))

    async def interact(revoke_first: bool) -> list[Message]:
        socket = await DocumentSocket.open(socket_url(tenants.url(token)), session)
        try:
            picker, seven_days = range_picker(await socket.pull())
            if revoke_first:
                _end_link(tenants.runtime, link.id, "revoke")
            await socket.change(picker, "active", seven_days)  # the client picks "7 days"
            return await socket.updates(1.5)
        finally:
            socket.close()

    assert seven_day_figures(run_sync(interact(revoke_first=False)))  # what it would send
    _, session = page(tenants.url(token))
    after = run_sync(interact(revoke_first=True))
    assert not seven_day_figures(after)
    assert any(GONE in message.text() for message in after)


@pytest.mark.browser
def test_in_chromium_an_open_page_stops_within_two_seconds_of_revocation(tenants, browser):
    link, token = tenants.link(tenants.acme)
    tab = browser.new_page()
    try:
        tab.goto(tenants.url(token))
        tab.locator(".wv-card").first.wait_for(timeout=30_000)
        _end_link(tenants.runtime, link.id, "revoke")
        tab.get_by_text(GONE).wait_for(timeout=2_000)
        assert tab.locator(".wv-card").count() == 0
        tab.reload()  # and the link itself is dead
        assert "Not found" in tab.content()
    finally:
        tab.close()


# -- the session token carries nothing of the request ---------------------------------------


def test_the_session_token_carries_no_request_header_or_cookie(tenants):
    from bokeh.util.token import get_token_payload

    sent = {
        "Authorization": "Bearer secret-bearer-value",
        "X-Forwarded-For": "203.0.113.99",
        "X-Custom-Thing": "custom-header-value",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36",
    }
    response, token = page(
        tenants.url(tenants.acme_token, "?tv=1"),
        headers=sent,
        cookies={"_xsrf": "2|httponly-xsrf-cookie-value", "other": "cookie-value"},
    )
    payload = get_token_payload(token)
    assert payload.get("headers", {}) == {} and payload.get("cookies", {}) == {}
    decoded = repr(payload)
    for value in [*sent.values(), "httponly-xsrf-cookie-value", "cookie-value"]:
        assert value not in decoded and value not in response.text
    # the page still works from that token, TV mode (a query parameter) included
    text = run_sync(document(socket_url(tenants.url(tenants.acme_token)), token))
    assert text is not None and "wv-tv" in text


# -- every route is behind a live link or serves fixed files ---------------------------------

#: (path pattern or matcher, handler): every rule the dashboard server routes by
ALLOWED_ROUTES = {
    # ahead of everything: an address too long to serve gets 414
    ("LongAddress", "LongAddressHandler"),
    # under /d/<token>: the gate first; nothing behind it runs for a token that is not live
    ("TokenGateMatcher", "RejectHandler"),
    ("SessionChoiceMatcher", "RejectHandler"),
    ("CsvExportMatcher", "CsvExportHandler"),
    ("/d/(?P<token>[^/]+)/ws$", "LinkBoundSocket"),
    ("/d/(?P<token>[^/]+)/metadata$", "MetadataHandler"),
    ("/d/(?P<token>[^/]+)/autoload.js$", "AutoloadJsHandler"),
    ("/d/(?P<token>[^/]+)/?$", "DocHandler"),
    ("/d/(?:[^/]+)/static/(.*)$", "StaticHandler"),
    # behind their own one-time tokens: an invite, an OAuth state
    ("/connect/([A-Za-z0-9_-]{1,128})$", "ConnectHandler"),
    ("/oauth/callback$", "OAuthCallbackHandler"),
    # a message's one-time unsubscribe token: a confirm page, then a POST that spends it
    ("/unsubscribe/([A-Za-z0-9_-]{1,128})$", "UnsubscribeHandler"),
    # a brand's logo, by its brand id and digest (not secret; the same 404 otherwise)
    ("/brand/([0-9a-f-]{36})/([0-9a-f]{16})\\.(svg|png)$", "BrandLogoHandler"),
    # fixed files: robots.txt, no favicon, assets/, Bokeh's and Panel's bundles
    ("/robots\\.txt$", "RobotsHandler"),
    ("/favicon.ico$", "IcoHandler"),
    ("/assets/(.*)$", "AuthenticatedStaticFileHandler"),
    ("/static/extensions/(.*)$", "MultiRootStaticHandler"),
    ("/static/(.*)$", "StaticHandler"),
}


def test_every_route_is_behind_a_live_link_or_serves_fixed_files(runtime):
    from dashboard_server.routes import routes
    from dashboard_server.server import build_server, tornado_application
    from writevue_pipelines.processes import free_port

    server = build_server(runtime, port=free_port())
    try:
        exposed = routes(tornado_application(server))
    finally:
        server.stop()
    assert set(exposed) - ALLOWED_ROUTES == set()
    assert ALLOWED_ROUTES - set(exposed) == set()
    assert all(pattern.startswith("/d/") for pattern, _ in exposed if "(?P<token>" in pattern)


def test_no_url_makes_the_server_import_a_module(tenants):
    for module in (CANARY_MODULE, "this", "dagster"):
        for path in (f"/components/{module}/x/_css/y", f"/components/{module}/x"):
            response = httpx.get(tenants.base + path, timeout=60)
            assert response.status_code == 404, path
            assert response.content == NOT_FOUND_HTML
    time.sleep(0.3)
    assert not tenants.canary.exists()
    assert "Beautiful is better than ugly" not in tenants.log.read_text()
    mapped = Path(f"/proc/{tenants.server_pid}/maps").read_text()
    assert "pydantic_core" not in mapped  # what importing dagster would have loaded


@pytest.mark.browser
def test_the_page_and_socket_work_in_chromium_with_sessions_bound(tenants, browser):
    """The whole page in a browser: bound, signed sessions and no /components route."""
    errors: list[str] = []
    tab = browser.new_page()
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        tab.goto(tenants.url(tenants.acme_token))
        tab.locator(".wv-card").first.wait_for(timeout=30_000)
        tab.get_by_role("button", name="7 days").click()
        tab.locator('svg.wv-chart-svg[data-days="7"]').first.wait_for(timeout=15_000)
    finally:
        tab.close()
    assert not errors, errors


def test_the_session_secret_can_live_apart_and_a_readable_one_is_refused(tmp_path):
    from writevue_pipelines.session_secret import load_session_secret
    from writevue_pipelines.vault import VaultError

    apart = tmp_path / "keys" / "dashboards.secret"
    settings = Settings.from_env(
        {"WRITEVUE_HOME": str(tmp_path / "home"), "WRITEVUE_SESSION_SECRET_FILE": str(apart)}
    )
    assert settings.session_secret_file == apart
    assert init_home(settings).session_secret_created
    assert not (tmp_path / "home" / "session-secret").exists()
    assert stat.S_IMODE(apart.stat().st_mode) == 0o600
    secret = remember_secret(load_session_secret(apart))
    assert not init_home(settings).session_secret_created  # kept
    assert load_session_secret(apart) == secret
    apart.chmod(0o640)
    with pytest.raises(VaultError, match="readable by others") as refused:
        load_session_secret(apart)
    assert secret not in str(refused.value)


# -- the link check that every interaction makes ------------------------------------------------


@pytest.mark.parametrize("how", ["revoke", "rotate", "expire"])
def test_the_link_check_sees_a_link_end_in_another_process_at_once(tenants, how):
    from dashboard_server.sessions import SessionGuard

    _live, live_token = tenants.link(tenants.acme, expires_in_days=1)
    ended, ended_token = tenants.link(tenants.acme, expires_in_days=1)
    live_hash, ended_hash = links.hash_token(live_token), links.hash_token(ended_token)
    guard = SessionGuard(tenants.runtime)
    assert guard.is_live(live_hash) and guard.is_live(ended_hash)
    assert not guard.is_live(links.hash_token("never-a-token"))
    other_process = Runtime(tenants.runtime.settings)  # its own engine and connections
    try:
        _end_link(other_process, ended.id, how)
    finally:
        other_process.close()
    # Every interaction asks without a cache: the next one after the commit is refused.
    assert not guard.is_live(ended_hash)
    assert guard.is_live(live_hash)


# -- unknown, revoked, expired and malformed tokens cost the same ---------------------------------


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p of the Mann-Whitney U test: normal approximation, tie and continuity
    corrected (what ``scipy.stats.mannwhitneyu(method="asymptotic")`` computes)."""
    pooled = sorted([(value, 0) for value in a] + [(value, 1) for value in b])
    n1, n2 = len(a), len(b)
    n = n1 + n2
    rank_sum_a = ties = 0.0
    start = 0
    while start < n:
        end = start
        while end + 1 < n and pooled[end + 1][0] == pooled[start][0]:
            end += 1
        rank = (start + end) / 2 + 1  # tied values share their mean rank
        rank_sum_a += rank * sum(1 for k in range(start, end + 1) if pooled[k][1] == 0)
        tied = end - start + 1
        ties += tied**3 - tied
        start = end + 1
    u = rank_sum_a - n1 * (n1 + 1) / 2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = max(abs(u - n1 * n2 / 2) - 0.5, 0.0) / math.sqrt(variance)
    return math.erfc(z / math.sqrt(2))


def test_the_rank_test_sees_a_shift_and_not_its_absence():
    rng = random.Random(11)
    same = [rng.gauss(0, 1) for _ in range(600)]
    assert mann_whitney_p(same[:300], same[300:]) > 0.001
    assert mann_whitney_p(same[:300], [x + 0.6 for x in same[300:]]) < 1e-5
    assert mann_whitney_p([1.0] * 5, [1.0] * 5) == 1.0


TIMING_ROUNDS, TIMING_WARM_UP = 400, 60


def test_unknown_revoked_expired_and_malformed_tokens_answer_in_the_same_time(tmp_path):
    settings = Settings.from_env({"WRITEVUE_HOME": str(tmp_path / "home")})
    init_home(settings)
    runtime = Runtime(settings)
    tenant, _ = add_tenant_with_facts(runtime, "Acme Ltd", facts(3, 1.0))
    ended: dict[str, list[str]] = {"revoked": [], "expired": []}
    for how, name in (("revoke", "revoked"), ("expire", "expired")):
        for _ in range(8):
            with runtime.db.session() as session:
                link, token = links.create_link(session, tenant, expires_in_days=1)
            _end_link(runtime, link.id, how)
            ended[name].append(token)
    # Eight tokens of each kind, drawn alike, so no kind is fresher in any cache.
    ended["unknown"] = [secrets.token_urlsafe(links.TOKEN_BYTES) for _ in range(8)]
    ended["malformed"] = [  # the length of a real token, with a character no token has
        secrets.token_urlsafe(links.TOKEN_BYTES)[:-1] + mark for mark in "!~.$*'()"
    ]
    rng = random.Random()
    kinds = ("unknown", "revoked", "expired", "malformed")
    took: dict[str, list[float]] = {kind: [] for kind in kinds}
    # A limit no test reaches: every answer is the 404 page, never the limiter's 429.
    server, base = start_dashboard_server(
        settings.home, tmp_path / "serve.log", WRITEVUE_GUESS_LIMIT="1000000"
    )
    try:
        # One keep-alive connection from the standard library's client, the leanest there
        # is: the less the client adds, the less noise hides a difference.
        client = http.client.HTTPConnection(urlsplit(base).netloc, timeout=30)
        try:
            for round_no in range(TIMING_WARM_UP + TIMING_ROUNDS):
                order = list(kinds)
                rng.shuffle(order)  # interleaved: drift on a busy machine hits every kind alike
                for kind in order:
                    path = f"/d/{rng.choice(ended[kind])}"
                    started = time.perf_counter()
                    client.request("GET", path)
                    response = client.getresponse()
                    response.read()
                    elapsed = time.perf_counter() - started
                    assert response.status == 404, (kind, response.status)
                    if round_no >= TIMING_WARM_UP:
                        took[kind].append(elapsed)
        finally:
            client.close()
    finally:
        server.stop()
        runtime.close()
    p_values = {kind: mann_whitney_p(took["unknown"], took[kind]) for kind in kinds[1:]}
    medians = {kind: sorted(values)[len(values) // 2] * 1e6 for kind, values in took.items()}
    print(f"median µs {medians}; Mann-Whitney p against unknown {p_values}")
    assert all(p >= 0.001 for p in p_values.values()), (p_values, medians)
